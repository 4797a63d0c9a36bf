"""SSDLite-MobileOne: the COCO configs with real mmdet, the SSD head fix, the tiny pipeline
through mmdet's own train / test scripts (the ones `mim train` / `mim test` run)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from apple_layout import to_apple  # tests/ on the path: conftest.py
from helpers import REPO
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mobileone_mm import MobileOne, convert_state_dict
from mobileone_mm.checkpoints.formats import MMPRETRAIN_URLS, backbone_state_dict
from mobileone_mm.devkit.tiny_data import make_tiny_coco

CONFIGS = REPO / 'configs' / 'detection'
ARCHS = ['s0', 's1', 's2', 's3', 's4']
TINY_CONFIG = CONFIGS / 'ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py'


def coco_config(arch):
    return Config.fromfile(str(CONFIGS / f'ssdlite_mobileone-{arch}_8xb24-600e_coco.py'))


def build(model_cfg):
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    return MODELS.build(model_cfg)


def random_batch(model, num_classes, training):
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(
        batch_size=2,
        image_shapes=[(3, 160, 128), (3, 128, 160)],
        num_items=[3, 1],
        num_classes=num_classes,
    )
    return model.data_preprocessor(packed, training=training)


@pytest.mark.parametrize('arch', ARCHS)
def test_coco_config_builds_trains_and_predicts(arch):
    cfg = coco_config(arch)
    assert cfg.model.backbone.arch == arch
    assert cfg.model.backbone.init_cfg.checkpoint == MMPRETRAIN_URLS[arch]
    cfg.model.backbone.init_cfg = None  # nothing can be downloaded here
    model = build(cfg.model)
    assert isinstance(model.backbone, MobileOne)
    model.init_weights()
    losses = model(**random_batch(model, 80, training=True), mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox'}
    total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        results = model(**random_batch(model, 80, training=False), mode='predict')
    assert len(results) == 2
    for result in results:
        instances = result.pred_instances
        assert instances.bboxes.shape[1] == 4 and len(instances.scores) == len(instances.labels)
        assert len(instances) <= cfg.model.test_cfg.max_per_img


def test_mmdet_ssd_head_cannot_predict_and_ours_can():
    """Guards the reason for mobileone_mm.SSDHead: drop it once mmdet fixes its own."""
    cfg = coco_config('s0')
    cfg.model.backbone.init_cfg = None
    ours = build(cfg.model).eval()
    cfg.model.bbox_head.type = 'SSDHead'
    upstream = build(cfg.model).eval()
    upstream.load_state_dict(ours.state_dict())
    batch = random_batch(ours, 80, training=False)
    with torch.no_grad():
        with pytest.raises(AttributeError, match='loss_cls'):
            upstream(**batch, mode='predict')
        # same weights, same raw outputs: the fix changes nothing but the crash
        for a, b in zip(
            ours(batch['inputs'], mode='tensor'), upstream(batch['inputs'], mode='tensor')
        ):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert len(ours(**batch, mode='predict')) == 2


@pytest.mark.slow
@pytest.mark.parametrize('arch', ARCHS)
def test_config_backbone_loads_every_format(arch, tmp_path, randomize_bn):
    """The config's own backbone (init_cfg Pretrained, prefix 'backbone.') reads mmpretrain,
    Apple and timm checkpoints of its arch."""
    import timm
    from mmdet.registry import MODELS
    from safetensors.torch import save_file

    peer = randomize_bn(timm.create_model(f'mobileone_{arch}'))
    expected = backbone_state_dict(convert_state_dict(peer.state_dict())[0])
    classifier = {f'backbone.{k}': v for k, v in expected.items()}
    files = {
        'timm.safetensors': None,
        'timm.pth': peer.state_dict(),
        'mmpretrain.pth': dict(state_dict=classifier, meta=dict()),
        'apple_unfused.pth.tar': to_apple(classifier),
    }
    save_file(peer.state_dict(), str(tmp_path / 'timm.safetensors'))
    for name, checkpoint in files.items():
        if checkpoint is not None:
            torch.save(checkpoint, tmp_path / name)
    backbone_cfg = coco_config(arch).model.backbone
    init_default_scope('mmdet')
    for name in files:
        backbone_cfg.init_cfg.checkpoint = str(tmp_path / name)
        if name.startswith('timm'):  # timm's keys carry no 'backbone.' prefix
            backbone_cfg.init_cfg.pop('prefix', None)
        backbone = MODELS.build(backbone_cfg)
        backbone.init_weights()
        state = backbone.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items()), name


def run_mmdet_tool(tool, *args, cwd):
    """mmdet's own tools/{train,test}.py, the scripts `mim train` / `mim test` run."""
    import mmdet

    script = Path(mmdet.__file__).parent / '.mim' / 'tools' / f'{tool}.py'
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_tiny_pipeline_train_resume_test(tmp_path):
    """Tiny data into tmp/data/tiny_coco (the config's relative data root), one epoch,
    resume into a second, then test the last checkpoint: COCO bbox metrics come out."""
    make_tiny_coco(tmp_path / 'data' / 'tiny_coco', num_train=8, num_val=4)
    work_dir = tmp_path / 'work_dir'
    short = ['--cfg-options', 'train_cfg.val_interval=1', 'train_dataloader.batch_size=4']
    run_mmdet_tool(
        'train', TINY_CONFIG, '--work-dir', work_dir, *short, 'train_cfg.max_epochs=1', cwd=tmp_path
    )
    log = run_mmdet_tool(
        'train',
        TINY_CONFIG,
        '--work-dir',
        work_dir,
        '--resume',
        *short,
        'train_cfg.max_epochs=2',
        cwd=tmp_path,
    )
    assert 'resumed epoch: 1' in log
    assert (work_dir / 'epoch_2.pth').exists()
    log = run_mmdet_tool(
        'test', TINY_CONFIG, work_dir / 'epoch_2.pth', '--work-dir', work_dir, *short, cwd=tmp_path
    )
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s'):
        assert re.search(rf'coco/{key}: -?\d', log), key
