"""Multi-process training on the CPU (gloo): `mim train ... --launcher pytorch` for the
tiny detection and segmentation (SyncBN) configs, and the SyncBN replacement that makes
the latter possible (mobileone_mm.fixes.cpu_distributed)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import REPO

from mobileone_mm.models.sync_batchnorm import CPUSyncBatchNorm, convert_to_cpu_sync_batchnorm

MIM = Path(sys.executable).parent / 'mim'
needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason='the CPU adaptation is off when CUDA is available'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_cpu_sync_batchnorm_is_plain_bn_without_process_group():
    torch.manual_seed(0)
    sync = nn.SyncBatchNorm(6, momentum=0.3)
    with torch.no_grad():
        sync.weight.uniform_(0.5, 1.5)
        sync.bias.normal_()
    reference = nn.BatchNorm2d(6, momentum=0.3)
    reference.load_state_dict(sync.state_dict())
    model = convert_to_cpu_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 6, 1), sync))
    converted = model[1]
    assert isinstance(converted, CPUSyncBatchNorm) and not isinstance(converted, nn.SyncBatchNorm)
    assert converted.weight is sync.weight and converted.running_var is sync.running_var
    assert list(converted.state_dict()) == list(reference.state_dict())
    x = torch.randn(4, 6, 5, 5)
    for training in (True, True, False):
        converted.train(training), reference.train(training)
        assert torch.allclose(converted(x), reference(x), atol=1e-6)
    assert torch.allclose(converted.running_mean, reference.running_mean)
    assert converted.num_batches_tracked == reference.num_batches_tracked == 2


SYNC_BN_CHECK = textwrap.dedent('''
    """Two gloo processes, each with half a batch, against BN on the whole batch."""
    import json, os, sys
    import torch, torch.nn as nn, torch.distributed as dist
    import mobileone_mm.fixes.cpu_distributed  # noqa: F401  (adapts mmengine to a CPU-only torch)
    from mmengine.dist import init_dist
    from mmengine.model import MMDistributedDataParallel
    from mobileone_mm.models.sync_batchnorm import CPUSyncBatchNorm

    init_dist('pytorch', backend='nccl')  # what the configs ask for
    rank, world = dist.get_rank(), dist.get_world_size()
    result = dict(backend=dist.get_backend(), world_size=world)
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 3, dtype=torch.float64)
    upstream = torch.randn(6, 4, 5, 3, dtype=torch.float64)  # d loss / d output
    for momentum in (0.1, None):
        def make(cls):
            torch.manual_seed(1)
            net = nn.Sequential(nn.Conv2d(4, 4, 1), cls(4, momentum=momentum)).double()
            with torch.no_grad():
                net[1].weight.uniform_(0.5, 1.5)
                net[1].bias.normal_()
            return net
        reference = make(nn.BatchNorm2d)
        # the Runner's way: MMDistributedDataParallel(device_ids=[LOCAL_RANK]) of a SyncBN model
        ddp = MMDistributedDataParallel(make(nn.SyncBatchNorm),
                                        device_ids=[int(os.environ['LOCAL_RANK'])])
        assert isinstance(ddp.module[1], CPUSyncBatchNorm)
        mine = slice(3 * rank, 3 * rank + 3)
        for step in range(2):
            xs = x + step
            out = ddp(xs[mine].clone().requires_grad_())
            (out * upstream[mine]).sum().backward()   # DDP averages gradients over ranks
            ref_out = reference(xs)
            (ref_out * upstream).sum().backward()
            gathered = [torch.empty_like(out) for _ in range(world)]
            dist.all_gather(gathered, out.detach())
            key = f'momentum={momentum}, step {step}'
            result[key] = dict(
                output=(torch.cat(gathered) - ref_out).abs().max().item(),
                grad_weight=(ddp.module[1].weight.grad * world
                             - reference[1].weight.grad).abs().max().item(),
                grad_conv=(ddp.module[0].weight.grad * world
                           - reference[0].weight.grad).abs().max().item(),
                running_mean=(ddp.module[1].running_mean
                              - reference[1].running_mean).abs().max().item(),
                running_var=(ddp.module[1].running_var
                             - reference[1].running_var).abs().max().item())
            ddp.zero_grad(), reference.zero_grad()
    if rank == 0:
        with open(sys.argv[1], 'w') as f:
            json.dump(result, f)
''')


@needs_cpu_only
@pytest.mark.slow
def test_cpu_sync_batchnorm_over_two_processes_equals_bn_on_the_whole_batch(tmp_path):
    """The SyncBN that mmengine's DDP wrapping gets on a CPU: outputs, gradients (input,
    affine, the conv before it) and running statistics (momentum and cumulative) of two
    processes holding half a batch each equal one BN over the whole batch (float64)."""
    script = tmp_path / 'check.py'
    script.write_text(SYNC_BN_CHECK)
    torchrun = Path(sys.executable).parent / 'torchrun'
    done = subprocess.run(
        [
            str(torchrun),
            '--nproc_per_node',
            '2',
            '--master_port',
            str(free_port()),
            str(script),
            str(tmp_path / 'result.json'),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((tmp_path / 'result.json').read_text())
    assert result.pop('backend') == 'gloo' and result.pop('world_size') == 2
    assert len(result) == 4
    for key, errors in result.items():
        assert all(error < 1e-10 for error in errors.values()), (key, errors)


# A hook that each rank runs at the end of training: who it was, what it trained.
PROBE = textwrap.dedent("""
    import json, os
    import torch, torch.distributed as dist
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS


    @HOOKS.register_module(force=True)
    class RankProbeHook(Hook):
        def after_train(self, runner):
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            norms = sorted({type(m).__name__ for m in model.modules()
                            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
            params = torch.cat([p.detach().flatten() for p in model.parameters()])
            stats = [m.running_mean for m in model.modules()
                     if type(m).__name__ in ('CPUSyncBatchNorm', 'BatchNorm2d')]
            info = dict(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        backend=dist.get_backend(), iters=runner.iter,
                        wrapper=type(runner.model).__name__, norms=norms,
                        params=params.double().sum().item(),
                        first_running_mean=stats[0].tolist())
            with open(os.path.join(runner.work_dir, f'probe_rank{info["rank"]}.json'), 'w') as f:
                json.dump(info, f)
""")


# A child config's custom_imports replaces its base's list: restate the stack fixes.
FIXES = [
    'mobileone_mm.fixes.safe_loading',
    'mobileone_mm.fixes.durable_checkpoints',
    'mobileone_mm.fixes.cpu_distributed',
]


def mim_train_two_processes(codebase, base_config, imports, tmp_path, options) -> list:
    """`mim train CODEBASE CONFIG --launcher pytorch --gpus 2` on a config that adds the
    probe hook to ``base_config``; returns the two ranks' probe records."""
    (tmp_path / 'rank_probe.py').write_text(PROBE)
    config = tmp_path / 'two_processes.py'
    config.write_text(
        f'_base_ = {str(base_config)!r}\n'
        f'custom_imports = dict(imports={imports + ["rank_probe"]!r}, '
        f'allow_failed_imports=False)\n'
        f"custom_hooks = [dict(type='RankProbeHook')]\n"
    )
    work_dir = tmp_path / 'work'
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path), str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]
        ),
    )
    done = subprocess.run(
        [
            str(MIM),
            'train',
            codebase,
            str(config),
            '--launcher',
            'pytorch',
            '--gpus',
            '2',
            '--port',
            str(free_port()),
            '--work-dir',
            str(work_dir),
            '--cfg-options',
            *options,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert 'Traceback' not in output
    assert 'process group on gloo (rank 0 of 2' in output
    probes = [json.loads((work_dir / f'probe_rank{r}.json').read_text()) for r in (0, 1)]
    for rank, probe in enumerate(probes):
        assert probe['rank'] == rank and probe['world_size'] == 2
        assert probe['backend'] == 'gloo' and probe['wrapper'] == 'MMDistributedDataParallel'
    # DDP kept the replicas identical
    assert probes[0]['params'] == probes[1]['params'] and probes[0]['iters'] > 0
    assert probes[0]['iters'] == probes[1]['iters']
    return probes


@needs_cpu_only
@pytest.mark.slow
def test_mim_train_mmdet_with_two_cpu_processes(tmp_path):
    """Tiny SSDLite, one epoch, two processes: each sees half of the batches."""
    from mobileone_mm.devkit.tiny_data import make_tiny_coco

    make_tiny_coco(tmp_path / 'data' / 'tiny_coco', num_train=8, num_val=2)
    probes = mim_train_two_processes(
        'mmdet',
        REPO / 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
        ['mobileone_mm', 'mobileone_mm.models.ssd_head', *FIXES],
        tmp_path,
        [
            'train_dataloader.batch_size=2',
            'train_cfg.max_epochs=1',
            'train_cfg.val_interval=100',
            'default_hooks.checkpoint.save_best=None',
        ],
    )
    assert probes[0]['norms'] == ['BatchNorm2d']
    assert (tmp_path / 'work' / 'epoch_1.pth').exists()


@needs_cpu_only
@pytest.mark.slow
def test_mim_train_mmseg_syncbn_with_two_cpu_processes(tmp_path):
    """Tiny DeepLabV3 (SyncBN in backbone and heads), two iterations, two processes: the
    SyncBN layers run as CPUSyncBatchNorm and their running statistics, computed over
    both processes' batches, are the same on both ranks."""
    from mobileone_mm.devkit.tiny_data import make_tiny_ade20k

    make_tiny_ade20k(tmp_path / 'data' / 'ade', num_train=4, num_val=1, image_size=(96, 128))
    probes = mim_train_two_processes(
        'mmseg',
        REPO / 'configs/segmentation/deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
        ['mobileone_mm', *FIXES],
        tmp_path,
        [
            'train_dataloader.batch_size=2',
            'train_cfg.max_iters=2',
            'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=2',
            'default_hooks.logger.interval=1',
        ],
    )
    assert probes[0]['norms'] == probes[1]['norms'] == ['CPUSyncBatchNorm']
    assert probes[0]['iters'] == 2
    assert probes[0]['first_running_mean'] == probes[1]['first_running_mean']
    assert (tmp_path / 'work' / 'iter_2.pth').exists()
