"""An exported model on a photo, as the codebases' own inferencers run the model: the
photo through the config's test pipeline (``photos``), the artefact run by its runtime,
and the result reported in the photo's frame:

* detection: mmdet's test-time steps (``postprocess_detections``) on boxes scaled back
  by the photo / input ratio first, as mmdet's ``_bbox_post_process`` does;
* segmentation: the logits resized bilinearly to the photo's size, then argmax, as
  mmseg's ``postprocess_result``;
* classification: softmax of the logits, as mmpretrain's head.

tests/test_onnx_photos.py holds it to mmdet's ``DetInferencer``, mmseg's
``MMSegInferencer`` and mmpretrain's ``ImageClassificationInferencer`` on real photos.
"""

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..checkpoints.marks import mark_picture
from .detections import postprocess_detections
from .photos import Frame, PredictError, preprocess

TASK_OUTPUTS = dict(
    detection=['boxes', 'scores'], segmentation=['logits', 'labels'], classification=['logits']
)


DETECTION_KEYS = (
    'level_sizes',
    'score_thr',
    'nms_pre',
    'iou_threshold',
    'min_bbox_size',
    'max_per_img',
)


def _graph_dims(value_info) -> list:
    return [d if isinstance(d, int) else None for d in value_info.shape]


def graph_input_shape(session) -> Optional[Tuple[int, int]]:
    """(H, W) of a graph with a fixed input size, None when they are free."""
    dims = _graph_dims(session.get_inputs()[0])[2:]
    return None if None in dims else tuple(dims)


@dataclass
class Prediction:
    """One photo's result in the photo's frame (pixels of the photo as read)."""

    task: str
    frame: Frame
    boxes: Optional[np.ndarray] = None  # (K, 4) x1 y1 x2 y2, detection
    scores: Optional[np.ndarray] = None  # (K,) detection; (classes,) classification
    labels: Optional[np.ndarray] = None  # (K,) detection
    label_map: Optional[np.ndarray] = None  # (H, W) segmentation


class SessionRunner:
    """An onnxruntime session of an exported graph as a runtime's Runner
    (mobileone_mm.runtimes): ``runner(image)`` gives the graph's outputs for a
    (1, 3, H, W) float32 BGR 0..255 image; ``input_shape`` is (H, W) when fixed."""

    def __init__(self, session, metadata: dict):
        self.session, self.metadata = session, metadata
        self.input_shape = graph_input_shape(session)

    def __call__(self, image: np.ndarray) -> List[np.ndarray]:
        return self.session.run(None, {'image': image})


def check_finite_outputs(names: Sequence[str], outputs: Sequence[np.ndarray]):
    """PredictError when a model output holds NaN or inf: no result is better than a
    NaN one. Its weights are corrupt (an artefact exported before checkpoints with NaN or
    a negative BatchNorm variance were refused)."""
    for name, value in zip(names, outputs):
        value = np.asarray(value)
        if value.dtype.kind in 'fc' and not np.isfinite(value).all():
            raise PredictError(
                f"The model's output {name!r} holds NaN or inf: the weights it was "
                f'exported with are corrupt (NaN, or a negative BatchNorm variance). Export '
                f'it again with tools/export.py, which refuses such a checkpoint and '
                f'names the bad entry.'
            )


def predict(runner, meta: dict, photo: np.ndarray) -> Prediction:
    """Run an exported model on a photo (``read_photo``) as the codebase's inferencer runs
    the model; see the module docstring. ``runner``: any runtime's Runner
    (mobileone_mm.runtimes: ``runner(image)`` -> raw outputs, ``input_shape``) or an
    onnxruntime session of an exported graph; ``meta``: the export metadata."""
    if not callable(runner):  # an onnxruntime InferenceSession
        runner = SessionRunner(runner, meta)
    steps = meta.get('preprocess')
    # without the pipeline (graphs exported before it was recorded), the export size
    shape = runner.input_shape or (tuple(meta['input_shape']) if steps is None else None)
    image, frame = preprocess(photo, steps, shape)
    outputs = runner(image.transpose(2, 0, 1)[None].astype(np.float32))
    check_finite_outputs(TASK_OUTPUTS[meta['task']], outputs)
    task = meta['task']
    if task == 'detection':
        boxes, scores, labels = postprocess_detections(
            frame.to_photo(outputs[0][0]), outputs[1][0], meta
        )
        return Prediction(task, frame, boxes=boxes, scores=scores, labels=labels)
    if task == 'segmentation':
        import torch
        import torch.nn.functional as F

        logits = F.interpolate(
            torch.from_numpy(outputs[0]),
            size=photo.shape[:2],
            mode='bilinear',
            align_corners=meta.get('align_corners', False),
        )
        return Prediction(task, frame, label_map=logits.argmax(1)[0].numpy())
    logits = outputs[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    return Prediction(task, frame, scores=(probs / probs.sum()).astype(np.float32))


def draw(
    photo: np.ndarray,
    prediction: Prediction,
    classes: Sequence[str] = (),
    score_thr: float = 0.3,
    top: int = 5,
) -> Tuple[np.ndarray, List[str]]:
    """The prediction drawn on the photo (BGR uint8, the photo's size): boxes with class
    and score, a colour mask, or the top classes. Returns the picture and the lines of
    text describing the result."""
    import cv2

    name = lambda i: classes[i] if i < len(classes) else str(i)  # noqa: E731
    canvas = photo.copy()
    lines = []
    if prediction.task == 'detection':
        for box, score, label in zip(prediction.boxes, prediction.scores, prediction.labels):
            if score < score_thr:
                continue
            x1, y1, x2, y2 = box.round().astype(int)
            colour = tuple(int(c) for c in PALETTE[label % len(PALETTE)])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(
                canvas,
                f'{name(label)} {score:.2f}',
                (x1, max(y1 - 3, 10)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                colour,
                1,
            )
            lines.append(f'{name(label)} {score:.3f} box {box.round(1).tolist()}')
    elif prediction.task == 'segmentation':
        labels = prediction.label_map
        canvas = (0.5 * canvas + 0.5 * PALETTE[labels % len(PALETTE)]).astype(np.uint8)
        ids, counts = np.unique(labels, return_counts=True)
        lines = [
            f'{name(i)}: {100 * c / labels.size:.1f}% of pixels'
            for i, c in sorted(zip(ids, counts), key=lambda p: -p[1])
        ]
    else:
        probs = prediction.scores
        lines = [f'{name(i)}: {probs[i]:.3f}' for i in np.argsort(-probs)[:top]]
        for row, line in enumerate(lines):
            cv2.putText(
                canvas, line, (4, 14 + 14 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1
            )
    return canvas, lines


def picture_extension(path: str) -> str:
    """The extension of an output picture when OpenCV can write it, else PredictError."""
    import cv2

    ext = os.path.splitext(os.fspath(path))[1]
    if not ext or not cv2.haveImageWriter('x' + ext):
        raise PredictError(
            f'Cannot write a picture as {os.fspath(path)!r}: '
            f'{"no extension" if not ext else f"unknown format {ext!r}"}; '
            f'use .png or .jpg.'
        )
    return ext


def encode_picture(picture: np.ndarray, path: str) -> bytes:
    """A BGR picture encoded in the format ``path``'s extension names
    (``picture_extension``), with our mark in .png and .jpg files
    (checkpoints.paths.mark_picture: a later run may replace it)."""
    import cv2

    ext = picture_extension(path)
    ok, data = cv2.imencode(ext, np.ascontiguousarray(picture))
    if not ok:
        raise PredictError(
            f'OpenCV cannot encode the picture for {os.fspath(path)!r} as {ext}: use .png or .jpg.'
        )
    return mark_picture(data.tobytes(), ext)


PALETTE = np.random.RandomState(3).randint(64, 256, (256, 3)).astype(np.uint8)
