"""The deploy switch for trained models (mobileone_mm.fusion, tools/reparameterize.py) with
real mmdet / mmseg / mmpretrain: checkpoints written by mmengine's Runner, fused, checked,
reloaded from the deploy config, and evaluated to the same metric."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO
from mmengine.config import Config
from mmengine.runner import Runner

from mobileone_mm import CheckpointError, load_checkpoint_file
from mobileone_mm.devkit.tiny_data import make_tiny_ade20k, make_tiny_coco, make_tiny_flowers
from mobileone_mm.fusion.reparameterize import reparameterize_checkpoint
from mobileone_mm.loading.checkpoint import load_model
from mobileone_mm.loading.config import DeployError, build_model, codebase_of

CONFIGS = {
    'mmpretrain': REPO / 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py',
    'mmdet': REPO / 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
    'mmseg': REPO / 'configs/segmentation/'
    'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
}
# Tiny data sets in the folders the configs read (relative to the working directory), and
# config changes for two training iterations, no validation, a checkpoint at the end.
DATA = {
    'mmpretrain': lambda: make_tiny_flowers('data/tiny_flowers', num_train=8, num_val=8),
    'mmdet': lambda: make_tiny_coco('data/tiny_coco', num_train=8, num_val=4),
    'mmseg': lambda: make_tiny_ade20k('data/ade', num_train=4, num_val=4),
}
SHORT = {
    'mmpretrain': {'train_dataloader.batch_size': 4, 'train_cfg.max_epochs': 1},
    'mmdet': {'train_dataloader.batch_size': 4, 'train_cfg.max_epochs': 1},
    'mmseg': {
        'train_dataloader.batch_size': 2,
        'train_cfg.max_iters': 2,
        'default_hooks.checkpoint.interval': 2,
    },
}
METRIC = {'mmpretrain': 'accuracy/top1', 'mmdet': 'coco/bbox_mAP', 'mmseg': 'mIoU'}


def runner(config, work_dir, **options) -> Runner:
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(
        {
            'train_cfg.val_interval': 1000,
            'default_hooks.logger.interval': 1,
            **options,
            'work_dir': str(work_dir),
        }
    )
    return Runner.from_cfg(cfg)


def train_briefly(task, work_dir) -> Path:
    """Two training iterations through mmengine's Runner: its own checkpoint format
    (optimizer, scheduler, message hub) with BN statistics that moved."""
    DATA[task]()
    runner(CONFIGS[task], work_dir, **SHORT[task]).train()
    return work_dir / Path(work_dir / 'last_checkpoint').read_text().strip()


def evaluate(config, checkpoint, work_dir) -> dict:
    return runner(config, work_dir, load_from=str(checkpoint)).test()


@pytest.mark.slow
@pytest.mark.parametrize('task', ['mmpretrain', 'mmdet', 'mmseg'])
def test_trained_model_reparameterizes_and_evaluates_the_same(task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = train_briefly(task, tmp_path / 'train')
    out = tmp_path / 'deploy' / 'model_deploy.pth'
    result = reparameterize_checkpoint(str(CONFIGS[task]), str(checkpoint), str(out))

    assert result.task == task and not result.already_fused
    assert result.inputs == '4 val images'
    assert result.rel_diff < 1e-5 and result.output_scale > 0
    assert result.params_deploy < result.params_train
    assert result.out_config == str(out.with_suffix('.py'))

    # The deploy config is the training config with backbone.deploy=True, nothing else.
    train_cfg = Config.fromfile(str(CONFIGS[task])).to_dict()
    deploy_cfg = Config.fromfile(result.out_config).to_dict()
    assert deploy_cfg['model']['backbone'].pop('deploy') is True
    train_cfg['model']['backbone'].pop('deploy', None)
    assert deploy_cfg == train_cfg

    # The deploy checkpoint: meta kept (plus our mark, by which a later run may replace
    # it), training state dropped, fused weights that load strictly into the deploy
    # config's model.
    original, deployed = load_checkpoint_file(checkpoint), load_checkpoint_file(out)
    assert set(deployed) == {'meta', 'state_dict'}
    assert deployed['meta'] == dict(original['meta'], written_by='mobileone_mm')
    model, _, _ = load_model(result.out_config, str(out))
    assert model.backbone.deploy
    assert not any('branch_conv_list' in k for k in deployed['state_dict'])

    # mmengine's test loop (what `mim test` runs) gives the same metric in both forms.
    trained = evaluate(CONFIGS[task], checkpoint, tmp_path / 'test_train')
    fused = evaluate(result.out_config, out, tmp_path / 'test_deploy')
    assert round(fused[METRIC[task]], 4) == round(trained[METRIC[task]], 4)


@pytest.mark.slow
def test_hook_saves_the_deploy_form_of_each_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DATA['mmpretrain']()
    work_dir = tmp_path / 'train'
    runner(
        CONFIGS['mmpretrain'],
        work_dir,
        **{
            **SHORT['mmpretrain'],
            'train_cfg.max_epochs': 2,
            'train_cfg.val_interval': 1,
            'default_hooks.checkpoint.save_best': 'accuracy/top1',
            'default_hooks.checkpoint.rule': 'greater',
            'custom_hooks': [
                dict(type='EMAHook', momentum=0.5),
                dict(type='mobileone_mm.SaveDeployCheckpointHook'),
            ],
        },
    ).train()
    best = [p for p in work_dir.glob('best_*.pth') if not p.stem.endswith('_deploy')]
    assert len(best) == 1
    deploy_ckpt = best[0].with_name(best[0].stem + '_deploy.pth')
    deploy_cfg = deploy_ckpt.with_suffix('.py')
    # one deploy form, of the current best (an earlier best's files are removed)
    assert sorted(work_dir.glob('*_deploy.*')) == sorted([deploy_ckpt, deploy_cfg])

    # It is the fused form of the best checkpoint's (EMA) weights: same outputs.
    trained, _, _ = load_model(CONFIGS['mmpretrain'], str(best[0]))
    fused, _, _ = load_model(str(deploy_cfg), str(deploy_ckpt))
    assert fused.backbone.deploy and not trained.backbone.deploy
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, found = trained(x, mode='tensor'), fused(x, mode='tensor')
    assert ((found - expected).abs().max() / expected.abs().max()) < 1e-5


# ------------------------------------------------- quick ones: random models, no data
@pytest.fixture
def classifier_checkpoint(tmp_path, randomize_bn):
    """A tiny-flowers classifier checkpoint in mmengine's layout (random weights and BN
    statistics); there is no data in tmp_path, so checks use random inputs."""
    model, _ = build_model(Config.fromfile(str(CONFIGS['mmpretrain'])))
    path = tmp_path / 'epoch_1.pth'
    torch.save(
        dict(
            meta=dict(epoch=1),
            state_dict=randomize_bn(model).state_dict(),
            optimizer=dict(state={}),
        ),
        path,
    )
    return path


def test_random_inputs_without_data_and_fused_checkpoint_left_alone(
    classifier_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / 'deploy.pth'
    result = reparameterize_checkpoint(
        str(CONFIGS['mmpretrain']), str(classifier_checkpoint), str(out), num_images=2
    )
    assert result.inputs.startswith(
        '2 random 64x64 images (The val set of the config is not on disk'
    )
    assert result.rel_diff < 1e-5

    again = reparameterize_checkpoint(
        str(CONFIGS['mmpretrain']), str(out), str(tmp_path / 'again.pth')
    )
    assert again.already_fused and again.out_checkpoint is None
    assert not (tmp_path / 'again.pth').exists() and not (tmp_path / 'again.py').exists()


def test_changed_outputs_are_refused_and_nothing_written(
    classifier_checkpoint, tmp_path, monkeypatch
):
    import mobileone_mm.fusion.reparameterize as deploy
    from mobileone_mm.models.reparam import reparameterize_model

    def broken_fusion(model):
        reparameterize_model(model)
        with torch.no_grad():
            model.backbone.stage4[-1].branch_reparam.weight.mul_(1.01)
        return model

    monkeypatch.setattr(deploy, 'reparameterize_model', broken_fusion)
    with pytest.raises(DeployError, match='changes the outputs'):
        deploy.reparameterize_checkpoint(
            str(CONFIGS['mmpretrain']), str(classifier_checkpoint), str(tmp_path / 'deploy.pth')
        )
    assert not (tmp_path / 'deploy.pth').exists()


NOT_MOBILEONE = """
default_scope = 'mmpretrain'
model = dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=4, in_channels=512))
"""


def test_bad_input_gets_a_clear_error(classifier_checkpoint, tmp_path):
    config = str(CONFIGS['mmpretrain'])
    out = str(tmp_path / 'deploy.pth')
    with pytest.raises(CheckpointError, match='does not exist'):
        reparameterize_checkpoint(config, str(tmp_path / 'missing.pth'), out)
    with pytest.raises(FileNotFoundError, match='missing.py'):
        reparameterize_checkpoint(str(tmp_path / 'missing.py'), str(classifier_checkpoint), out)
    # the classifier's checkpoint for the SSDLite config: same backbone, other heads
    with pytest.raises(
        CheckpointError,
        match=r'does not fit the model: \d+ missing keys: '
        r'neck\..*unexpected keys: head\.fc',
    ):
        reparameterize_checkpoint(str(CONFIGS['mmdet']), str(classifier_checkpoint), out)
    # the same classifier with another arch: shapes differ
    s1 = tmp_path / 's1.py'
    s1.write_text(
        f"_base_ = '{config}'\nmodel = dict(backbone=dict(arch='s1'), "
        f'head=dict(in_channels=1280))\n'
    )
    with pytest.raises(CheckpointError, match='shape mismatches: backbone.stage0'):
        reparameterize_checkpoint(str(s1), str(classifier_checkpoint), out)
    # no MobileOne at all
    resnet = tmp_path / 'resnet.py'
    resnet.write_text(NOT_MOBILEONE)
    model, _ = build_model(Config.fromfile(str(resnet)))
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'resnet.pth')
    with pytest.raises(DeployError, match='ResNet.*no re-parameterizable block'):
        reparameterize_checkpoint(str(resnet), str(tmp_path / 'resnet.pth'), out)
    # never overwrite the inputs
    with pytest.raises(DeployError, match='overwrite'):
        reparameterize_checkpoint(config, str(classifier_checkpoint), str(classifier_checkpoint))
    assert not (tmp_path / 'deploy.pth').exists()


@pytest.mark.parametrize(
    'model_type, codebase',
    [('ImageClassifier', 'mmpretrain'), ('EncoderDecoder', 'mmseg'), ('RetinaNet', 'mmdet')],
)
def test_codebase_from_model_type_without_default_scope(model_type, codebase):
    assert codebase_of(Config(dict(model=dict(type=model_type)))) == codebase
    with pytest.raises(DeployError, match='default_scope'):
        codebase_of(Config(dict(model=dict(type='NoSuchModel'))))


def run_tool(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'reparameterize.py'), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli(classifier_checkpoint, tmp_path):
    done = run_tool(CONFIGS['mmpretrain'], classifier_checkpoint, 'out/deploy.pth', cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'mmpretrain model, parameters: ' in done.stdout
    assert 'relative ' in done.stdout and 'out/deploy.py' in done.stdout
    done = run_tool(CONFIGS['mmpretrain'], 'out/deploy.pth', 'out/again.pth', cwd=tmp_path)
    assert done.returncode == 0 and 'already in deploy form' in done.stdout
    done = run_tool(CONFIGS['mmdet'], classifier_checkpoint, 'x.pth', cwd=tmp_path)
    assert done.returncode != 0
    assert 'reparameterize: ' in done.stderr and 'does not fit the model' in done.stderr
    assert 'Traceback' not in done.stderr
