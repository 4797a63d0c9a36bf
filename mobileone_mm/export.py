"""ONNX export of fused MobileOne models, and the onnxruntime side of them.

Every exported graph takes what ``cv2.imread`` gives, resized to the export shape:
float32 NCHW, BGR, 0..255. The model's own data-preprocessor normalisation (mean, std,
BGR->RGB) is part of the graph. Outputs:

* classifier: ``logits`` (N, classes)
* segmentor:  ``logits`` (N, classes, H, W) at input resolution, ``labels`` (N, H, W)
* SSD detector: ``boxes`` (N, anchors, 4) decoded in input pixels, and ``scores``
  (N, anchors, classes), softmax without background. Score threshold, per-level top-k and
  class-wise NMS stay outside the graph, in ``postprocess_detections`` (numpy, used by
  tools/onnx_infer.py): their output size depends on the data, which ONNX's
  NonMaxSuppression handles only in a form onnxruntime runs slowly and that differs from
  mmcv's NMS in tie-breaking; a 40-line numpy copy of mmdet's test-time steps keeps the
  detections identical. Their settings travel in the ONNX file's metadata.
"""
import io
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .analysis import measure_latency
from .reparam import reparameterize_model
from .weights import atomic_file


class Normalize(nn.Module):
    """A data preprocessor's normalisation (mmdet / mmseg / mmpretrain) as graph ops."""

    def __init__(self, preprocessor):
        super().__init__()
        swap = any(getattr(preprocessor, name, False)
                   for name in ('_channel_conversion', 'channel_conversion', 'to_rgb'))
        self.channel_order = [2, 1, 0] if swap else [0, 1, 2]
        self.register_buffer('mean', preprocessor.mean.reshape(1, -1, 1, 1).float())
        self.register_buffer('std', preprocessor.std.reshape(1, -1, 1, 1).float())

    def forward(self, img):
        return (img[:, self.channel_order] - self.mean) / self.std


class ClassifierForExport(nn.Module):
    output_names = ['logits']

    def __init__(self, model, input_shape):
        super().__init__()
        self.model, self.normalize = model, Normalize(model.data_preprocessor)

    def forward(self, img):
        return self.model(self.normalize(img), mode='tensor')


class SegmentorForExport(nn.Module):
    output_names = ['logits', 'labels']

    def __init__(self, model, input_shape):
        super().__init__()
        self.model, self.normalize = model, Normalize(model.data_preprocessor)

    def forward(self, img):
        x = self.normalize(img)
        logits = F.interpolate(self.model.decode_head(self.model.extract_feat(x)),
                               size=img.shape[2:], mode='bilinear',
                               align_corners=self.model.align_corners)
        return logits, logits.argmax(1)


class SSDForExport(nn.Module):
    """Backbone, neck and head, then per-anchor decoding, for a fixed input shape (the
    anchors are constants of the graph)."""
    output_names = ['boxes', 'scores']

    def __init__(self, model, input_shape):
        super().__init__()
        self.model, self.normalize = model, Normalize(model.data_preprocessor)
        self.input_shape = tuple(input_shape)
        with torch.no_grad():
            cls_scores, _ = model._forward(torch.zeros(1, 3, *input_shape))
        head = model.bbox_head
        priors = head.prior_generator.grid_priors([c.shape[2:] for c in cls_scores],
                                                  device='cpu')
        self.level_sizes = [len(p) for p in priors]
        self.register_buffer('priors', torch.cat(priors))

    def forward(self, img):
        cls_scores, bbox_preds = self.model._forward(self.normalize(img))
        n = img.shape[0]
        head = self.model.bbox_head
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(n, -1, head.cls_out_channels)
                            for c in cls_scores], 1)
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in bbox_preds], 1)
        # mmdet's decode() switches to its deprecated, broken ONNX variant while
        # exporting; delta2bbox is the function it uses otherwise.
        from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
        coder = head.bbox_coder
        boxes = delta2bbox(self.priors.repeat(n, 1), deltas.reshape(-1, 4), coder.means,
                           coder.stds, self.input_shape, clip_border=coder.clip_border,
                           add_ctr_clamp=coder.add_ctr_clamp, ctr_clamp=coder.ctr_clamp)
        return boxes.reshape(n, -1, 4), logits.softmax(-1)[..., :-1]  # background last


def task_of(model: nn.Module) -> str:
    if hasattr(model, 'bbox_head'):
        return 'detection'
    if hasattr(model, 'decode_head'):
        return 'segmentation'
    if hasattr(model, 'head'):
        return 'classification'
    raise TypeError(f'Cannot export a {type(model).__name__}: expected an mmdet detector, '
                    f'an mmseg segmentor or an mmpretrain classifier.')


WRAPPERS = dict(classification=ClassifierForExport, segmentation=SegmentorForExport,
                detection=SSDForExport)


def export_onnx(model: nn.Module, path: str, input_shape: Sequence[int] = (320, 320),
                dynamic: bool = False, metadata: Dict[str, object] = None) -> dict:
    """Fuse ``model`` in place (if needed) and export it to ``path`` (written atomically).

    ``dynamic`` makes the batch size (and, for classifiers and segmentors, the image
    size) free. Returns what was exported: task, output names, conv counts of the fused
    PyTorch model and of the graph (equal: no branch is left), metadata.
    """
    import onnx
    task = task_of(model)
    if task == 'detection' and not hasattr(model.bbox_head, 'prior_generator'):
        raise TypeError('Only anchor-based single-stage detectors (SSDLite) are exported.')
    model = reparameterize_model(model.eval())
    wrapper = WRAPPERS[task](model, input_shape).eval()
    example = torch.zeros(1, 3, *input_shape)
    axes = {0: 'batch'} if task == 'detection' else {0: 'batch', 2: 'height', 3: 'width'}
    dynamic_axes = ({'image': axes, **{name: {0: 'batch'} for name in wrapper.output_names}}
                    if dynamic else None)
    meta = dict(task=task, input_shape=list(input_shape), **(metadata or {}))
    if task == 'detection':
        test_cfg = model.bbox_head.test_cfg
        meta.update(level_sizes=wrapper.level_sizes, score_thr=test_cfg.get('score_thr', 0),
                    nms_pre=test_cfg.get('nms_pre', -1),
                    iou_threshold=test_cfg['nms']['iou_threshold'],
                    min_bbox_size=test_cfg.get('min_bbox_size', -1),
                    max_per_img=test_cfg.get('max_per_img', 100))
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(wrapper, (example, ), buffer, dynamo=False, opset_version=17,
                          input_names=['image'], output_names=wrapper.output_names,
                          dynamic_axes=dynamic_axes)
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=json.dumps(value))
    with atomic_file(path) as f:
        f.write(graph.SerializeToString())
    return dict(task=task, path=path, outputs=wrapper.output_names, metadata=meta,
                torch_convs=count_conv_calls(wrapper, example),
                onnx_convs=sum(node.op_type == 'Conv' for node in graph.graph.node))


def count_conv_calls(module: nn.Module, example: torch.Tensor) -> int:
    """Convolutions one forward pass runs (an auxiliary head, unused, does not count)."""
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(example)
    for handle in handles:
        handle.remove()
    return len(calls)


# ------------------------------------------------------------------- onnxruntime side
def make_session(model, threads: Optional[int] = None):
    """An onnxruntime CPU session for an ONNX file path or serialized model (bytes), all
    graph optimisations on; ``threads`` sets its intra-op threads (default: onnxruntime's
    choice, one per physical core)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    # Idle workers sleep instead of spinning: spinning ones would steal the cores from
    # whatever runs next in the process (PyTorch, in the benchmark's interleaved runs).
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def load_session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU session (see ``make_session``) and the export metadata."""
    session = make_session(path, threads)
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    return session, meta


def read_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """An image file as the graph takes it: (1, 3, H, W) float32 BGR 0..255."""
    import cv2
    image = cv2.imread(path)
    if image is None:
        raise FileNotFoundError(f'Cannot read image {path!r}.')
    resized = cv2.resize(image, (input_shape[1], input_shape[0]),
                         interpolation=cv2.INTER_LINEAR)
    return resized.transpose(2, 0, 1)[None].astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> List[int]:
    """Greedy NMS in score order, IoU as mmcv's (no +1 on widths)."""
    order = np.argsort(-scores, kind='stable')
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, order = order[0], order[1:]
        keep.append(int(i))
        lt = np.maximum(boxes[i, :2], boxes[order, :2])
        rb = np.minimum(boxes[i, 2:], boxes[order, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / np.maximum(areas[i] + areas[order] - inter, np.finfo(np.float32).eps)
        order = order[iou <= iou_threshold]
    return keep


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
        offsets = labels[:, None] * (boxes.max() + 1)  # class-wise NMS in one pass
        keep = _nms(boxes + offsets, scores, meta['iou_threshold'])[:meta['max_per_img']]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, scores, labels


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def match_detections(found, expected, score_thr: float) -> dict:
    """Pair each expected detection above ``score_thr`` with the found one of the same
    label that overlaps it most; unmatched counts the pairs that fail or are missing."""
    (boxes, scores, labels), (ref_boxes, ref_scores, ref_labels) = found, expected
    mine, theirs = scores >= score_thr, ref_scores >= score_thr
    result = dict(detections=int(theirs.sum()), unmatched=abs(int(mine.sum() - theirs.sum())),
                  min_box_iou=1.0, max_score_diff=0.0)
    iou = _box_iou(ref_boxes[theirs], boxes[mine])
    iou[ref_labels[theirs][:, None] != labels[mine][None]] = 0
    for i, j in enumerate(iou.argmax(1) if iou.size else []):
        result['unmatched'] += int(iou[i, j] == 0)
        result['min_box_iou'] = min(result['min_box_iou'], float(iou[i, j]))
        result['max_score_diff'] = max(result['max_score_diff'],
                                       float(abs(scores[mine][j] - ref_scores[theirs][i])))
    return result


def _torch_reference(model: nn.Module, task: str, image: torch.Tensor):
    """The model's own inference path (mmdet predict / mmseg encode_decode / mmpretrain
    tensor mode) on a normalised image, in the form the graph's outputs take."""
    x = Normalize(model.data_preprocessor)(image)
    shape = tuple(image.shape[2:])
    if task == 'classification':
        return [model(x, mode='tensor')]
    if task == 'segmentation':
        logits = model.encode_decode(x, [dict(img_shape=shape, pad_shape=shape)])
        return [logits, logits.argmax(1)]
    from mmdet.structures import DetDataSample
    sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape,
                                         scale_factor=(1.0, 1.0)))
    result = model.predict(x, [sample], rescale=False)[0].pred_instances
    return [result.bboxes, result.scores, result.labels]


def verify_onnx(model: nn.Module, path: str, images: Sequence[np.ndarray],
                score_thr: float = 0.3) -> dict:
    """Run onnxruntime and the PyTorch model on the same images and compare, by task:
    logits (max abs difference / max abs logit, pass <= 1e-4), label maps (share of equal
    pixels, pass >= 99.9%), detections above ``score_thr`` (all matched: same label, box
    IoU >= 0.99, score within 1e-4). Also the median time per image of both."""
    session, meta = load_session(path)
    task = meta['task']
    model = model.eval()
    checks = []
    for image in images:
        with torch.no_grad():
            expected = [t.numpy() for t in _torch_reference(model, task, torch.from_numpy(image))]
        actual = session.run(None, {'image': image})
        if task == 'detection':
            found = postprocess_detections(actual[0][0], actual[1][0], meta)
            checks.append(match_detections(found, expected, score_thr))
        else:
            check = dict(logits_rel_diff=float(np.abs(actual[0] - expected[0]).max()
                                               / np.abs(expected[0]).max()))
            if task == 'segmentation':
                check['label_agreement'] = float((actual[1] == expected[1]).mean())
            checks.append(check)
    report = dict(task=task, images=len(images))
    for key in checks[0]:
        values = [c[key] for c in checks]
        report[key] = (sum(values) if key in ('detections', 'unmatched') else
                       min(values) if key in ('min_box_iou', 'label_agreement') else max(values))
    report['passed'] = (report.get('logits_rel_diff', 0) <= 1e-4
                        and report.get('label_agreement', 1) >= 0.999
                        and report.get('unmatched', 0) == 0
                        and report.get('min_box_iou', 1) >= 0.99
                        and report.get('max_score_diff', 0) <= 1e-4)
    example = torch.from_numpy(images[0])
    report['torch_ms'] = measure_latency(lambda x: _torch_reference(model, task, x),
                                         example, warmup=2, runs=10)['median_ms']
    report['onnx_ms'] = measure_latency(lambda x: session.run(None, {'image': x.numpy()}),
                                        example, warmup=2, runs=10)['median_ms']
    return report


def draw_result(image: np.ndarray, outputs: List[np.ndarray], meta: dict,
                score_thr: float = 0.3, top: int = 5) -> Tuple[np.ndarray, List[str]]:
    """The graph's outputs for one image drawn on it (BGR uint8, at the input size):
    boxes with class and score, a colour mask, or the top classes. Returns the picture
    and the lines of text describing the result."""
    import cv2
    classes = meta.get('classes') or []
    name = lambda i: classes[i] if i < len(classes) else str(i)  # noqa: E731
    canvas = np.ascontiguousarray(image[0].transpose(1, 2, 0)).clip(0, 255).astype(np.uint8)
    lines = []
    if meta['task'] == 'detection':
        boxes, scores, labels = postprocess_detections(outputs[0][0], outputs[1][0], meta)
        for box, score, label in zip(boxes, scores, labels):
            if score < score_thr:
                continue
            x1, y1, x2, y2 = box.round().astype(int)
            colour = tuple(int(c) for c in PALETTE[label % len(PALETTE)])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(canvas, f'{name(label)} {score:.2f}', (x1, max(y1 - 3, 10)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
            lines.append(f'{name(label)} {score:.3f} box {box.round(1).tolist()}')
    elif meta['task'] == 'segmentation':
        labels = outputs[1][0]
        canvas = (0.5 * canvas + 0.5 * PALETTE[labels % len(PALETTE)]).astype(np.uint8)
        ids, counts = np.unique(labels, return_counts=True)
        lines = [f'{name(i)}: {100 * c / labels.size:.1f}% of pixels'
                 for i, c in sorted(zip(ids, counts), key=lambda p: -p[1])]
    else:
        logits = outputs[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        lines = [f'{name(i)}: {probs[i]:.3f}' for i in np.argsort(-probs)[:top]]
        for row, line in enumerate(lines):
            cv2.putText(canvas, line, (4, 14 + 14 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1)
    return canvas, lines


PALETTE = np.random.RandomState(3).randint(64, 256, (256, 3)).astype(np.uint8)
