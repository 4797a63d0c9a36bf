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

``enable_cpu_distributed()``, run when ``mobileone_mm`` is imported (configs do, through
``custom_imports``), adapts mmengine where it would fail, and only when CUDA is not
available: it skips ``set_device`` and uses gloo instead of nccl (1, 2), drops
``device_ids`` for a CPU module (3), and swaps each ``nn.SyncBatchNorm`` of a model that
``MMDistributedDataParallel`` wraps on the CPU for ``CPUSyncBatchNorm`` (4), the same
statistics synchronised with gloo all-reduces (same parameters, buffers and state-dict
keys). With a GPU nothing changes. Nothing in site-packages is edited.
"""
import functools
import logging
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

_ENABLED = False


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the process group: the gradient of a sum taken on every
    rank is the sum of the ranks' gradients (as torch's own SyncBN backward does)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm`` for CPU tensors: batch statistics over all processes of the
    group, computed with two all-reduces (sum and count, then the centred sum of squares),
    differentiable, running statistics updated as torch does (unbiased variance).
    Outside training, or without a process group of more than one, it is plain BN."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'expected at least 2D input (got {input.dim()}D input)')

    @classmethod
    def from_sync_batchnorm(cls, module: nn.SyncBatchNorm) -> 'CPUSyncBatchNorm':
        """The same layer (the very parameters and buffers) as a CPUSyncBatchNorm."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in ('num_features', 'eps', 'momentum', 'affine', 'track_running_stats',
                     'process_group'):
            setattr(new, name, getattr(module, name))
        new.training = module.training
        for name, param in module.named_parameters(recurse=False):
            new.register_parameter(name, param)
        for name, buffer in module.named_buffers(recurse=False):
            new.register_buffer(name, buffer)
        for name in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
            if not hasattr(new, name):
                setattr(new, name, None)
        return new

    def forward(self, input):
        self._check_input_dim(input)
        group = self.process_group or (dist.group.WORLD if dist.is_available()
                                       and dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, channels] + [1] * (input.dim() - 2)
        local_count = torch.full((1, ), input.numel() // max(channels, 1),
                                 dtype=input.dtype)
        totals = _AllReduceSum.apply(torch.cat([input.sum(dims), local_count]), group)
        count = totals[-1]
        if count.item() <= 1:
            raise ValueError(f'Expected more than 1 value per channel when training, got '
                             f'input size {tuple(input.shape)} on each of '
                             f'{dist.get_world_size(group)} processes.')
        mean = totals[:channels] / count
        centred = input - mean.reshape(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / count
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                unbiased = var.detach() * (count / (count - 1))
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        return out


def convert_to_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` of the tree by a CPUSyncBatchNorm, in place
    (sharing parameters and buffers); returns the (possibly new) root."""
    if isinstance(module, nn.SyncBatchNorm):
        return CPUSyncBatchNorm.from_sync_batchnorm(module)
    for name, child in module.named_children():
        new = convert_to_cpu_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


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
        _info(f'mobileone_mm: CPU-only torch, process group on {backend} '
              f'(rank {dist.get_rank()} of {dist.get_world_size()}, '
              f'LOCAL_RANK {os.environ.get("LOCAL_RANK")})')

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
                _info('mobileone_mm: SyncBN layers synchronised over gloo on the CPU '
                      '(CPUSyncBatchNorm)')
        original_ddp_init(self, module, detect_anomalous_params=detect_anomalous_params,
                          **kwargs)

    MMDistributedDataParallel.__init__ = __init__
    _ENABLED = True
    return True
