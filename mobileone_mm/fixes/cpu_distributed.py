"""Multi-process training on a machine without a GPU: ``--launcher pytorch`` with gloo.

mmengine 0.10.7 assumes one GPU per process once launched with ``--launcher pytorch``
(``mim train ... --launcher pytorch --gpus N``, ``torchrun``). On a CPU-only torch (or
with ``CUDA_VISIBLE_DEVICES=""``) four things stop it, in this order:

1. ``mmengine/dist/utils.py:_init_dist_pytorch`` calls ``torch.cuda.set_device(local_rank)``
   before ``init_process_group``: ``RuntimeError: Found no NVIDIA driver``.
2. mmdet / mmseg / mmpretrain's ``default_runtime.py`` set
   ``env_cfg.dist_cfg.backend='nccl'``, which needs GPUs; gloo is the CPU backend.
3. ``Runner.wrap_model`` (``mmengine/runner/runner.py``) builds
   ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``; torch's DDP refuses
   ``device_ids`` for a module on the CPU.
4. SyncBN (``norm_cfg=dict(type='SyncBN')``, mmseg's heads, our DeepLabV3 configs):
   torch's DDP refuses ``nn.SyncBatchNorm`` on a CPU module ("SyncBatchNorm layers only
   work with GPU modules", ``DistributedDataParallel._passing_sync_batchnorm_handle``)
   and ``nn.SyncBatchNorm.forward`` raises "SyncBatchNorm expected input tensor to be on
   GPU" when a process group exists. (Single-process, mmengine turns SyncBN back into BN.)

Importing this module (a config lists it in ``custom_imports``; ``import mobileone_mm``
alone does not) runs ``enable_cpu_distributed()``, which adapts mmengine where it would
fail, and only when CUDA is not available: it skips ``set_device`` and uses gloo instead
of nccl (1, 2), drops ``device_ids`` for a CPU module (3), and swaps each
``nn.SyncBatchNorm`` of a model that ``MMDistributedDataParallel`` wraps on the CPU for
``CPUSyncBatchNorm`` (4), the same statistics synchronised with gloo all-reduces (same
parameters, buffers and state-dict keys). With a GPU nothing changes. Nothing in
site-packages is edited.
"""

import functools
import logging
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from ..models.sync_batchnorm import convert_to_cpu_sync_batchnorm

_ENABLED = False


def _info(message: str):
    from mmengine.logging import print_log

    print_log(message, logger='current', level=logging.INFO)


def _other_accelerator() -> bool:
    from mmengine.device import is_mlu_available, is_musa_available, is_npu_available

    return is_mlu_available() or is_npu_available() or is_musa_available()


def enable_cpu_distributed() -> bool:
    """Adapt mmengine's distributed start-up and DDP wrapping to a CPU-only torch (see
    the module docstring). Idempotent; does nothing when CUDA is available. Returns
    whether the adaptation is active."""
    global _ENABLED
    if torch.cuda.is_available():
        return False
    if _ENABLED:
        return True
    import mmengine.dist.utils as dist_utils
    from mmengine.model import MMDistributedDataParallel

    original_init_dist = dist_utils._init_dist_pytorch

    @functools.wraps(original_init_dist)
    def _init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if torch.cuda.is_available() or init_backend != 'torch' or _other_accelerator():
            return original_init_dist(backend, init_backend=init_backend, **kwargs)
        if backend == 'nccl':
            backend = 'gloo'  # nccl needs GPUs; the config's default is nccl
        # no torch.cuda.set_device(LOCAL_RANK): there is no GPU to pick
        dist.init_process_group(backend=backend, **kwargs)
        _info(
            f'mobileone_mm: CPU-only torch, process group on {backend} '
            f'(rank {dist.get_rank()} of {dist.get_world_size()}, '
            f'LOCAL_RANK {os.environ.get("LOCAL_RANK")})'
        )

    dist_utils._init_dist_pytorch = _init_dist_pytorch

    original_ddp_init = MMDistributedDataParallel.__init__

    @functools.wraps(original_ddp_init)
    def __init__(self, module, detect_anomalous_params=False, **kwargs):
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        if on_cpu and not torch.cuda.is_available():
            # torch's DDP: device_ids only for GPU modules; SyncBN only on GPU
            kwargs['device_ids'] = None
            kwargs.pop('output_device', None)
            if any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
                module = convert_to_cpu_sync_batchnorm(module)
                _info(
                    'mobileone_mm: SyncBN layers synchronised over gloo on the CPU '
                    '(CPUSyncBatchNorm)'
                )
        original_ddp_init(self, module, detect_anomalous_params=detect_anomalous_params, **kwargs)

    MMDistributedDataParallel.__init__ = __init__
    _ENABLED = True
    return True


enable_cpu_distributed()
