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
random weights left in place; the inferencer's own load of the file then goes through the
same safe loader (``fixes.safe_loading``, registered for it), whatever the config imports.
Predictions that hold NaN or inf are refused, not shown. ``deploy=True`` fuses the
inferencer's model in memory (``reparameterize_model``) before the first photo.
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
from ..models.reparam import reparameterize_model
from .predict import PredictError, read_photo
from .reparameterize import codebase_of, deploy_config, load_config, load_model

# codebase -> (module, inferencer class, name of its checkpoint argument)
INFERENCERS = dict(mmdet=('mmdet.apis', 'DetInferencer', 'weights'),
                   mmseg=('mmseg.apis', 'MMSegInferencer', 'weights'),
                   mmpretrain=('mmpretrain.apis', 'ImageClassificationInferencer',
                               'pretrained'))


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


@dataclass
class PhotoResult:
    path: str
    size: Tuple[int, int]      # the photo's width, height
    prediction: object         # the inferencer's data sample (DetDataSample, ...)
    picture: np.ndarray        # the visualizer's drawing, RGB uint8, the photo's size
    lines: List[str]           # the prediction in words (what image_demo prints)


class PhotoDemo:
    """The codebase's inferencer for ``config`` with ``checkpoint`` (train or deploy
    form), on ``device``; ``deploy`` fuses it first. ``score_thr``: detections reported
    and drawn; ``top``: classes reported (classification, segmentation)."""

    def __init__(self, config, checkpoint: str, deploy: bool = False, device: str = 'cpu',
                 score_thr: float = 0.3, top: int = 5):
        cfg = load_config(config)
        self.codebase = codebase_of(cfg)
        _, cfg, ckpt = load_model(cfg, checkpoint)  # strict: fits, or a one-line error
        # the inferencer loads it again, through mmengine: by the same loader
        from ..fixes.safe_loading import register_safe_checkpoint_loader
        register_safe_checkpoint_loader()
        if is_fused(state_dict_of(ckpt)):
            cfg = deploy_config(cfg)
        module, name, weights = INFERENCERS[self.codebase]
        inferencer_class = getattr(importlib.import_module(module), name)
        with warnings.catch_warnings():  # their advice on class names we set right below
            warnings.filterwarnings('ignore', message='.*dataset_meta or class names')
            self.inferencer = inferencer_class(cfg, **{weights: os.fspath(checkpoint)},
                                               device=device)
        self.inferencer.show_progress = False
        if deploy:
            reparameterize_model(self.inferencer.model)
        self.score_thr, self.top = score_thr, top

    @property
    def classes(self) -> Sequence[str]:
        """Class names as the inferencer shows them (the checkpoint's ``dataset_meta``,
        else the codebase's default)."""
        if self.codebase == 'mmpretrain':
            return self.inferencer.classes or ()
        return (self.inferencer.model.dataset_meta or {}).get('classes') or ()

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
                raise PredictError(f'The prediction for {path!r} holds NaN or inf ({bad}): '
                                   f'the model\'s weights or the photo give values out of '
                                   f'float range. No result is shown.')
        pictures = self._draw(paths, samples)
        return [PhotoResult(path, tuple(sample.metainfo['ori_shape'][1::-1]), sample,
                            picture, self.describe(sample))
                for path, sample, picture in zip(paths, samples, pictures)]

    def _draw(self, paths: List[str], samples: list) -> List[np.ndarray]:
        if self.codebase == 'mmdet':
            return self.inferencer.visualize(paths, samples, return_vis=True,
                                             pred_score_thr=self.score_thr)
        if self.codebase == 'mmseg':
            return self.inferencer.visualize(paths, samples, return_vis=True)
        import mmcv
        from mmpretrain.visualization import UniversalVisualizer
        visualizer = self.inferencer.visualizer or UniversalVisualizer()
        return [visualizer.visualize_cls(mmcv.imread(path)[..., ::-1], sample,
                                         classes=self.classes or None, draw_gt=False)
                for path, sample in zip(paths, samples)]

    def describe(self, sample) -> List[str]:
        """The prediction in words: detections above ``score_thr`` (class, score, box
        x1, y1, x2, y2 in photo pixels), the ``top`` classes by share of pixels, or the
        ``top`` classes by score."""
        if self.codebase == 'mmdet':
            found = sample.pred_instances
            keep = found.scores >= self.score_thr
            return [f'{self.class_name(int(label))} {float(score):.3f} box '
                    f'[{", ".join(f"{v:.1f}" for v in box.tolist())}]'
                    for box, score, label in zip(found.bboxes[keep], found.scores[keep],
                                                 found.labels[keep])]
        if self.codebase == 'mmseg':
            labels = sample.pred_sem_seg.data[0].cpu().numpy()
            ids, counts = np.unique(labels, return_counts=True)
            order = np.argsort(-counts, kind='stable')[:self.top]
            return [f'{self.class_name(int(ids[i]))} {100 * counts[i] / labels.size:.1f}% '
                    f'of pixels' for i in order]
        scores = sample.pred_score.cpu().numpy()
        order = np.argsort(-scores, kind='stable')[:self.top]
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
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and \
                not torch.isfinite(value).all():
            return prefix + name
    return None


def picture_paths(photos: Sequence[str], out_dir: str) -> Dict[str, str]:
    """photo -> where its picture goes: ``out_dir/<photo name>.png``, checked before any
    work (checkpoints.paths.plan_outputs: no photo overwritten, no two pictures on one
    path)."""
    outputs = {f'picture of {photo}': os.path.join(
        out_dir, os.path.splitext(os.path.basename(photo))[0] + '.png') for photo in photos}
    plan_outputs(inputs={f'photo {photo}': photo for photo in photos}, outputs=outputs)
    return {photo: outputs[f'picture of {photo}'] for photo in photos}


def write_picture(picture: np.ndarray, path: str):
    """An RGB picture as a PNG file, atomically."""
    import cv2
    ok, data = cv2.imencode('.png', np.ascontiguousarray(picture[..., ::-1]))
    if not ok:
        raise ValueError(f'Cannot encode the picture for {path!r} as PNG.')
    with atomic_file(path) as f:
        f.write(data.tobytes())


def run_demo(config, checkpoint: str, photos: Sequence[str], out_dir: Optional[str] = None,
             deploy: bool = False, device: str = 'cpu', score_thr: float = 0.3
             ) -> List[PhotoResult]:
    """``PhotoDemo`` on ``photos``; with ``out_dir``, each picture written there as
    ``<photo name>.png`` (paths checked before the model is built)."""
    photos = [check_photo(photo) for photo in photos]
    targets = picture_paths(photos, out_dir) if out_dir is not None else {}
    demo = PhotoDemo(config, checkpoint, deploy=deploy, device=device, score_thr=score_thr)
    results = demo.predict(photos)
    for result in results:
        if result.path in targets:
            write_picture(result.picture, targets[result.path])
    return results
