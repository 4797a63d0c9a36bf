"""Pretraining with the paper's recipe (issue 18): the ImageNet configs; the tiny run of the
whole recipe, judged from its log and its runner state; the EMA weights through
checkpoints, resume and the deploy form; the pretrained custom arch in the detection and
segmentation configs; the recipe's hooks under DDP."""

import copy
import json
import math
import os
import pickle
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import REPO
from mmengine.config import Config

from mobileone_mm import CheckpointError, MobileOne, load_checkpoint_file, reparameterize_model
from mobileone_mm.devkit.analysis import count_macs
from mobileone_mm.devkit.tiny_data import make_tiny_flowers
from mobileone_mm.fusion.output_check import Reference
from mobileone_mm.fusion.reparameterize import reparameterize_checkpoint
from mobileone_mm.loading.checkpoint import load_model
from mobileone_mm.loading.config import build_model
from mobileone_mm.loading.data import sample_inputs
from mobileone_mm.models.arch import ARCH_SETTINGS, resolve_arch, stage_channels

CLS = REPO / 'configs/classification'
IMAGENET = {
    **{f's{n}': CLS / f'mobileone-s{n}_8xb32_in1k.py' for n in range(5)},
    'narrow': CLS / 'mobileone-s0-narrow_8xb32_in1k.py',
}
TINY = CLS / 'mobileone-s0_in1k-recipe_1xb16-6e_tiny-flowers.py'
TINY_NARROW = CLS / 'mobileone-s0-narrow_in1k-recipe_1xb16-6e_tiny-flowers.py'
FLOWERS = CLS / 'mobileone-s0_1xb32-flowers102.py'
SSDLITE = REPO / 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py'
DEEPLAB = (
    REPO / 'configs/segmentation' / 'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py'
)
MIM = Path(sys.executable).parent / 'mim'

# (RandomResizedCrop size, RandAugment magnitude or None) from each epoch a stage starts.
STAGES = {
    's0': {1: (224, None)},
    'narrow': {1: (224, None)},
    's1': {1: (160, 0.7), 37: (192, 1.4), 112: (224, 2.1)},
    **{f's{n}': {1: (160, 2.1), 37: (192, 4.9), 112: (224, 7.0)} for n in (2, 3, 4)},
}
TINY_STAGES = {1: (48, 2.1), 3: (56, 4.9), 5: (64, 7.0)}


def stage_of(stages: dict, epoch: int):
    return stages[max(e for e in stages if e <= epoch)]


def recipe_of(pipeline) -> tuple:
    """(crop size, RandAugment magnitude or None) of an mmcv Compose."""
    crop = [t.scale for t in pipeline.transforms if type(t).__name__ == 'RandomResizedCrop']
    magnitude = [
        t.magnitude_level for t in pipeline.transforms if type(t).__name__ == 'RandAugment'
    ]
    assert len(crop) == 1 and crop[0][0] == crop[0][1] and len(magnitude) <= 1
    return crop[0][0], (round(magnitude[0], 6) if magnitude else None)


def cosine_decay(base: float, epoch: int, epochs: int) -> float:
    """The recipe's weight decay in an epoch (0-based): base -> base / 10 along a cosine."""
    return base / 10 + (base - base / 10) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def hook_cfg(cfg, name):
    found = [h for h in cfg.custom_hooks if h.type.split('.')[-1] == name]
    assert len(found) <= 1
    return found[0] if found else None


# ------------------------------------------------------------ the ImageNet configs
@pytest.mark.parametrize('name', list(IMAGENET))
def test_imagenet_recipe_config_builds_and_trains_a_step(name):
    """Each ImageNet config: our backbone with the Flowers config's imports, the recipe's
    batch and schedule, a training step with the recipe's optimizer, weight decay annealed
    on the decayed parameters only, the progressive stages SwitchRecipeHook will really
    switch to, and the EMA."""
    from mmcv.transforms import Compose
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    from mmpretrain.registry import HOOKS
    from mmpretrain.structures import DataSample

    cfg = Config.fromfile(str(IMAGENET[name]))
    assert cfg.custom_imports == Config.fromfile(str(FLOWERS)).custom_imports
    assert cfg.model.backbone.type == 'mobileone_mm.MobileOne'
    arch = cfg.model.backbone.arch
    assert arch == (cfg.arch if name == 'narrow' else name)
    # 8 processes x 32 = the base batch the learning rate is given for; 300 epochs
    assert (cfg.train_dataloader.batch_size, cfg.auto_scale_lr.base_batch_size) == (32, 256)
    assert cfg.train_cfg.max_epochs == 300 and cfg.optim_wrapper.optimizer.lr == 0.1

    model, codebase = build_model(cfg)
    assert codebase == 'mmpretrain' and isinstance(model.backbone, MobileOne)

    # one training step with the recipe's optimizer (SGD, no decay on norm layers)
    optim_wrapper = build_optim_wrapper(model.train(), cfg.optim_wrapper)
    data = dict(
        inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
        data_samples=[DataSample().set_gt_label(label) for label in (3, 999)],
    )
    before = [p.detach().clone() for p in model.parameters()]
    losses = model.train_step(data, optim_wrapper)
    assert torch.isfinite(losses['loss'])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))

    # weight decay: 1e-4 -> 1e-5 along a cosine over 300 epochs on the decayed groups;
    # the norm layers' groups (norm_decay_mult=0) stay at 0 all the way
    wd_cfg = [s for s in cfg.param_scheduler if s.get('param_name') == 'weight_decay']
    assert len(wd_cfg) == 1
    scheduler = PARAM_SCHEDULERS.build(dict(wd_cfg[0], optimizer=optim_wrapper))
    groups = optim_wrapper.param_groups
    bases = [g['weight_decay'] for g in groups]
    assert set(bases) == {0.0, 1e-4}
    for epoch in range(300):
        for group, base in zip(groups, bases):
            assert math.isclose(
                group['weight_decay'], cosine_decay(base, epoch, 300), rel_tol=1e-9, abs_tol=0
            ), (epoch, base)
        scheduler.step()

    # progressive learning: what the train set starts with and what SwitchRecipeHook
    # switches to (a schedule entry under a key the hook ignores switches nothing)
    stages = {1: recipe_of(Compose(cfg.train_dataloader.dataset.pipeline))}
    switch = hook_cfg(cfg, 'SwitchRecipeHook')
    if switch is not None:
        hook = HOOKS.build(switch)
        for epoch, recipe in hook.schedule.items():
            assert 'train_pipeline' in recipe, f'epoch {epoch}: nothing to switch'
            stages[epoch] = recipe_of(recipe['train_pipeline'])
    assert stages == STAGES[name]

    ema = hook_cfg(cfg, 'EMAHook')
    assert (ema.momentum, ema.update_buffers) == (5e-4, True)
    assert hook_cfg(cfg, 'RecipeLoggerHook') is not None


def test_custom_arch_keeps_the_heads_widths_at_fewer_macs():
    """The narrow arch's comment: S0's stage-3 / stage-4 widths (what the SSDLite and
    DeepLabV3 heads read), 27 % fewer multiply-adds at 320x320 (fused backbones); the
    tiny config pretrains the same arch."""
    narrow = Config.fromfile(str(IMAGENET['narrow'])).model.backbone.arch
    assert Config.fromfile(str(TINY_NARROW)).model.backbone.arch == narrow
    assert resolve_arch(narrow) != ARCH_SETTINGS['s0']
    assert stage_channels(resolve_arch(narrow))[2:] == stage_channels(ARCH_SETTINGS['s0'])[2:]
    macs = {}
    for arch in ('s0', narrow):
        backbone = MobileOne(arch, out_indices=(2, 3)).eval()
        backbone.switch_to_deploy()
        macs[str(arch)] = count_macs(backbone, torch.randn(1, 3, 320, 320)) / 1e9
    assert round(macs['s0'], 2) == 0.56 and round(macs[str(narrow)], 2) == 0.41
    assert round(100 * (1 - macs[str(narrow)] / macs['s0'])) == 27


# ---------------------------------------------------------------- the tiny recipe
# A hook each run of the tiny recipe gets in the tests: what the run did, from the runner.
PROBE = textwrap.dedent('''
    import json, os, signal
    import torch
    from mmengine.dist import get_rank
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS
    from mobileone_mm import load_checkpoint_file


    @HOOKS.register_module(force=True)
    class PretrainProbeHook(Hook):
        """Per rank: each epoch's batch image sizes and train worker pids; at each
        validation, how far the validated weights are from an EMA of the trained weights
        kept here in float64 (and from the trained weights), and the same for the
        checkpoint just written. kill_after_epoch: SIGKILL the run once that epoch's
        checkpoint is written."""
        priority = 'LOWEST'  # after EMAHook's swap and CheckpointHook's save

        def __init__(self, momentum, kill_after_epoch=None):
            self.momentum, self.kill_after_epoch = momentum, kill_after_epoch
            self.ema = self.trained = None
            self.steps, self.epochs, self.validations = 0, [], []

        def floats(self, runner):
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            return {k: v.detach().double().clone() for k, v in model.state_dict().items()
                    if v.is_floating_point()}

        def dump(self, runner):
            with open(os.path.join(runner.work_dir, f'probe_rank{get_rank()}.json'), 'w') as f:
                json.dump(dict(epochs=self.epochs, validations=self.validations), f)

        def before_train_epoch(self, runner):
            self.epochs.append(dict(epoch=runner.epoch + 1, sizes=[], workers=[]))

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            record = self.epochs[-1]
            for x in data_batch['inputs']:
                if list(x.shape[-2:]) not in record['sizes']:
                    record['sizes'].append(list(x.shape[-2:]))
            iterator = runner.train_loop.dataloader._iterator
            record['workers'] = [w.pid for w in getattr(iterator, '_workers', [])]

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.trained = self.floats(runner)
            if self.ema is None:  # the EMA starts at the weights after the first step
                self.ema = {k: v.clone() for k, v in self.trained.items()}
            else:
                for k, v in self.trained.items():
                    self.ema[k] += self.momentum * (v - self.ema[k])
            self.steps += 1

        def after_train_epoch(self, runner):
            self.dump(runner)
            if runner.epoch + 1 == self.kill_after_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

        def distance(self, weights, reference):
            """max over tensors of max |weights - reference| / max |reference|"""
            return max(((weights[k].double() - v).abs().max() / v.abs().max().clamp(
                min=1e-30)).item() for k, v in reference.items())

        def before_val_epoch(self, runner):
            validated = self.floats(runner)
            record = dict(epoch=runner.epoch, steps=self.steps,
                          ema_error=self.distance(validated, self.ema),
                          from_trained=self.distance(validated, self.trained),
                          param_sum=sum(v.sum().item() for k, v in validated.items()
                                        if 'running_' not in k))
            path = os.path.join(runner.work_dir, f'epoch_{runner.epoch}.pth')
            if get_rank() == 0 and os.path.exists(path):
                checkpoint = load_checkpoint_file(path)
                record['checkpoint_ema_error'] = self.distance(checkpoint['state_dict'],
                                                               self.ema)
                raw = {k[len('module.'):]: v for k, v in checkpoint['ema_state_dict'].items()
                       if k.startswith('module.')}
                record['checkpoint_raw_error'] = self.distance(raw, self.trained)
            self.validations.append(record)
            self.dump(runner)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def ema_momentum(config) -> float:
    return hook_cfg(Config.fromfile(str(config)), 'EMAHook').momentum


def mim_train(
    config, folder: Path, work_dir: Path, *extra, kill_after_epoch=None, check=True
) -> str:
    """`mim train mmpretrain` of ``config`` plus the probe hook, from ``folder`` (where
    the data is); returns the output."""
    (folder / 'pretrain_probe.py').write_text(PROBE)
    probed = folder / f'probed_{work_dir.name}.py'
    probed.write_text(
        f'_base_ = {str(config)!r}\n'
        f'custom_imports = dict(imports=_base_.custom_imports.imports + ["pretrain_probe"],'
        f' allow_failed_imports=False)\n'
        f'custom_hooks = _base_.custom_hooks + [dict(type="PretrainProbeHook", '
        f'momentum={ema_momentum(config)!r}, kill_after_epoch={kill_after_epoch!r})]\n'
    )
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONPATH=os.pathsep.join(
            [str(folder), str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]
        ),
    )
    command = [str(MIM), 'train', 'mmpretrain', str(probed), '--work-dir', str(work_dir), *extra]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    if check:
        assert done.returncode == 0 and 'Traceback' not in output, output[-4000:]
    return output


def probe(work_dir: Path, rank: int = 0) -> dict:
    return json.loads((work_dir / f'probe_rank{rank}.json').read_text())


RECIPE_LINE = re.compile(
    r'Epoch (\d+) recipe: trained on (\d+)x(\d+) images; '
    r'RandomResizedCrop\.scale=\((\d+), (\d+)\), '
    r'RandAugment\.magnitude_level=([\d.]+); weight_decay ([\d.e-]+), 0\n'
)
EMA_LINE = re.compile(
    r'Validation on the EMA weights \(EMAHook, (\d+) updates\): '
    r'([\d.e-]+) \(relative\) from the trained weights'
)


# The tests' tiny run: 64 train images in batches of 8, 6 epochs of 8 iterations (the
# config: 160 in batches of 16). With 24 iterations (batches of 16) the eval-mode logits
# were still in the thousands, so every softmax score was 0 or 1 in both weights.
TINY_IMAGES, TINY_BATCH = 64, 8
# Data workers started afresh each epoch, so that a resumed run draws the same augmentation
# as the uninterrupted one: mmengine seeds each worker with seed + rank + worker id, and
# mmpretrain's train.py keeps them for the whole run by default (persistent_workers), so
# the random state they carry from one epoch to the next is in no checkpoint.
TINY_ARGS = (
    '--no-persistent-workers',
    '--cfg-options',
    f'train_dataloader.batch_size={TINY_BATCH}',
)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """The tiny recipe, uninterrupted (TINY_IMAGES train images, 8 val)."""
    folder = tmp_path_factory.mktemp('pretrain')
    make_tiny_flowers(folder / 'data/tiny_flowers', num_train=TINY_IMAGES, num_val=8)
    work_dir = folder / 'work'
    output = mim_train(TINY, folder, work_dir, *TINY_ARGS)
    return folder, work_dir, output


@pytest.mark.slow
def test_tiny_recipe_log_shows_each_trick(tiny_run):
    """From the log: each epoch's image size, crop and RandAugment magnitude (switched at
    epochs 3 and 5), its weight decay on the recipe's cosine (the norm layers' at 0), and
    a validation on the EMA weights after each epoch."""
    _, work_dir, output = tiny_run
    cfg = Config.fromfile(str(TINY))
    epochs = cfg.train_cfg.max_epochs
    lines = RECIPE_LINE.findall(output)
    assert [int(line[0]) for line in lines] == list(range(1, epochs + 1)), output[-3000:]
    for epoch, height, width, crop_h, crop_w, magnitude, decay in lines:
        crop, expected_magnitude = stage_of(TINY_STAGES, int(epoch))
        assert int(height) == int(width) == int(crop_h) == int(crop_w) == crop
        assert math.isclose(float(magnitude), expected_magnitude, rel_tol=5e-3)
        expected_decay = cosine_decay(
            cfg.optim_wrapper.optimizer.weight_decay, int(epoch) - 1, epochs
        )
        assert math.isclose(float(decay), expected_decay, rel_tol=5e-3), (epoch, decay)
    assert 'Switch train pipeline at epoch 3.' in output
    assert 'Switch train pipeline at epoch 5.' in output

    validations = EMA_LINE.findall(output)
    iters = TINY_IMAGES // TINY_BATCH
    assert [int(steps) for steps, _ in validations] == [iters * e for e in range(1, 7)]
    assert all(float(distance) > 0 for _, distance in validations)


def ema_bound(record: dict, momentum: float) -> float:
    """How far (relative to each tensor's largest value) a float32 EMA may drift from the
    float64 one: each float32 update rounds by up to ~2 float32 steps of the values, and
    earlier rounding decays by (1 - momentum) an update, so the drift stays below
    2 eps x min(updates, 1 / momentum); twice that for values that were larger before."""
    return 4 * torch.finfo(torch.float32).eps * min(record['steps'], 1 / momentum)


@pytest.mark.slow
def test_tiny_recipe_validates_and_saves_the_ema_weights(tiny_run):
    """From the runner: each validation ran on an EMA of the trained weights (an EMA
    computed independently in float64: equal to float32 rounding, while the trained
    weights are far from it), and each checkpoint holds the EMA as its `state_dict` and
    the trained weights as its `ema_state_dict`."""
    _, work_dir, _ = tiny_run
    momentum = ema_momentum(TINY)
    validations = probe(work_dir)['validations']
    assert [v['epoch'] for v in validations] == list(range(1, 7))
    for record in validations:
        bound = ema_bound(record, momentum)
        assert record['ema_error'] <= bound, record
        assert record['from_trained'] > 100 * bound, record
        assert record['checkpoint_ema_error'] <= bound, record
        assert record['checkpoint_raw_error'] == 0, record


@pytest.mark.slow
def test_ema_checkpoint_deploy_form_gives_the_same_results_in_mim_test(tiny_run, monkeypatch):
    """reparameterize_checkpoint (tools/reparameterize.py) and SaveDeployCheckpointHook
    fuse the checkpoint's EMA weights; `mim test` of the deploy form and of the train form
    both give the EMA model's class scores, judged against the float64 EMA model (and
    the trained weights' scores are refused by the same judge)."""
    folder, work_dir, _ = tiny_run
    monkeypatch.chdir(folder)
    checkpoint = work_dir / 'epoch_6.pth'
    saved = load_checkpoint_file(checkpoint)
    ema_model, cfg, _ = load_model(str(TINY), str(checkpoint))
    trained_model = copy.deepcopy(ema_model)
    trained_model.load_state_dict(
        {
            k[len('module.') :]: v
            for k, v in saved['ema_state_dict'].items()
            if k.startswith('module.')
        }
    )

    deploy = folder / 'deploy' / 'epoch_6_deploy.pth'
    result = reparameterize_checkpoint(str(TINY), str(checkpoint), str(deploy))
    assert result.check['passed'] and result.inputs == '4 val images'
    fused_ema = reparameterize_model(copy.deepcopy(ema_model)).state_dict()
    fused_trained = reparameterize_model(copy.deepcopy(trained_model)).state_dict()
    written = load_checkpoint_file(deploy)['state_dict']
    assert all(torch.equal(written[k], v) for k, v in fused_ema.items())
    assert not all(torch.equal(written[k], v) for k, v in fused_trained.items())

    # the hook's deploy form of the best checkpoint: the fused EMA weights of that file
    best = [p for p in work_dir.glob('best_*.pth') if not p.stem.endswith('_deploy')]
    assert len(best) == 1
    best_model, _, _ = load_model(str(TINY), str(best[0]))
    hook_written = load_checkpoint_file(best[0].with_name(best[0].stem + '_deploy.pth'))
    assert all(
        torch.equal(hook_written['state_dict'][k], v)
        for k, v in reparameterize_model(best_model).state_dict().items()
    )

    # mim test: the train form (the EMAHook in the config swaps the checkpoint's EMA
    # weights in and out) and the deploy form, every val image's scores
    scores = {}
    for form, (config, ckpt) in {
        'train': (TINY, checkpoint),
        'deploy': (result.out_config, deploy),
    }.items():
        out = folder / f'{form}_predictions.pkl'
        done = subprocess.run(
            [
                str(MIM),
                'test',
                'mmpretrain',
                str(config),
                '--checkpoint',
                str(ckpt),
                '--out',
                str(out),
                '--work-dir',
                str(folder / f'test_{form}'),
            ],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO)),
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        with open(out, 'rb') as f:
            scores[form] = [[p['pred_score'][None]] for p in pickle.load(f)]
    inputs, _ = sample_inputs(cfg, ema_model, num_images=8)
    assert len(inputs) == len(scores['train']) == 8

    def run(model, data):
        return [model(data['inputs'], mode='tensor').softmax(-1)]

    reference = Reference(ema_model, inputs, run)
    for form in ('train', 'deploy'):
        assert reference.judge(scores[form])['passed'], (form, reference.judge(scores[form]))
    # the judge tells the EMA from the trained weights (unless the scores are all 0 or 1)
    trained = reference.judge(reference.outputs(trained_model))
    assert not trained['passed'], ('saturated scores?', reference.exact)


@pytest.mark.slow
def test_resume_after_the_first_switch_continues_recipe_and_ema(tiny_run):
    """A run SIGKILLed after epoch 3 (the first switch) and resumed with `mim train
    --resume`: it goes on at the second stage's crop (the switch replayed on resume) and
    ends with the same EMA and trained weights, bit for bit, as the uninterrupted run
    (data workers started afresh each epoch in both, TINY_ARGS)."""
    folder, work_dir, uninterrupted = tiny_run
    killed = folder / 'killed'
    output = mim_train(TINY, folder, killed, *TINY_ARGS, kill_after_epoch=3, check=False)
    assert sorted(p.name for p in killed.glob('epoch_*.pth')) == ['epoch_2.pth', 'epoch_3.pth']
    assert 'epoch_4' not in output and 'Epoch 4 recipe' not in output

    resumed = mim_train(TINY, folder, killed, '--resume', *TINY_ARGS)
    assert 'resumed epoch: 3' in resumed
    assert 'Switch train pipeline (resume recipe of epoch 3).' in resumed
    lines = RECIPE_LINE.findall(resumed)
    assert [(int(found[0]), int(found[1])) for found in lines] == [(4, 56), (5, 64), (6, 64)]
    assert lines == RECIPE_LINE.findall(uninterrupted)[3:]

    final, expected = (load_checkpoint_file(d / 'epoch_6.pth') for d in (killed, work_dir))
    for key in ('state_dict', 'ema_state_dict'):
        assert final[key].keys() == expected[key].keys()
        for name, value in expected[key].items():
            assert torch.equal(final[key][name], value), (key, name)


# ---------------------------------------------------------- downstream and DDP runs
@pytest.fixture(scope='module')
def narrow_ddp_run(tmp_path_factory):
    """The tiny recipe of the custom arch in two CPU processes (`mim train --launcher
    pytorch --gpus 2`, gloo), with mmpretrain's persistent train workers: 16 train images
    in batches of 4 per process (2 iterations an epoch), 6 epochs."""
    folder = tmp_path_factory.mktemp('pretrain_ddp')
    make_tiny_flowers(folder / 'data/tiny_flowers', num_train=16, num_val=8)
    work_dir = folder / 'work'
    output = mim_train(
        TINY_NARROW,
        folder,
        work_dir,
        '--launcher',
        'pytorch',
        '--gpus',
        '2',
        '--port',
        str(free_port()),
        '--cfg-options',
        'train_dataloader.batch_size=4',
    )
    return folder, work_dir, output


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU launch is for CPU-only hosts')
def test_recipe_hooks_under_ddp_with_persistent_workers(narrow_ddp_run):
    """Both ranks train at each stage's crop size (SwitchRecipeHook restarts the
    persistent workers at each switch, and only then), validate on their EMA weights, and
    hold the same EMA parameters."""
    _, work_dir, output = narrow_ddp_run
    assert 'process group on gloo (rank 0 of 2' in output
    momentum = ema_momentum(TINY_NARROW)
    ranks = [probe(work_dir, rank) for rank in (0, 1)]
    for record in ranks:
        epochs = record['epochs']
        assert [e['sizes'] for e in epochs] == [
            [[stage_of(TINY_STAGES, e)[0]] * 2] for e in range(1, 7)
        ]
        workers = [tuple(e['workers']) for e in epochs]
        assert all(len(w) == 1 for w in workers)
        assert [w == workers[i - 1] for i, w in enumerate(workers)][1:] == [
            True,
            False,
            True,
            False,
            True,
        ]
        for validation in record['validations']:
            assert validation['ema_error'] <= ema_bound(validation, momentum), validation
            assert validation['from_trained'] > 100 * ema_bound(validation, momentum)
    assert [v['param_sum'] for v in ranks[0]['validations']] == [
        v['param_sum'] for v in ranks[1]['validations']
    ]


@pytest.mark.slow
def test_custom_arch_pretraining_initialises_detector_and_segmentor(narrow_ddp_run, monkeypatch):
    """The custom-arch pretraining checkpoint through init_cfg into the tiny SSDLite and
    DeepLabV3 configs with the same arch (the README's configs): the backbone holds the
    checkpoint's (EMA) weights, tensor for tensor; into the S0 configs as they are it is
    refused, naming both archs."""
    from mmengine.registry import init_default_scope

    folder, work_dir, _ = narrow_ddp_run
    checkpoint = work_dir / 'epoch_6.pth'
    weights = {
        k[len('backbone.') :]: v
        for k, v in load_checkpoint_file(checkpoint)['state_dict'].items()
        if k.startswith('backbone.')
    }
    arch = Config.fromfile(str(TINY_NARROW)).arch
    for downstream in (SSDLITE, DEEPLAB):
        config = folder / f'pretrained_{downstream.name}'
        config.write_text(downstream_config(downstream, arch, checkpoint))
        model, codebase = build_model(Config.fromfile(str(config)))
        init_default_scope(codebase)
        model.init_weights()
        state = model.backbone.state_dict()
        assert state.keys() == weights.keys()
        for name, value in weights.items():
            assert torch.equal(state[name], value), (downstream.name, name)

        mismatched = Config.fromfile(str(downstream))
        mismatched.model.backbone.init_cfg = dict(
            type='Pretrained', prefix='backbone.', checkpoint=str(checkpoint)
        )
        model, _ = build_model(mismatched)
        with pytest.raises(CheckpointError, match=r'MobileOne-custom\(.*MobileOne-s0'):
            model.init_weights()


def downstream_config(base: Path, arch: dict, checkpoint: Path) -> str:
    """A config on a detection / segmentation config for a pretrained custom arch, as the
    README writes it."""
    return (
        f'_base_ = {str(base)!r}\n'
        f'model = dict(backbone=dict(\n'
        f'    arch=dict(_delete_=True, **{arch!r}),\n'
        f'    init_cfg=dict(_delete_=True, type="Pretrained", prefix="backbone.",\n'
        f'                  checkpoint={str(checkpoint)!r})))\n'
    )
