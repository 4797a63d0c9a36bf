"""The output check of an exported artefact, for every runtime: the artefact's outputs
on real images against the float64 train form (``fusion.output_check``), in the form the
artefact gives them (detections after mmdet's post-process, compared by IoU).
"""

from typing import List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import CheckFailed
from ..fusion.output_check import Reference
from ..loading.config import ExportError
from ..predict.detections import match_detections, postprocess_detections
from ..predict.prediction import SessionRunner
from .onnx_graphs import load_session
from .wrappers import WRAPPERS, Normalize


class ArtefactCheckFailed(CheckFailed, ExportError):
    """An artefact whose outputs are further from the exact ones than float32 allows."""


def torch_reference(model: nn.Module, task: str, image: torch.Tensor):
    """The model's own inference path (mmdet predict / mmseg encode_decode / mmpretrain
    tensor mode) on an image as the graph takes it, in the form the graph's outputs take
    (detections after mmdet's post-processing)."""
    x = Normalize(model.data_preprocessor)(image)
    shape = tuple(image.shape[2:])
    if task == 'classification':
        return [model(x, mode='tensor')]
    if task == 'segmentation':
        logits = model.encode_decode(x, [dict(img_shape=shape, pad_shape=shape)])
        return [logits, logits.argmax(1)]
    from mmdet.structures import DetDataSample

    sample = DetDataSample(
        metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=(1.0, 1.0))
    )
    result = model.predict(x, [sample], rescale=False)[0].pred_instances
    return [result.bboxes, result.scores, result.labels]


def _float_outputs(module: nn.Module, image: torch.Tensor) -> List[torch.Tensor]:
    return [t for t in pytree.tree_leaves(module(image)) if t.is_floating_point()]


def verify_onnx(
    model: nn.Module, path: str, images: Sequence[np.ndarray], score_thr: float = 0.3
) -> dict:
    """Run an exported graph (a path or the serialized bytes) in onnxruntime and judge it
    as ``verify_runner`` does."""
    return verify_runner(model, SessionRunner(*load_session(path)), images, score_thr)


def verify_runner(
    model: nn.Module, runner, images: Sequence[np.ndarray], score_thr: float = 0.3
) -> dict:
    """Run an exported model (``runner``: a runtime's Runner, mobileone_mm.runtimes, with
    the export ``metadata``) and judge its float outputs (logits; boxes and per-anchor
    scores) by the shared criterion against ``model``, the PyTorch model it was exported
    from: in train form where there is one (then the fusion is judged too), else as
    loaded. ``images``: (1, 3, H, W) float32 BGR 0..255, as the artefact takes them.

    ``passed`` is the criterion's verdict. Also reported, from the same runs: the
    logits' max difference relative to their scale (``logits_rel_diff``), the share of
    equal pixels of the label maps (``label_agreement``), and the detections above
    ``score_thr`` after post-processing, matched to mmdet's own (``detections``,
    ``unmatched``, ``min_box_iou``, ``max_score_diff``).
    """
    meta = runner.metadata
    task = meta['task']
    model = model.eval()
    wrapper = WRAPPERS[task](model, images[0].shape[2:]).eval()
    tensors = [torch.from_numpy(image) for image in images]
    reference = Reference(wrapper, tensors, _float_outputs)
    actual = [[np.asarray(a) for a in runner(image)] for image in images]
    check = reference.judge(
        [[torch.from_numpy(a) for a in out if a.dtype.kind == 'f'] for out in actual]
    )
    report = dict(task=task, images=len(images), **check)
    if task == 'detection':
        matches = []
        for image, out in zip(tensors, actual):
            with torch.no_grad():
                expected = [t.numpy() for t in torch_reference(model, task, image)]
            found = postprocess_detections(out[0][0], out[1][0], meta)
            matches.append(match_detections(found, expected, score_thr))
        report.update(
            detections=sum(m['detections'] for m in matches),
            unmatched=sum(m['unmatched'] for m in matches),
            min_box_iou=min(m['min_box_iou'] for m in matches),
            max_score_diff=max(m['max_score_diff'] for m in matches),
        )
    else:
        report['logits_rel_diff'] = check.get('rel_diff')
    if task == 'segmentation':
        labels = [out.argmax(1) for out in (r[0] for r in reference.float32)]
        report['label_agreement'] = min(
            float((a[1] == e.numpy()).mean()) for a, e in zip(actual, labels)
        )
    return report
