"""mmdet's test-time detection steps in numpy (score threshold, per-level top-k,
class-wise NMS, boxes per image), and matching two sets of detections by IoU.
"""

from typing import Tuple

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def match_detections(found, expected, score_thr: float) -> dict:
    """Pair each expected detection above ``score_thr`` with the found one of the same
    label that overlaps it most; unmatched counts the pairs that fail or are missing."""
    (boxes, scores, labels), (ref_boxes, ref_scores, ref_labels) = found, expected
    mine, theirs = scores >= score_thr, ref_scores >= score_thr
    result = dict(
        detections=int(theirs.sum()),
        unmatched=abs(int(mine.sum() - theirs.sum())),
        min_box_iou=1.0,
        max_score_diff=0.0,
    )
    iou = box_iou(ref_boxes[theirs], boxes[mine])
    iou[ref_labels[theirs][:, None] != labels[mine][None]] = 0
    for i, j in enumerate(iou.argmax(1) if iou.size else []):
        result['unmatched'] += int(iou[i, j] == 0)
        result['min_box_iou'] = min(result['min_box_iou'], float(iou[i, j]))
        result['max_score_diff'] = max(
            result['max_score_diff'], float(abs(scores[mine][j] - ref_scores[theirs][i]))
        )
    return result


def _nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, block: int = 512
) -> np.ndarray:
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
        overlaps = inter / np.maximum(union, np.finfo(np.float32).eps, out=union) > iou_threshold
        count = len(overlaps)
        within = np.triu(overlaps[:, :count], 1).astype(np.float32)  # better i, worse j
        candidates = ~suppressed[first : first + count]  # not dropped by earlier blocks
        kept = candidates
        while True:
            now = candidates & ~(kept.astype(np.float32) @ within > 0)
            if np.array_equal(now, kept):
                break
            kept = now
        suppressed[first : first + count] = ~kept
        suppressed[first + count :] |= overlaps[kept, count:].any(0)
    return order[~suppressed]


def postprocess_detections(
    boxes: np.ndarray, scores: np.ndarray, meta: dict
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmdet's test-time steps for one image: per level, scores above ``score_thr`` and
    the ``nms_pre`` best (anchor, class) pairs; boxes larger than ``min_bbox_size``;
    class-wise NMS; the ``max_per_img`` best. Returns boxes (K, 4), scores, labels."""
    picked_boxes, picked_scores, picked_labels = [], [], []
    start = 0
    for size in meta['level_sizes']:
        level_scores = scores[start : start + size]
        anchors, labels = np.nonzero(level_scores > meta['score_thr'])
        values = level_scores[anchors, labels]
        order = np.argsort(-values, kind='stable')
        if meta['nms_pre'] > 0:
            order = order[: meta['nms_pre']]
        picked_boxes.append(boxes[start + anchors[order]])
        picked_scores.append(values[order])
        picked_labels.append(labels[order])
        start += size
    boxes, scores, labels = (
        np.concatenate(x) for x in (picked_boxes, picked_scores, picked_labels)
    )
    if meta['min_bbox_size'] >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > meta['min_bbox_size']).all(1)
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    if len(boxes):
        keep = _batched_nms(boxes, scores, labels, meta['iou_threshold'])
        keep = keep[: meta['max_per_img']]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, scores, labels


def _batched_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """mmcv's ``batched_nms``: NMS within each class, on boxes moved apart by class
    (``label x (max coordinate + 1)``, the same float32 rounding as mmcv's), kept in score
    order. Class by class, as mmcv does above 10000 boxes: one pass over all of them would
    be quadratic in their number (RTMDet keeps up to 30000 a level: minutes in numpy)."""
    moved = boxes + labels[:, None].astype(boxes.dtype) * (boxes.max() + 1)
    keep = np.sort(
        np.concatenate(
            [
                members[_nms(moved[members], scores[members], iou_threshold)]
                for members in (np.flatnonzero(labels == label) for label in np.unique(labels))
            ]
        )
    )
    return keep[np.argsort(-scores[keep], kind='stable')]
