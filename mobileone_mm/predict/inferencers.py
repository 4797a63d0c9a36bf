"""A trained model on photos through its codebase's own inferencer and visualizer: mmdet's
``DetInferencer``, mmseg's ``MMSegInferencer``, mmpretrain's
``ImageClassificationInferencer``. Boxes, masks and labels come in the photo's frame and
the pictures at the photo's size, as those inferencers give them. Used by
tools/image_demo.py.

    demo = PhotoDemo('configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
                     'work_dirs/tiny/best_coco_bbox_mAP_epoch_16.pth', deploy=True)
    for result in demo.predict(['photo.jpg']):
        print(result.lines)        # 'square 0.912 box [12.3, 45.6, 78.9, 101.2]', ...
        result.picture             # RGB, the photo's size, boxes drawn by mmdet

The checkpoint is first loaded strictly into the form of the config it fits (train form,
or the deploy form for a fused checkpoint; reparameterize.load_model), so a checkpoint
of another config is a one-line error instead of the inferencers' non-strict load with
random weights left in place: the inferencer is built without weights and given the ones
that load passed, so it never reads the file itself. Predictions that hold NaN or inf are
refused, not shown. ``deploy=True`` fuses the inferencer's model in memory
(``reparameterize_model``) before the first photo. The class names the inferencer's model
and visualizer get follow the one rule of ``metadata.dataset_meta`` (checkpoint meta,
else the config's metainfo, else the dataset type's), as the ONNX path's do, instead of
the inferencers' own fallback (COCO names for any detector without names in its
checkpoint).
"""

import contextlib
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoints.formats import is_fused
from ..checkpoints.io import atomic_file, state_dict_of
from ..checkpoints.paths import plan_outputs
from ..loading.checkpoint import load_model
from ..loading.config import codebase_of, deploy_config, load_config
from ..machine import check_device
from ..models.reparam import reparameterize_model
from .metadata import dataset_meta, num_classes_of
from .photos import PredictError, read_photo
from .prediction import encode_picture

# codebase -> (module, inferencer class, its checkpoint argument, the value for none)
INFERENCERS = dict(
    mmdet=('mmdet.apis', 'DetInferencer', 'weights', None),
    mmseg=('mmseg.apis', 'MMSegInferencer', 'weights', None),
    mmpretrain=('mmpretrain.apis', 'ImageClassificationInferencer', 'pretrained', False),
)


@contextlib.contextmanager
def _progress_bar_off(codebase: str):
    """mmpretrain's inferencer ignores ``show_progress``: its rich progress bar follows a
    module flag, and drawn on stdout it interleaves with what we print. Off while it runs,
    restored afterwards."""
    if codebase != 'mmpretrain':
        yield
        return
    from mmpretrain.utils import progress

    previous, progress.disable_progress_bar = progress.disable_progress_bar, True
    try:
        yield
    finally:
        progress.disable_progress_bar = previous


def check_photo(path) -> str:
    """``path`` as a string when it is a picture that decodes in full, as onnx_infer reads
    photos (``predict.read_photo``: missing, empty, non-image and truncated files are
    refused with PathError / PredictError naming them)."""
    read_photo(path)
    return os.fspath(path)


def _seg_palette(count: int) -> List[List[int]]:
    """The colours mmseg gives classes without a palette (``BaseSegDataset``: seed 42)."""
    return np.random.RandomState(42).randint(0, 255, size=(count, 3)).tolist()


@dataclass
class PhotoResult:
    path: str
    size: Tuple[int, int]  # the photo's width, height
    prediction: object  # the inferencer's data sample (DetDataSample, ...)
    picture: np.ndarray  # the visualizer's drawing, RGB uint8, the photo's size
    lines: List[str]  # the prediction in words (what image_demo prints)


class PhotoDemo:
    """The codebase's inferencer for ``config`` with ``checkpoint`` (train or deploy
    form), on ``device``; ``deploy`` fuses it first. ``score_thr``: detections reported
    and drawn; ``top``: classes reported (classification, segmentation)."""

    def __init__(
        self,
        config,
        checkpoint: str,
        deploy: bool = False,
        device: str = 'cpu',
        score_thr: float = 0.3,
        top: int = 5,
    ):
        device = check_device(device)
        cfg = load_config(config)
        self.codebase = codebase_of(cfg)
        model, cfg, ckpt = load_model(cfg, checkpoint)  # strict: fits, or a one-line error
        # the one rule for class names (metadata.dataset_meta), not the inferencers' own
        # fallback (COCO / Cityscapes names for a model without them in its checkpoint)
        meta, source = dataset_meta(cfg, ckpt, model)
        self.classes_source = source if meta else f'none, class numbers shown ({source})'
        if is_fused(state_dict_of(ckpt)):
            cfg = deploy_config(cfg)
        module, name, weights, no_weights = INFERENCERS[self.codebase]
        inferencer_class = getattr(importlib.import_module(module), name)
        with warnings.catch_warnings():  # their advice on weights and class names: both are
            warnings.filterwarnings('ignore', message='.*dataset_meta or class names')  # set
            warnings.filterwarnings('ignore', message='Checkpoint is not loaded')  # right
            warnings.filterwarnings('ignore', message='weights is None')  # below
            self.inferencer = inferencer_class(cfg, **{weights: no_weights}, device=device)
        # the weights load_model checked (strict, finite), not a second read of the file
        self.inferencer.model.load_state_dict(model.state_dict())
        self._set_dataset_meta(meta, num_classes_of(model))
        self.inferencer.show_progress = False
        if deploy:
            reparameterize_model(self.inferencer.model)
        self.score_thr, self.top = score_thr, top

    def _set_dataset_meta(self, meta: dict, num_classes: int):
        """Give the inferencer's model and visualizer ``meta`` (class names by the rule of
        ``metadata.dataset_meta``; none: class numbers are shown)."""
        self.classes = tuple(meta.get('classes', ()))
        if self.codebase == 'mmpretrain':
            self.inferencer.classes = list(self.classes) or None
            self.inferencer.model.dataset_meta = dict(meta)
        elif self.codebase == 'mmdet':
            self.inferencer.model.dataset_meta = dict(meta)
            self.inferencer.visualizer.dataset_meta = dict(meta)
        else:  # mmseg's visualizer needs names and a palette of one colour per class
            classes = list(self.classes) or [str(i) for i in range(num_classes)]
            palette = meta.get('palette') or _seg_palette(len(classes))
            self.inferencer.model.dataset_meta = dict(classes=classes, palette=palette)
            self.inferencer.visualizer.set_dataset_meta(classes, palette)

    def class_name(self, label: int) -> str:
        classes = self.classes
        return str(classes[label]) if 0 <= label < len(classes) else str(label)

    def predict(self, paths: Sequence[str]) -> List[PhotoResult]:
        """Run the inferencer and its visualizer on the photos at ``paths``."""
        paths = [check_photo(path) for path in paths]
        with _progress_bar_off(self.codebase):
            samples = self.inferencer(paths, return_datasamples=True)
        if self.codebase == 'mmdet':
            samples = samples['predictions']
        elif not isinstance(samples, list):  # mmseg returns a lone sample for one photo
            samples = [samples]
        for path, sample in zip(paths, samples):
            bad = nonfinite_field(sample)
            if bad:
                raise PredictError(
                    f'The prediction for {path!r} holds NaN or inf ({bad}): '
                    f"the model's weights or the photo give values out of "
                    f'float range. No result is shown.'
                )
        pictures = self._draw(paths, samples)
        return [
            PhotoResult(
                path,
                tuple(sample.metainfo['ori_shape'][1::-1]),
                sample,
                picture,
                self.describe(sample),
            )
            for path, sample, picture in zip(paths, samples, pictures)
        ]

    def _draw(self, paths: List[str], samples: list) -> List[np.ndarray]:
        if self.codebase == 'mmdet':
            return self.inferencer.visualize(
                paths, samples, return_vis=True, pred_score_thr=self.score_thr
            )
        if self.codebase == 'mmseg':
            return self.inferencer.visualize(paths, samples, return_vis=True)
        import mmcv
        from mmpretrain.visualization import UniversalVisualizer

        visualizer = self.inferencer.visualizer or UniversalVisualizer()
        return [
            visualizer.visualize_cls(
                mmcv.imread(path)[..., ::-1], sample, classes=self.classes or None, draw_gt=False
            )
            for path, sample in zip(paths, samples)
        ]

    def describe(self, sample) -> List[str]:
        """The prediction in words: detections above ``score_thr`` (class, score, box
        x1, y1, x2, y2 in photo pixels), the ``top`` classes by share of pixels, or the
        ``top`` classes by score."""
        if self.codebase == 'mmdet':
            found = sample.pred_instances
            keep = found.scores >= self.score_thr
            return [
                f'{self.class_name(int(label))} {float(score):.3f} box '
                f'[{", ".join(f"{v:.1f}" for v in box.tolist())}]'
                for box, score, label in zip(
                    found.bboxes[keep], found.scores[keep], found.labels[keep]
                )
            ]
        if self.codebase == 'mmseg':
            labels = sample.pred_sem_seg.data[0].cpu().numpy()
            ids, counts = np.unique(labels, return_counts=True)
            order = np.argsort(-counts, kind='stable')[: self.top]
            return [
                f'{self.class_name(int(ids[i]))} {100 * counts[i] / labels.size:.1f}% of pixels'
                for i in order
            ]
        scores = sample.pred_score.cpu().numpy()
        order = np.argsort(-scores, kind='stable')[: self.top]
        return [f'{self.class_name(int(i))} {scores[i]:.3f}' for i in order]


def nonfinite_field(sample, prefix: str = '') -> Optional[str]:
    """The name of the first floating-point field of a data sample (nested ones too:
    ``pred_instances.scores``) that holds NaN or inf, else None."""
    from mmengine.structures import BaseDataElement

    for name, value in sample.items():
        if isinstance(value, BaseDataElement):
            found = nonfinite_field(value, f'{prefix}{name}.')
            if found:
                return found
        elif (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not torch.isfinite(value).all()
        ):
            return prefix + name
    return None


def picture_paths(photos: Sequence[str], out_dir: str) -> Dict[str, str]:
    """photo -> where its picture goes: ``out_dir/<photo name>.png``, checked before any
    work (checkpoints.paths: ``out_dir`` a folder, no photo overwritten, no two pictures on
    one path, no file replaced that our tools did not write)."""
    outputs = {
        f'picture of {photo}': os.path.join(
            out_dir, os.path.splitext(os.path.basename(photo))[0] + '.png'
        )
        for photo in photos
    }
    plan_outputs(
        inputs={f'photo {photo}': photo for photo in photos},
        outputs=outputs,
        folders={'picture folder (--out-dir)': out_dir},
    )
    return {photo: outputs[f'picture of {photo}'] for photo in photos}


def write_picture(picture: np.ndarray, path: str):
    """An RGB picture as a PNG file with our mark (predict.encode_picture), atomically."""
    data = encode_picture(picture[..., ::-1], path)
    with atomic_file(path) as f:
        f.write(data)


def run_demo(
    config,
    checkpoint: str,
    photos: Sequence[str],
    out_dir: Optional[str] = None,
    deploy: bool = False,
    device: str = 'cpu',
    score_thr: float = 0.3,
) -> Tuple[List[PhotoResult], str]:
    """``PhotoDemo`` on ``photos``; with ``out_dir``, each picture written there as
    ``<photo name>.png`` (paths checked before the model is built). Returns the results
    and where the class names came from (``metadata.dataset_meta``)."""
    photos = [check_photo(photo) for photo in photos]
    targets = picture_paths(photos, out_dir) if out_dir is not None else {}
    demo = PhotoDemo(config, checkpoint, deploy=deploy, device=device, score_thr=score_thr)
    results = demo.predict(photos)
    for result in results:
        if result.path in targets:
            write_picture(result.picture, targets[result.path])
    return results, demo.classes_source
