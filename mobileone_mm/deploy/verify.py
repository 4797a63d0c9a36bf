"""Checks of an exported graph against the PyTorch model it came from, on the same
images: logits, label maps, detections matched box by box."""
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .export import Normalize, load_session
from .predict import postprocess_detections


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


def torch_reference(model: nn.Module, task: str, image: torch.Tensor):
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
    IoU >= 0.99, score within 1e-4)."""
    session, meta = load_session(path)
    task = meta['task']
    model = model.eval()
    checks = []
    for image in images:
        with torch.no_grad():
            expected = [t.numpy() for t in torch_reference(model, task, torch.from_numpy(image))]
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
    return report
