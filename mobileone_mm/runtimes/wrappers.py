"""The fused model of each task as one exportable module, shared by every runtime.

Every wrapper takes what ``cv2.imread`` gives, resized to the export shape: float32
NCHW, BGR, 0..255. The model's own data-preprocessor normalisation (mean, std, BGR->RGB)
is part of the graph. Outputs:

* classifier: ``logits`` (N, classes)
* segmentor:  ``logits`` (N, classes, H, W) at input resolution, ``labels`` (N, H, W)
* dense detector (SSDLite, RetinaNet, RTMDet): ``boxes`` (N, priors, 4) decoded in input
  pixels, and ``scores`` (N, priors, classes): sigmoid, or softmax without background
  (SSD). Score threshold, per-level top-k and class-wise NMS stay outside the graph, in
  ``predict.detections.postprocess_detections`` (numpy): their output size depends on the
  data, which ONNX's NonMaxSuppression handles only in a form onnxruntime runs slowly and
  that differs from mmcv's NMS in tie-breaking; a 40-line numpy copy of mmdet's test-time
  steps keeps the detections identical. Their settings travel in the artefact's metadata.
"""

import numbers
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loading.config import ExportError, task_of
from ..machine import check_memory, input_memory
from ..models.reparam import reparameterize_model


class Normalize(nn.Module):
    """A data preprocessor's normalisation (mmdet / mmseg / mmpretrain) as graph ops."""

    def __init__(self, preprocessor):
        super().__init__()
        swap = any(
            getattr(preprocessor, name, False)
            for name in ('_channel_conversion', 'channel_conversion', 'to_rgb')
        )
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
        self.input_shape = tuple(input_shape)

    def forward(self, img):
        return self.model(self.normalize(img), mode='tensor')


class SegmentorForExport(nn.Module):
    output_names = ['logits', 'labels']

    def __init__(self, model, input_shape):
        super().__init__()
        self.model, self.normalize = model, Normalize(model.data_preprocessor)
        self.input_shape = tuple(input_shape)

    def forward(self, img):
        x = self.normalize(img)
        logits = F.interpolate(
            self.model.decode_head(self.model.extract_feat(x)),
            size=img.shape[2:],
            mode='bilinear',
            align_corners=self.model.align_corners,
        )
        return logits, logits.argmax(1)


class DenseDetectorForExport(nn.Module):
    """Backbone, neck and dense head, then per-prior scores and decoded boxes, for a fixed
    input shape (the priors are constants of the graph): what mmdet's
    ``BaseDenseHead._predict_by_feat_single`` computes before its score threshold, top-k
    and NMS. Heads: see ``check_dense_head``."""

    output_names = ['boxes', 'scores']

    def __init__(self, model, input_shape):
        super().__init__()
        self.model, self.normalize = model, Normalize(model.data_preprocessor)
        self.input_shape = tuple(input_shape)
        with torch.no_grad():
            cls_scores = model._forward(torch.zeros(1, 3, *input_shape))[0]
        head = model.bbox_head
        priors = head.prior_generator.grid_priors([c.shape[2:] for c in cls_scores], device='cpu')
        self.level_sizes = [len(p) for p in priors]
        self.register_buffer('priors', torch.cat(priors))  # anchors (x1 y1 x2 y2) or points
        height, width = self.input_shape
        self.register_buffer(
            'max_xyxy', torch.tensor([width, height, width, height], dtype=torch.float32)
        )

    def forward(self, img):
        cls_scores, bbox_preds = self.model._forward(self.normalize(img))
        n = img.shape[0]
        head = self.model.bbox_head
        logits = torch.cat(
            [c.permute(0, 2, 3, 1).reshape(n, -1, head.cls_out_channels) for c in cls_scores], 1
        )
        preds = torch.cat([b.permute(0, 2, 3, 1).reshape(n, -1, 4) for b in bbox_preds], 1)
        scores = (
            logits.sigmoid() if head.use_sigmoid_cls else logits.softmax(-1)[..., :-1]
        )  # background last
        return self.decode(preds), scores

    def decode(self, preds):
        """Boxes (N, priors, 4) in input pixels, as the head's bbox_coder.decode."""
        coder = self.model.bbox_head.bbox_coder
        if self.priors.shape[1] == 2:  # DistancePointBBoxCoder: distances to the 4 sides
            boxes = torch.cat([self.priors - preds[..., :2], self.priors + preds[..., 2:]], -1)
            # distance2bbox clamps to the image (its ONNX variant imports a module
            # mmdet 3 no longer has)
            return (
                torch.min(boxes.clamp(min=0), self.max_xyxy.to(boxes))
                if coder.clip_border
                else boxes
            )
        # mmdet's decode() switches to its deprecated, broken ONNX variant while
        # exporting; delta2bbox is the function it uses otherwise.
        from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox

        n = preds.shape[0]
        boxes = delta2bbox(
            self.priors.repeat(n, 1),
            preds.reshape(-1, 4),
            coder.means,
            coder.stds,
            self.input_shape,
            clip_border=coder.clip_border,
            add_ctr_clamp=coder.add_ctr_clamp,
            ctr_clamp=coder.ctr_clamp,
        )
        return boxes.reshape(n, -1, 4)


def check_dense_head(model: nn.Module):
    """ExportError (one line: what, and what to do) unless ``model``'s test-time path is one
    ``DenseDetectorForExport`` and ``postprocess_detections`` repeat: a single-stage
    detector whose head post-processes with mmdet's ``BaseDenseHead`` steps unchanged,
    has no score factors (the centerness of FCOS or ATSS), and decodes with
    ``DeltaXYWHBBoxCoder`` (anchors: SSD, RetinaNet) or ``DistancePointBBoxCoder``
    (points: RTMDet)."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder, DistancePointBBoxCoder

    head = getattr(model, 'bbox_head', None)
    name = type(head).__name__
    if not isinstance(head, BaseDenseHead) or not hasattr(head, 'prior_generator'):
        problem = f'{type(model).__name__} has no dense prior-based bbox_head'
    elif any(
        getattr(type(head), step) is not getattr(BaseDenseHead, step)
        for step in ('predict_by_feat', '_predict_by_feat_single', '_bbox_post_process')
    ):
        problem = f'{name} post-processes its predictions its own way'
    elif not isinstance(head.bbox_coder, (DeltaXYWHBBoxCoder, DistancePointBBoxCoder)):
        problem = f'{name} decodes boxes with {type(head.bbox_coder).__name__}'
    elif getattr(head.loss_cls, 'custom_cls_channels', False):
        problem = f'{name} scores with custom class channels'
    else:
        with torch.no_grad():
            outputs = model.eval()._forward(torch.zeros(1, 3, 64, 64))
        if len(outputs) == 2:
            return
        problem = f'{name} has score factors (e.g. centerness)'
    raise ExportError(
        f'Cannot export this detector: {problem}. Export covers single-stage '
        f"detectors post-processed as mmdet's BaseDenseHead does (SSDLite, "
        f'RetinaNet, RTMDet); use mmdeploy for others.'
    )


WRAPPERS = dict(
    classification=ClassifierForExport,
    segmentation=SegmentorForExport,
    detection=DenseDetectorForExport,
)


def check_input_shape(input_shape) -> Tuple[int, int]:
    """(H, W) as two whole numbers >= 1, else ValueError naming the value."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in shape
    ):
        raise ValueError(
            f'The input shape must be two whole numbers (height, width) of at '
            f'least 1, e.g. (320, 320); got {input_shape!r}.'
        )
    return int(shape[0]), int(shape[1])


def wrap_for_export(model: nn.Module, input_shape: Sequence[int]) -> Tuple[nn.Module, torch.Tensor]:
    """(the export wrapper of ``model`` fused in place, in eval mode; a zero example
    (1, 3, H, W)): what every runtime exports. ExportError for a model no wrapper covers,
    ValueError for a bad shape."""
    input_shape = check_input_shape(input_shape)
    task = task_of(model)
    check_memory(
        input_memory(model, input_shape),
        f'An input of {input_shape[0]}x{input_shape[1]} pixels',
        'use a smaller input shape (--shape H W)',
    )
    if task == 'detection':
        check_dense_head(model)
    model = reparameterize_model(model.eval())
    wrapper = WRAPPERS[task](model, input_shape).eval()
    return wrapper, torch.zeros(1, 3, *input_shape)


def export_metadata_of(
    wrapper: nn.Module, dynamic: bool = False, metadata: Dict[str, object] = None
) -> dict:
    """What an exported artefact carries besides the network, the same for every runtime:
    task, input shape, ``metadata`` (``metadata.export_metadata``: class names, test
    pipeline, config), and the task's post-process settings (segmentation: the resize's
    align_corners; detection: the levels' prior counts and mmdet's test_cfg)."""
    task = next(name for name, cls in WRAPPERS.items() if isinstance(wrapper, cls))
    model = wrapper.model
    meta = dict(
        task=task, input_shape=list(wrapper.input_shape), dynamic=bool(dynamic), **(metadata or {})
    )
    if task == 'segmentation':
        meta['align_corners'] = bool(model.align_corners)
    if task == 'detection':
        test_cfg = model.bbox_head.test_cfg
        meta.update(
            level_sizes=wrapper.level_sizes,
            score_thr=test_cfg.get('score_thr', 0),
            nms_pre=test_cfg.get('nms_pre', -1),
            iou_threshold=test_cfg['nms']['iou_threshold'],
            min_bbox_size=test_cfg.get('min_bbox_size', -1),
            max_per_img=test_cfg.get('max_per_img', 100),
        )
    return meta


def count_conv_calls(module: nn.Module, example: torch.Tensor) -> int:
    """Convolutions one forward pass runs (an auxiliary head, unused, does not count)."""
    calls = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        module(example)
    for handle in handles:
        handle.remove()
    return len(calls)
