"""DeepLabV3-MobileOne with the real mmseg: every config builds and trains / predicts, the
output strides, fusion with dilation and SyncBN, and the tiny ADE20K / VOC train / test
runs through mmseg's own tools."""

import copy
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import REPO
from mmengine.config import Config
from mmengine.registry import init_default_scope

CONFIG_DIR = REPO / 'configs' / 'segmentation'
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob('*.py'))
ADE20K_S0 = 'deeplabv3_mobileone-s0-d8_4xb4-160k_ade20k-512x512.py'
TINY_ADE20K = 'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py'
TINY_VOC = 'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-voc12aug-128x128.py'
STRIDES = {8: [2, 2, 1, 1], 16: [2, 2, 2, 1]}  # per output stride, as named '-d8' / '-d16'


def load_config(name: str) -> Config:
    return Config.fromfile(str(CONFIG_DIR / name))  # also runs its custom_imports


def build_segmentor(cfg: Config, size: int = 64):
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.data_preprocessor.size = (size, size)  # pad to the test batch, not 512
    return MODELS.build(model_cfg)  # no init_weights: the ImageNet URL is not reachable


def random_batch(num_classes: int, size: int = 64, batch_size: int = 2) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8))
        sample = SegDataSample(
            metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))
        )
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def run_loss_and_predict(model, num_classes: int):
    batch = random_batch(num_classes)
    model.train()
    losses = model(**model.data_preprocessor(copy.deepcopy(batch), True), mode='loss')
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(batch, False), mode='predict')
    return losses, results


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_runs(name):
    """Each config: MobileOne backbone with ImageNet init, heads fed by matching stages,
    SyncBN, and one training loss and one prediction on a random batch (single process)."""
    from mobileone_mm import MobileOne
    from mobileone_mm.checkpoints.formats import MMPRETRAIN_URLS

    cfg = load_config(name)
    model = build_segmentor(cfg)
    backbone = model.backbone
    assert type(backbone) is MobileOne and backbone.out_indices == [2, 3]
    assert model.decode_head.in_channels == backbone.out_channels[model.decode_head.in_index]
    assert model.auxiliary_head.in_channels == backbone.out_channels[model.auxiliary_head.in_index]
    assert model.decode_head.in_index == 1 and model.auxiliary_head.in_index == 0
    assert f'mobileone-{backbone.arch_name}-d' in name
    assert backbone.strides == STRIDES[int(re.search(r'-d(8|16)_', name)[1])]
    assert model.decode_head.num_classes == (150 if 'ade20k' in name else 21)
    if 'tiny' not in name:
        assert cfg.model.backbone.init_cfg == dict(
            type='Pretrained', checkpoint=MMPRETRAIN_URLS[backbone.arch_name]
        )
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in backbone.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.decode_head.modules())
    num_classes = model.decode_head.num_classes
    losses, results = run_loss_and_predict(model, num_classes)
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    assert all(torch.isfinite(v) for k, v in losses.items() if 'loss' in k)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert len(results) == 2
    assert results[0].pred_sem_seg.data.shape == (1, 64, 64)
    assert results[0].seg_logits.data.shape == (num_classes, 64, 64)


@pytest.mark.parametrize(
    'name, stride',
    [
        (ADE20K_S0, 8),
        ('deeplabv3_mobileone-s4-d8_4xb4-40k_voc12aug-512x512.py', 8),
        ('deeplabv3_mobileone-s4-d16_4xb4-160k_ade20k-512x512.py', 16),
        ('deeplabv3_mobileone-s4-d16_4xb4-40k_voc12aug-512x512.py', 16),
    ],
)
def test_output_stride_and_fusion(name, stride, randomize_bn, rel_error):
    """Stage 3 and 4 features at 1/8 (OS8) or 1/16 (OS16) of the input, and the fused
    backbone (dilated depthwise convs, S0's 4 branches, S4's SE) equals the train form.
    In float64: a random S4 with random BN statistics is so ill-conditioned that float32
    rounding alone moves its stage-3 output by ~1e-3 (train form vs itself in float64)."""
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    backbone = MODELS.build(load_config(name).model.backbone)
    assert backbone.strides == STRIDES[stride]
    randomize_bn(backbone).eval().double()
    x = torch.randn(1, 3, 97, 131, dtype=torch.float64)
    with torch.no_grad():
        expected = backbone(x)
        backbone.switch_to_deploy()
        actual = backbone(x)
    size = (-(-97 // stride), -(-131 // stride))
    assert [tuple(f.shape[2:]) for f in expected] == [size, size]
    for a, e in zip(actual, expected):
        assert rel_error(a, e) < 1e-8


def test_syncbn_segmentor_reparameterizes(randomize_bn, rel_error):
    """A segmentor built with SyncBN (as trained on 4 GPUs) fuses, single-process, with
    the logits unchanged."""
    from mobileone_mm import MobileOneBlock, reparameterize_model

    model = randomize_bn(build_segmentor(load_config(ADE20K_S0))).eval()
    assert isinstance(model.backbone.stage3[0].branch_conv_list[0].norm, torch.nn.SyncBatchNorm)
    x = model.data_preprocessor(random_batch(150), False)['inputs']
    with torch.no_grad():
        expected = model(x, mode='tensor')
        reparameterize_model(model)
        actual = model(x, mode='tensor')
    blocks = [m for m in model.modules() if isinstance(m, MobileOneBlock)]
    assert blocks and all(b.deploy for b in blocks)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.backbone.modules())
    assert rel_error(actual, expected) < 1e-5


def run_mmseg_tool(tool: str, *args, cwd: Path) -> str:
    """Run ``<mmseg>/.mim/tools/<tool>`` (what ``mim train|test mmseg`` runs)."""
    import mmseg

    script = Path(mmseg.__file__).parent / '.mim' / 'tools' / tool
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
    )
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def read_miou(output: str, class_name: str) -> float:
    """Check mmseg's per-class table has a row for ``class_name``; return the mIoU (%)
    of its summary line 'mIoU: 12.3400 ...'."""
    assert 'per class results' in output, output[-4000:]
    assert re.search(rf'\|\s+{class_name}\s+\|', output), output[-4000:]
    found = re.findall(r'mIoU: (\d+\.\d+)', output)
    assert found, output[-4000:]
    return float(found[-1])


@pytest.mark.slow
@pytest.mark.parametrize('dataset', ['ade20k', 'voc'])
def test_tiny_train_then_test(dataset, tmp_path):
    """The demo path: generate a tiny set, train a few iterations with mmseg's
    tools/train.py, evaluate the checkpoint with tools/test.py (per-class IoU, mIoU)."""
    from mobileone_mm.devkit import tiny_data

    config, make, out, first_class = {
        'ade20k': (TINY_ADE20K, tiny_data.make_tiny_ade20k, 'data/ade', 'wall'),
        'voc': (
            TINY_VOC,
            partial(tiny_data.make_tiny_voc, num_aug=2),
            'data/VOCdevkit',
            'background',
        ),
    }[dataset]
    # the configs' data roots (data/ade/..., data/VOCdevkit/...) are relative to the cwd
    make(tmp_path / out, num_train=4, num_val=2, image_size=(96, 128))
    iters = 3
    run_mmseg_tool(
        'train.py',
        CONFIG_DIR / config,
        '--work-dir',
        tmp_path / 'work',
        '--cfg-options',
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
        'train_dataloader.batch_size=2',
        cwd=tmp_path,
    )
    checkpoint = tmp_path / 'work' / f'iter_{iters}.pth'
    assert checkpoint.is_file()
    output = run_mmseg_tool(
        'test.py', CONFIG_DIR / config, checkpoint, '--work-dir', tmp_path / 'test', cwd=tmp_path
    )
    assert 0 <= read_miou(output, first_class) <= 100


@pytest.mark.slow
def test_full_ade20k_config_evaluates_with_only_the_data_root_changed(tmp_path):
    """The real 512x512 ADE20K config, untouched but for its data root, evaluates a
    checkpoint over an ADE20K-format folder (here the tiny one)."""
    from mobileone_mm import save_checkpoint
    from mobileone_mm.devkit.tiny_data import make_tiny_ade20k

    root = make_tiny_ade20k(tmp_path / 'ade', num_train=1, num_val=1, image_size=(64, 80))
    model = build_segmentor(load_config(ADE20K_S0))
    save_checkpoint({'state_dict': model.state_dict()}, str(tmp_path / 'model.pth'))
    output = run_mmseg_tool(
        'test.py',
        CONFIG_DIR / ADE20K_S0,
        tmp_path / 'model.pth',
        '--work-dir',
        tmp_path / 'test',
        '--cfg-options',
        f'test_dataloader.dataset.data_root={root}',
        cwd=tmp_path,
    )
    assert 0 <= read_miou(output, 'wall') <= 100
