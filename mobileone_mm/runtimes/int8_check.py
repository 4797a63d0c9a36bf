"""The int8 check, for every runtime's int8 artefact: its outputs against the float32
model's on real images, by cosine (every output) and by task agreement (the same top-1
class, label-map pixels, or detections matched by IoU), since int8 cannot pass the
float32 output check by construction.
"""

from typing import List, Optional

import numpy as np

from ..predict.detections import box_iou, postprocess_detections

COSINE_MIN = 0.95


AGREEMENT_MIN = 0.75


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors as vectors, in float64 (1.0 for two zeros)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b / norms)


def detections_found(expected, found, iou: float = 0.5) -> tuple:
    """(how many of the ``expected`` detections (boxes, scores, labels) ``found`` has,
    same label and box IoU >= ``iou``, each found one used once; how many expected)."""
    (ref_boxes, _, ref_labels), (boxes, _, labels) = expected, found
    used = np.zeros(len(boxes), bool)
    hits = 0
    for box, label in zip(ref_boxes, ref_labels):
        if not len(boxes):
            break
        overlap = box_iou(box[None], boxes)[0]
        overlap[(labels != label) | used] = 0
        best = int(overlap.argmax())
        if overlap[best] >= iou:
            used[best] = True
            hits += 1
    return hits, len(ref_boxes)


def agreement(
    task: Optional[str],
    fp32: List[List[np.ndarray]],
    int8: List[List[np.ndarray]],
    meta: Optional[dict] = None,
) -> Optional[float]:
    """The share of decisions int8 makes as float32 does, over all inputs; None when the
    task is unknown ('backbone') or nothing was decided (no detection above threshold).

    ``fp32`` / ``int8``: the outputs per input. Classification: logits (N, classes), top-1
    labels compared. Segmentation: logits (N, classes, H, W) first, pixel labels
    compared. Detection: an exported graph's boxes and scores, post-processed as mmdet
    does (``meta``: the export metadata), detections above ``meta['score_thr']``."""
    if task == 'classification':
        pairs = [(f[0].argmax(-1), q[0].argmax(-1)) for f, q in zip(fp32, int8)]
    elif task == 'segmentation':
        pairs = [(f[0].argmax(1), q[0].argmax(1)) for f, q in zip(fp32, int8)]
    elif task == 'detection' and meta is not None:
        hits = total = 0
        for f, q in zip(fp32, int8):
            for image in range(f[0].shape[0]):
                found = [
                    postprocess_detections(out[0][image], out[1][image], meta) for out in (f, q)
                ]
                h, t = detections_found(*found)
                hits, total = hits + h, total + t
        return hits / total if total else None
    else:
        return None
    equal = sum(int((a == b).sum()) for a, b in pairs)
    return equal / max(sum(a.size for a, _ in pairs), 1)


def judge_int8(
    fp32: List[List[np.ndarray]],
    int8: List[List[np.ndarray]],
    task: Optional[str] = None,
    meta: Optional[dict] = None,
    cosine_min: float = COSINE_MIN,
    agreement_min: float = AGREEMENT_MIN,
) -> dict:
    """The int8 check (module docstring) of ``int8`` against ``fp32`` outputs (per input,
    a list of arrays each; an input is what one run took: an image or a batch). Returns
    ``passed``, ``cosines`` (per float output, the lowest over the inputs: every input
    must be near float32, so inputs unlike the calibration data show), ``cosine`` (the
    lowest of them), ``agreement``
    (see ``agreement``; None when not applicable) and the limits."""
    shapes = lambda outs: [[tuple(np.shape(t)) for t in out] for out in outs]  # noqa: E731
    if shapes(fp32) != shapes(int8):
        return dict(
            passed=False, reason=f'output shapes differ: {shapes(int8)} instead of {shapes(fp32)}'
        )
    floating = [i for i, t in enumerate(fp32[0]) if np.asarray(t).dtype.kind == 'f']
    cosines = [min(cosine(f[i], q[i]) for f, q in zip(fp32, int8)) for i in floating]
    agreed = agreement(task, fp32, int8, meta)
    passed = min(cosines) >= cosine_min and (agreed is None or agreed >= agreement_min)
    return dict(
        passed=bool(passed),
        cosine=min(cosines),
        cosines=cosines,
        agreement=agreed,
        cosine_min=cosine_min,
        agreement_min=agreement_min,
        task=task,
    )


def describe_int8(check: dict, what: str = 'the int8 graph') -> str:
    """A ``judge_int8`` result in one line."""
    if 'reason' in check:
        return f'{what}: {check["reason"]}'
    agreed = (
        ''
        if check['agreement'] is None
        else f', {100 * check["agreement"]:.1f}% of the float32 {check["task"]} decisions '
        f'kept (at least {100 * check["agreement_min"]:g}%)'
    )
    return (
        f'{what}: cosine to float32 {check["cosine"]:.5f} (at least '
        f'{check["cosine_min"]:g}){agreed}'
    )
