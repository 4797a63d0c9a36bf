"""Random detectors that behave like trained ones on real photos, for the tests that hold
an exported detector to mmdet (tests/test_rtmdet.py, tests/test_detection_parity.py).

    from detectors import small_model
    model, cfg = small_model(config_path, photo_paths, shape=(96, 128))
"""

from pathlib import Path

import cv2
import torch
from mmengine.model import revert_sync_batchnorm
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.predict.photos import preprocess, read_photo
from mobileone_mm.runtimes.wrappers import Normalize


def output_convs(head) -> dict:
    """name -> the convs whose outputs are the head's class logits and box regressions
    (RTMDet, RetinaNet, SSD: the last layer of each level's stack)."""
    for cls, reg in (('rtm_cls', 'rtm_reg'), ('retina_cls', 'retina_reg')):
        if hasattr(head, cls):
            return {
                name: module
                for name, module in head.named_modules()
                if name.split('.')[0] in (cls, reg) and isinstance(module, torch.nn.Conv2d)
            }
    return {
        f'{stack}.{level}': convs[-1]
        for stack in ('cls_convs', 'reg_convs')
        for level, convs in enumerate(getattr(head, stack))
    }


def small_model(config, photos, num_classes=None, shape=(96, 128), steps=None):
    """A random model of the config (a path) in eval mode, and its config, made to behave
    like a trained one on real photos (resized to ``shape``, or through the test
    pipeline's ``steps``, metadata.preprocess_steps): BN statistics from the photos (as
    training sets them; random ones, devkit's randomize_bn, make this deep random model's
    float32 scores 1e-3 off its float64 ones), and the head's output convs scaled on them
    so that class logits spread by 2 around the head's prior (scores over (0, 1), not
    saturated, few ties) and box deltas by 0.5 (RTMDet: box sides of 2 +- 0.5 strides)."""
    cfg = load_config(str(Path(config)))
    cfg.model.backbone.init_cfg = None
    if num_classes:
        cfg.model.bbox_head.num_classes = num_classes
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    model.init_weights()
    model = revert_sync_batchnorm(model)

    def network_input(path):
        photo = read_photo(path)
        return cv2.resize(photo, shape[::-1]) if steps is None else preprocess(photo, steps)[0]

    images = Normalize(model.data_preprocessor)(
        torch.stack(
            [
                torch.from_numpy(network_input(path)).permute(2, 0, 1).float()
                for path in photos.values()
            ]
        )
    )
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # the plain average over the batches seen
    with torch.no_grad():
        model.train()._forward(images)
    outputs = {}
    final = output_convs(model.bbox_head)
    hooks = [
        module.register_forward_hook(
            lambda module, _, out, layer=layer: outputs.setdefault(layer, []).append(
                out - module.bias.view(1, -1, 1, 1)
            )
        )
        for layer, module in final.items()
    ]
    with torch.no_grad():
        model.eval()._forward(images)
        for hook in hooks:
            hook.remove()
        for layer, module in final.items():
            spread = torch.cat([out.flatten() for out in outputs[layer]]).std()
            module.weight.mul_((2.0 if 'cls' in layer else 0.5) / spread)
            if layer.startswith('rtm_reg'):
                module.bias.fill_(2.0)
    return model, cfg
