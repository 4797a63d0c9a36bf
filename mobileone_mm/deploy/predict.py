"""An exported graph on a photo, as the codebases' own inferencers run the model: the
photo read as mmcv reads it (cv2, BGR, alpha dropped, grey to 3 channels), the config's
test pipeline repeated (the steps are in the ONNX metadata, see metadata.preprocess_steps),
the graph run in onnxruntime, and the result reported in the photo's frame:

* detection: mmdet's test-time steps (``postprocess_detections``) on boxes scaled back
  by the photo / input ratio first, as mmdet's ``_bbox_post_process`` does;
* segmentation: the logits resized bilinearly to the photo's size, then argmax, as
  mmseg's ``postprocess_result``;
* classification: softmax of the logits, as mmpretrain's head.

Used by tools/onnx_infer.py; tests/test_onnx_photos.py holds it to mmdet's
``DetInferencer``, mmseg's ``MMSegInferencer`` and mmpretrain's
``ImageClassificationInferencer`` on real photos.
"""
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..checkpoints.paths import check_input_file, mark_picture
from ..errors import UserError

TASK_OUTPUTS = dict(detection=['boxes', 'scores'], segmentation=['logits', 'labels'],
                    classification=['logits'])
DETECTION_KEYS = ('level_sizes', 'score_thr', 'nms_pre', 'iou_threshold', 'min_bbox_size',
                  'max_per_img')


class PredictError(UserError, ValueError):
    """A photo or an exported model that cannot be used, with the reason and the fix."""


# ----------------------------------------------------------------------------- photos
def read_photo(path: str) -> np.ndarray:
    """The photo as mmcv's ``imread`` gives it (cv2, ``IMREAD_COLOR``: BGR uint8, grey as
    3 channels, alpha dropped, EXIF orientation applied). A file that is missing, empty,
    not an image, or truncated (Pillow decodes it in full first: cv2 would silently fill
    a cut JPEG with grey) is refused with PathError / PredictError naming it."""
    import cv2
    from PIL import Image, ImageFile, UnidentifiedImageError
    path = check_input_file(path, 'photo')
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    mode = None  # Pillow's pixel mode, when Pillow reads the file
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
    except (UnidentifiedImageError, Image.DecompressionBombError):
        pass  # a format only OpenCV reads (EXR, PFM, ...), or huge: cv2 decides below
    except (OSError, SyntaxError, ValueError) as error:
        raise PredictError(f'The photo {path!r} cannot be decoded in full ({error}): it is '
                           f'truncated or corrupt. Copy or save it again.') from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    photo = cv2.imread(path, cv2.IMREAD_COLOR)
    if photo is None and mode == 'F':
        raise PredictError(f'The photo {path!r} is a 32-bit floating-point image (Pillow mode '
                           f"'F'): OpenCV, which mmcv and the inferencers read photos with, "
                           f'does not read it as a colour image, and its value range (0..1? '
                           f'0..255?) is not known. Scale it and save it as 8 or 16 bits per '
                           f'channel.')
    if photo is None and mode is not None:
        raise PredictError(f'The photo {path!r} is an image Pillow reads (mode {mode!r}) but '
                           f'OpenCV, which mmcv and the inferencers read photos with, does '
                           f'not: save it as 8-bit RGB (PNG or JPEG).')
    if photo is None:
        raise PredictError(f'The photo {path!r} is not an image that OpenCV or Pillow can '
                           f'read (JPEG, PNG, BMP, TIFF, WebP, ...): give an image file.')
    return photo


def read_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """An image file (checked as ``read_photo``) resized to ``input_shape`` (H, W), as
    the graph takes it: (1, 3, H, W) float32 BGR 0..255."""
    import cv2
    resized = cv2.resize(read_photo(path), (int(input_shape[1]), int(input_shape[0])),
                         interpolation=cv2.INTER_LINEAR)
    return resized.transpose(2, 0, 1)[None].astype(np.float32)


@dataclass
class Frame:
    """Where the network input sits in the photo: input = photo x scale - offset (the
    offset of a crop, in the resized photo's pixels)."""
    photo_size: Tuple[int, int]   # (w, h)
    input_size: Tuple[int, int]   # (w, h)
    scale: Tuple[float, float] = (1.0, 1.0)
    offset: Tuple[float, float] = (0.0, 0.0)
    notes: List[str] = field(default_factory=list)

    def to_photo(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (K, 4) x1 y1 x2 y2 of the input frame in the photo's, as mmdet's
        ``scale_boxes`` (float32 multiplication by 1 / scale)."""
        factor = np.array([1 / s for s in self.scale] * 2, np.float32)
        if self.offset != (0.0, 0.0):
            boxes = boxes + np.array(self.offset * 2, np.float32)
        return boxes * factor


def _resize(image: np.ndarray, size: Tuple[int, int], step: dict) -> np.ndarray:
    """mmcv.imresize: cv2 or Pillow, to size (w, h)."""
    import cv2
    if step.get('backend', 'cv2') == 'pillow':
        from PIL import Image
        resample = getattr(Image.Resampling, step.get('interpolation', 'bilinear').upper())
        return np.array(Image.fromarray(image).resize(size, resample))
    codes = dict(nearest=cv2.INTER_NEAREST, bilinear=cv2.INTER_LINEAR,
                 bicubic=cv2.INTER_CUBIC, area=cv2.INTER_AREA, lanczos=cv2.INTER_LANCZOS4)
    return cv2.resize(image, size, interpolation=codes[step.get('interpolation', 'bilinear')])


def pad_size(step: dict, w: int, h: int) -> Tuple[int, int]:
    """(w, h) of an image of w x h after a ``pad`` step, as mmcv's Pad computes it: a
    fixed size, a square and / or a multiple of ``size_divisor`` (which wins over a
    fixed size); never smaller than the image."""
    target_w, target_h = step['size'] or (w, h)
    if step['pad_to_square']:
        target_w = target_h = max(h, w)
    if step['size_divisor']:
        if not step['pad_to_square']:
            target_w, target_h = w, h
        divisor = step['size_divisor']
        target_w, target_h = -(-target_w // divisor) * divisor, -(-target_h // divisor) * divisor
    return max(target_w, w), max(target_h, h)


def _pad(image: np.ndarray, step: dict) -> np.ndarray:
    """mmcv's Pad with constant padding (``pad_size``), at the bottom and right."""
    import cv2
    h, w = image.shape[:2]
    target_w, target_h = pad_size(step, w, h)
    value = step['pad_val']
    value = list(value) if isinstance(value, list) else [value] * image.shape[2]
    return cv2.copyMakeBorder(image, 0, target_h - h, 0, target_w - w,
                              cv2.BORDER_CONSTANT, value=value)


def _size_after(step: dict, w: int, h: int) -> Tuple[int, int]:
    """(w, h) after one resize step, as mmcv's Resize / mmpretrain's ResizeEdge compute it."""
    if step['op'] == 'resize_edge':
        by_width = (step['edge'] == 'short' and w < h) or (step['edge'] == 'long' and w > h) \
            or step['edge'] == 'width'
        scale = step['scale']
        return (scale, int(scale * h / w)) if by_width else (int(scale * w / h), scale)
    if not step['keep_ratio']:
        return tuple(step['size'])
    factor = min(max(step['size']) / max(h, w), min(step['size']) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)  # mmcv.rescale_size


def preprocess(photo: np.ndarray, steps: Optional[List[dict]],
               graph_shape: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, Frame]:
    """The photo through the test pipeline's ``steps`` (see metadata.preprocess_steps), or,
    when there are none or their result does not fit a graph of fixed ``graph_shape``
    (H, W), resized to that shape; returns (network input HxWx3 uint8, Frame). The frame's
    notes say what differs from the config's pipeline and when a photo is stretched or
    upscaled a lot."""
    h, w = photo.shape[:2]
    frame = Frame(photo_size=(w, h), input_size=(w, h))
    image = photo
    scale_x = scale_y = 1.0
    offset_x = offset_y = 0.0
    for step in steps or []:
        cur_h, cur_w = image.shape[:2]
        if step['op'] == 'center_crop':
            crop_w, crop_h = min(step['size'][0], cur_w), min(step['size'][1], cur_h)
            if crop_w * crop_h < 0.5 * cur_w * cur_h:
                frame.notes.append(f"the test pipeline's centre crop keeps {crop_w}x{crop_h} "
                                   f'of the resized {cur_w}x{cur_h} photo '
                                   f'({100 * crop_w * crop_h / (cur_w * cur_h):.0f} %)')
            y1 = max(0, int(round((cur_h - crop_h) / 2.)))
            x1 = max(0, int(round((cur_w - crop_w) / 2.)))
            image = image[y1:y1 + crop_h, x1:x1 + crop_w]
            offset_x, offset_y = offset_x + x1, offset_y + y1
            continue
        if step['op'] == 'pad':  # bottom and right: the frame does not move
            image = _pad(image, step)
            continue
        new_w, new_h = _size_after(step, cur_w, cur_h)
        if new_w < 1 or new_h < 1:
            raise PredictError(f'The photo ({w}x{h}) is too elongated for the test '
                               f"pipeline's {step['op']}: it would become {new_w}x{new_h} "
                               f'pixels. Crop it closer to the aspect ratio of the training '
                               f'images.')
        image = _resize(image, (new_w, new_h), step)
        sx, sy = new_w / cur_w, new_h / cur_h
        scale_x, scale_y = scale_x * sx, scale_y * sy
        offset_x, offset_y = offset_x * sx, offset_y * sy
    if steps is None:
        frame.notes.append('the config\'s test pipeline is not in the model\'s metadata or '
                           'cannot be repeated: the photo was resized to the graph input')
    if graph_shape is not None and image.shape[:2] != tuple(graph_shape):
        if steps:
            frame.notes.append(f'the test pipeline gives {image.shape[1]}x{image.shape[0]}, '
                               f'the graph takes a fixed {graph_shape[1]}x{graph_shape[0]}: '
                               f'the photo was resized to that instead (export with '
                               f'--dynamic to follow the pipeline)')
        image = _resize(photo, (graph_shape[1], graph_shape[0]), dict(op='resize'))
        scale_x, scale_y = graph_shape[1] / w, graph_shape[0] / h
        offset_x = offset_y = 0.0
    frame.input_size = (image.shape[1], image.shape[0])
    frame.scale, frame.offset = (scale_x, scale_y), (offset_x, offset_y)
    stretch = max(scale_x, scale_y) / min(scale_x, scale_y)
    if stretch > 1.5:
        frame.notes.append(f'the photo was stretched {stretch:.1f}x more along one axis '
                           f'than the other')
    if min(scale_x, scale_y) > 4:
        frame.notes.append(f'the photo was upscaled {min(scale_x, scale_y):.0f}x: it is '
                           f'much smaller than the images the model saw')
    return np.ascontiguousarray(image), frame


# ------------------------------------------------------------------ exported models
def _graph_dims(value_info) -> list:
    return [d if isinstance(d, int) else None for d in value_info.shape]


def check_metadata(session, meta: dict, path: str):
    """PredictError when ``meta`` is missing or disagrees with the graph: task and output
    names, input name and shape, the detection post-process settings, number of class
    names against the graph's class dimension."""
    fix = ('Export it with tools/export_onnx.py, which writes the metadata onnx_infer '
           'needs.')
    task = meta.get('task')
    if task not in TASK_OUTPUTS:
        found = f'task {task!r}' if task is not None else 'no mobileone-mm metadata'
        raise PredictError(f'The ONNX model {path!r} has {found} (task, input_shape, ...). '
                           f'{fix}')
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = [o.name for o in outputs]
    problems = []
    if [i.name for i in inputs] != ['image'] or len(inputs[0].shape) != 4:
        problems.append(f'inputs {[(i.name, i.shape) for i in inputs]} (expected one '
                        f'4-d input named image)')
    if names != TASK_OUTPUTS[task]:
        problems.append(f'outputs {names} (a {task} graph has {TASK_OUTPUTS[task]})')
    shape = meta.get('input_shape')
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(v, int) and v >= 1 for v in shape)):
        problems.append(f'input_shape {shape!r} (expected [H, W])')
    elif not problems:
        dims = _graph_dims(inputs[0])
        if dims[1] not in (3, None):
            problems.append(f'an input of {dims[1]} channels (photos give 3)')
        if dims[2:] != [None, None] and dims[2:] != shape:
            problems.append(f'input_shape {shape} in the metadata but the graph takes '
                            f'{dims[2]}x{dims[3]}')
    if task == 'detection':
        missing = [k for k in DETECTION_KEYS if k not in meta]
        if missing:
            problems.append(f'no {", ".join(missing)} for the detection post-process')
        elif not problems:
            anchors = _graph_dims(outputs[1])[1]
            if anchors is not None and sum(meta['level_sizes']) != anchors:
                problems.append(f'level_sizes adding up to {sum(meta["level_sizes"])} '
                                f'anchors but the graph has {anchors}')
    classes = meta.get('classes') or []
    if classes and not problems:
        class_dim = _graph_dims(outputs[1] if task == 'detection' else outputs[0])
        count = class_dim[2] if task == 'detection' else class_dim[1]
        if count is not None and count != len(classes):
            problems.append(f'{len(classes)} class names for {count} classes')
    if problems:
        raise PredictError(f'The ONNX model {path!r} does not match its metadata: '
                           f'{"; ".join(problems)}. {fix}')


def check_external_data(path: str):
    """PredictError naming the file and where it was looked for when the ONNX model at
    ``path`` keeps tensors in external data files (onnx's save_as_external_data, needed
    above 2 GB) and one of them is missing. A file onnx cannot parse is left to
    onnxruntime's error."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not a readable model: load_onnx says so
        return
    folder = os.path.dirname(os.path.abspath(path))
    for tensor in graph.graph.initializer:
        if uses_external_data(tensor):
            location = os.path.join(folder, ExternalDataInfo(tensor).location)
            if not os.path.isfile(location):
                raise PredictError(
                    f'The ONNX model {path!r} keeps its weights in external data files, and '
                    f'{ExternalDataInfo(tensor).location!r} (tensor {tensor.name!r}) is '
                    f'missing: looked for {location!r}. Copy the data file next to the '
                    f'model, as it was when exported.')


def load_onnx(path: str, threads: Optional[int] = None):
    """(onnxruntime session, metadata) of a graph written by tools/export_onnx.py; a
    missing or unreadable file, a PyTorch checkpoint, a foreign or inconsistent graph are
    refused with PathError / PredictError naming the file and the fix."""
    from .export import make_session
    path = check_input_file(path, 'ONNX model')
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':
        raise PredictError(f'{path!r} is a PyTorch checkpoint, not an ONNX model: export it '
                           f'first with tools/export_onnx.py CONFIG {path} OUT.onnx.')
    check_external_data(path)
    try:
        session = make_session(path, threads)
    except Exception as error:  # noqa: BLE001 (onnxruntime's own exception types)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ''
        raise PredictError(f'{path!r} is not a readable ONNX model ({type(error).__name__}: '
                           f'{detail}): truncated, or another kind of file. Export it '
                           f'again with tools/export_onnx.py.') from None
    raw = session.get_modelmeta().custom_metadata_map
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError as error:
        raise PredictError(f'The ONNX model {path!r} has metadata that is not ours '
                           f'({error}). Export it with tools/export_onnx.py.') from None
    check_metadata(session, meta, path)
    return session, meta


def graph_input_shape(session) -> Optional[Tuple[int, int]]:
    """(H, W) of a graph with a fixed input size, None when they are free."""
    dims = _graph_dims(session.get_inputs()[0])[2:]
    return None if None in dims else tuple(dims)


# ------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    """One photo's result in the photo's frame (pixels of the photo as read)."""
    task: str
    frame: Frame
    boxes: Optional[np.ndarray] = None          # (K, 4) x1 y1 x2 y2, detection
    scores: Optional[np.ndarray] = None         # (K,) detection; (classes,) classification
    labels: Optional[np.ndarray] = None         # (K,) detection
    label_map: Optional[np.ndarray] = None      # (H, W) segmentation


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
                f'The model\'s output {name!r} holds NaN or inf: the weights it was '
                f'exported with are corrupt (NaN, or a negative BatchNorm variance). Export '
                f'it again with tools/export.py, which refuses such a checkpoint and '
                f'names the bad entry.')


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
        boxes, scores, labels = postprocess_detections(frame.to_photo(outputs[0][0]),
                                                       outputs[1][0], meta)
        return Prediction(task, frame, boxes=boxes, scores=scores, labels=labels)
    if task == 'segmentation':
        import torch
        import torch.nn.functional as F
        logits = F.interpolate(torch.from_numpy(outputs[0]), size=photo.shape[:2],
                               mode='bilinear', align_corners=meta.get('align_corners', False))
        return Prediction(task, frame, label_map=logits.argmax(1)[0].numpy())
    logits = outputs[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    return Prediction(task, frame, scores=(probs / probs.sum()).astype(np.float32))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
         block: int = 512) -> np.ndarray:
    """Greedy NMS in score order, IoU as mmcv's (float32, no +1 on widths): a box is
    dropped when it overlaps a kept, better one by more than ``iou_threshold``. Returns
    the kept indices, best first.

    Vectorised by blocks of ``block`` boxes in score order: within a block, "kept = no
    kept better box overlaps it" is iterated to its fixed point, which is the greedy
    result (a box's verdict depends only on better ones: after t rounds, every box whose
    longest chain of overlapping better boxes is shorter than t is final); the block's
    kept boxes then drop the later ones at once."""
    order = np.argsort(-scores, kind='stable')
    x1, y1, x2, y2 = np.ascontiguousarray(boxes[order].T)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), bool)
    for first in range(0, len(order), block):
        rows = slice(first, first + block)
        width = np.minimum(x2[rows, None], x2[None, first:])
        width -= np.maximum(x1[rows, None], x1[None, first:])
        height = np.minimum(y2[rows, None], y2[None, first:])
        height -= np.maximum(y1[rows, None], y1[None, first:])
        inter = np.clip(width, 0, None, out=width)
        inter *= np.clip(height, 0, None, out=height)
        union = areas[rows, None] + areas[None, first:]
        union -= inter
        overlaps = inter / np.maximum(union, np.finfo(np.float32).eps, out=union) \
            > iou_threshold
        count = len(overlaps)
        within = np.triu(overlaps[:, :count], 1).astype(np.float32)  # better i, worse j
        candidates = ~suppressed[first:first + count]  # not dropped by earlier blocks
        kept = candidates
        while True:
            now = candidates & ~(kept.astype(np.float32) @ within > 0)
            if np.array_equal(now, kept):
                break
            kept = now
        suppressed[first:first + count] = ~kept
        suppressed[first + count:] |= overlaps[kept, count:].any(0)
    return order[~suppressed]


def postprocess_detections(boxes: np.ndarray, scores: np.ndarray, meta: dict
                           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmdet's test-time steps for one image: per level, scores above ``score_thr`` and
    the ``nms_pre`` best (anchor, class) pairs; boxes larger than ``min_bbox_size``;
    class-wise NMS; the ``max_per_img`` best. Returns boxes (K, 4), scores, labels."""
    picked_boxes, picked_scores, picked_labels = [], [], []
    start = 0
    for size in meta['level_sizes']:
        level_scores = scores[start:start + size]
        anchors, labels = np.nonzero(level_scores > meta['score_thr'])
        values = level_scores[anchors, labels]
        order = np.argsort(-values, kind='stable')
        if meta['nms_pre'] > 0:
            order = order[:meta['nms_pre']]
        picked_boxes.append(boxes[start + anchors[order]])
        picked_scores.append(values[order])
        picked_labels.append(labels[order])
        start += size
    boxes, scores, labels = (np.concatenate(x) for x in
                             (picked_boxes, picked_scores, picked_labels))
    if meta['min_bbox_size'] >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > meta['min_bbox_size']).all(1)
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    if len(boxes):
        keep = _batched_nms(boxes, scores, labels, meta['iou_threshold'])
        keep = keep[:meta['max_per_img']]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, scores, labels


def _batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 iou_threshold: float) -> np.ndarray:
    """mmcv's ``batched_nms``: NMS within each class, on boxes moved apart by class
    (``label x (max coordinate + 1)``, the same float32 rounding as mmcv's), kept in score
    order. Class by class, as mmcv does above 10000 boxes: one pass over all of them would
    be quadratic in their number (RTMDet keeps up to 30000 a level: minutes in numpy)."""
    moved = boxes + labels[:, None].astype(boxes.dtype) * (boxes.max() + 1)
    keep = np.sort(np.concatenate([
        members[_nms(moved[members], scores[members], iou_threshold)]
        for members in (np.flatnonzero(labels == label) for label in np.unique(labels))]))
    return keep[np.argsort(-scores[keep], kind='stable')]


# ------------------------------------------------------------------------- drawing
def draw(photo: np.ndarray, prediction: Prediction, classes: Sequence[str] = (),
         score_thr: float = 0.3, top: int = 5) -> Tuple[np.ndarray, List[str]]:
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
            cv2.putText(canvas, f'{name(label)} {score:.2f}', (x1, max(y1 - 3, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
            lines.append(f'{name(label)} {score:.3f} box {box.round(1).tolist()}')
    elif prediction.task == 'segmentation':
        labels = prediction.label_map
        canvas = (0.5 * canvas + 0.5 * PALETTE[labels % len(PALETTE)]).astype(np.uint8)
        ids, counts = np.unique(labels, return_counts=True)
        lines = [f'{name(i)}: {100 * c / labels.size:.1f}% of pixels'
                 for i, c in sorted(zip(ids, counts), key=lambda p: -p[1])]
    else:
        probs = prediction.scores
        lines = [f'{name(i)}: {probs[i]:.3f}' for i in np.argsort(-probs)[:top]]
        for row, line in enumerate(lines):
            cv2.putText(canvas, line, (4, 14 + 14 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1)
    return canvas, lines


def picture_extension(path: str) -> str:
    """The extension of an output picture when OpenCV can write it, else PredictError."""
    import cv2
    ext = os.path.splitext(os.fspath(path))[1]
    if not ext or not cv2.haveImageWriter('x' + ext):
        raise PredictError(f'Cannot write a picture as {os.fspath(path)!r}: '
                           f'{"no extension" if not ext else f"unknown format {ext!r}"}; '
                           f'use .png or .jpg.')
    return ext


def encode_picture(picture: np.ndarray, path: str) -> bytes:
    """A BGR picture encoded in the format ``path``'s extension names
    (``picture_extension``), with our mark in .png and .jpg files
    (checkpoints.paths.mark_picture: a later run may replace it)."""
    import cv2
    ext = picture_extension(path)
    ok, data = cv2.imencode(ext, np.ascontiguousarray(picture))
    if not ok:
        raise PredictError(f'OpenCV cannot encode the picture for {os.fspath(path)!r} as '
                           f'{ext}: use .png or .jpg.')
    return mark_picture(data.tobytes(), ext)


PALETTE = np.random.RandomState(3).randint(64, 256, (256, 3)).astype(np.uint8)
