"""What an exported graph's users need besides the graph, from the config and the
checkpoint: the class names (``dataset_meta``: the one rule for them, also followed by
predict_photos for the codebases' inferencers) and the config's
test-pipeline resizing as steps tools/onnx_infer.py repeats on a photo
(``predict.preprocess``). tools/export_onnx.py stores them in the ONNX metadata.
"""

import numbers
from typing import List, Optional, Tuple

import torch.nn as nn

from ..loading.config import codebase_of, registry_of, task_of
from .photos import pad_size


def num_classes_of(model: nn.Module) -> int:
    head = {'detection': 'bbox_head', 'segmentation': 'decode_head', 'classification': 'head'}[
        task_of(model)
    ]
    return int(getattr(model, head).num_classes)


def _test_dataset_cfg(cfg) -> dict:
    dataset = (cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}).get('dataset')
    while (
        isinstance(dataset, dict)
        and 'pipeline' not in dataset
        and isinstance(dataset.get('dataset'), dict)
    ):  # a wrapper (RepeatDataset, ...)
        dataset = dataset['dataset']
    return dataset or {}


def dataset_meta(cfg, checkpoint: dict, model: nn.Module) -> Tuple[dict, str]:
    """(dataset meta, where it came from): the one rule every tool follows for class
    names, as mmengine's Runner records them. The first source that lists class names:
    the checkpoint's ``meta.dataset_meta`` (``meta.CLASSES`` of older files), else the
    config's test dataset ``metainfo``, else its dataset type's ``METAINFO``. The meta is
    ``classes`` (strings) and, when that source has one for every class, ``palette``.
    Names whose count is not the model's number of classes are not used: ({}, why)."""
    meta = checkpoint.get('meta') or {}
    recorded = meta.get('dataset_meta') or {}
    if not recorded.get('classes'):
        recorded = dict(classes=meta.get('CLASSES'))
    dataset = _test_dataset_cfg(cfg)
    candidates = [
        (recorded, "the checkpoint's meta"),
        (dataset.get('metainfo') or {}, "the config's test dataset metainfo"),
    ]
    if dataset.get('type'):
        dataset_type = registry_of(codebase_of(cfg), 'DATASETS').get(dataset['type'])
        candidates.append((getattr(dataset_type, 'METAINFO', {}), f'{dataset["type"]}.METAINFO'))
    count = num_classes_of(model)
    for info, source in candidates:
        names = info.get('classes')
        if names:
            if len(names) != count:
                return {}, (
                    f'{source} lists {len(names)} class names but the model predicts '
                    f'{count} classes: names left out'
                )
            found = dict(classes=[str(n) for n in names])
            palette = info.get('palette')
            if palette is not None and len(palette) == count:
                found['palette'] = [tuple(colour) for colour in palette]
            return found, source
    return {}, 'no class names in the checkpoint or the config'


def class_names(cfg, checkpoint: dict, model: nn.Module) -> Tuple[List[str], str]:
    """(class names, where they came from) by the rule of ``dataset_meta``: ([], why)
    when there are none for this model."""
    meta, source = dataset_meta(cfg, checkpoint, model)
    return meta.get('classes', []), source


# Test-pipeline transforms that do not change the image (loading as cv2 does, packing).
_PASSIVE = (
    'LoadImageFromFile',
    'InferencerLoader',
    'LoadAnnotations',
    'PackDetInputs',
    'PackSegInputs',
    'PackInputs',
    'PackClsInputs',
)


def _pair(value) -> List[int]:
    return (
        [int(value), int(value)] if isinstance(value, numbers.Number) else [int(v) for v in value]
    )


def _pad_step(transform: dict) -> dict:
    """mmcv / mmdet ``Pad`` (constant padding at the bottom and right, e.g. RTMDet's
    letterbox): its target size (w, h), size_divisor, pad_to_square and image pad value."""
    pad_val = transform.get('pad_val', dict(img=0))
    pad_val = pad_val.get('img', 0) if isinstance(pad_val, dict) else pad_val
    size = transform.get('size')
    return dict(
        op='pad',
        size=None if size is None else _pair(size),
        size_divisor=transform.get('size_divisor'),
        pad_to_square=bool(transform.get('pad_to_square', False)),
        pad_val=[int(v) for v in pad_val] if isinstance(pad_val, (list, tuple)) else int(pad_val),
    )


def preprocess_steps(cfg) -> Tuple[Optional[List[dict]], str]:
    """The config's test pipeline as steps tools/onnx_infer.py repeats on a photo
    (``predict.preprocess``): ``resize`` (mmcv / mmdet / mmseg ``Resize``: size (w, h),
    keep_ratio), ``resize_edge`` (mmpretrain ``ResizeEdge``), ``center_crop`` (``CenterCrop``
    without padding), each with mmcv's interpolation and backend, and ``pad`` (``Pad`` with
    constant padding, see ``_pad_step``). Returns (steps, '') or,
    for a pipeline with anything else, (None, what is not repeated)."""
    steps = []
    for transform in _test_dataset_cfg(cfg).get('pipeline') or []:
        name = str(transform.get('type', '')).split('.')[-1]
        options = dict(
            interpolation=transform.get('interpolation', 'bilinear'),
            backend=transform.get('backend', 'cv2'),
        )
        if name in ('LoadImageFromFile', 'InferencerLoader') and (
            transform.get('color_type', 'color') != 'color'
            or transform.get('imdecode_backend', 'cv2') != 'cv2'
        ):
            return None, f'{name} with {transform}'
        if name in _PASSIVE:
            continue
        if name == 'Resize' and transform.get('scale') is not None:
            steps.append(
                dict(
                    op='resize',
                    size=_pair(transform['scale']),
                    keep_ratio=bool(transform.get('keep_ratio', False)),
                    **options,
                )
            )
        elif name == 'ResizeEdge':
            steps.append(
                dict(
                    op='resize_edge',
                    scale=int(transform['scale']),
                    edge=transform.get('edge', 'short'),
                    **options,
                )
            )
        elif name == 'CenterCrop' and not transform.get('auto_pad', False):
            steps.append(dict(op='center_crop', size=_pair(transform['crop_size'])))
        elif (
            name == 'Pad'
            and transform.get('padding_mode', 'constant') == 'constant'
            and codebase_of(cfg) == 'mmdet'
        ):  # boxes ignore it; label maps would not
            steps.append(_pad_step(transform))
        else:
            return None, f"the test pipeline's {name}"
    return steps, ''


def fixed_input_shape(steps: Optional[List[dict]]) -> Optional[Tuple[int, int]]:
    """(H, W) every photo has after ``steps``, when it is fixed, else None: a resize
    without keep_ratio or a crop sets it, and so does a pad to a fixed size of what a
    keep_ratio resize to a square within it gives (the letterbox), or a pad to a
    multiple of a fixed shape."""
    shape = None
    bound = None  # (h, w) no photo exceeds after a keep_ratio resize
    for step in steps or []:
        if step['op'] == 'center_crop' or (step['op'] == 'resize' and not step['keep_ratio']):
            shape = bound = (step['size'][1], step['size'][0])
        elif step['op'] == 'resize' and step['keep_ratio']:
            shape, bound = None, (max(step['size']),) * 2  # the long side fits max(size)
        elif step['op'] == 'pad' and not step['pad_to_square']:
            if step['size_divisor']:
                shape = bound = None if shape is None else pad_size(step, shape[1], shape[0])[::-1]
            elif step['size'] is not None:
                size = (step['size'][1], step['size'][0])
                fits = bound is not None and bound[0] <= size[0] and bound[1] <= size[1]
                shape = bound = size if fits else None
        else:
            shape = bound = None
    return shape


def export_metadata(cfg, checkpoint: dict, model: nn.Module, config_path: str = '') -> dict:
    """What tools/onnx_infer.py needs besides the graph: class names, the test pipeline's
    preprocessing (None when it cannot be repeated), the config path; ``notes`` says what
    is missing and why."""
    classes, source = class_names(cfg, checkpoint, model)
    steps, unsupported = preprocess_steps(cfg)
    notes = [] if classes else [source]
    if steps is None:
        notes.append(
            f'{unsupported} is not repeated by onnx_infer: photos are resized to the graph input'
        )
    return dict(
        classes=classes,
        classes_source=source if classes else '',
        preprocess=steps,
        config=config_path,
        notes=notes,
    )
