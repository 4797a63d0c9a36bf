"""SyncBN for CPU tensors: the statistics of ``nn.SyncBatchNorm`` over a gloo process
group, for multi-process training without a GPU (torch's SyncBatchNorm runs only on GPUs;
mobileone_mm.fixes.cpu_distributed swaps it in where mmengine wraps a CPU model in DDP)."""

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


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

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        process_group=None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'expected at least 2D input (got {input.dim()}D input)')

    @classmethod
    def from_sync_batchnorm(cls, module: nn.SyncBatchNorm) -> 'CPUSyncBatchNorm':
        """The same layer (the very parameters and buffers) as a CPUSyncBatchNorm."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in (
            'num_features',
            'eps',
            'momentum',
            'affine',
            'track_running_stats',
            'process_group',
        ):
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
        group = self.process_group or (
            dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
        )
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
        local_count = torch.full((1,), input.numel() // max(channels, 1), dtype=input.dtype)
        totals = _AllReduceSum.apply(torch.cat([input.sum(dims), local_count]), group)
        count = totals[-1]
        if count.item() <= 1:
            raise ValueError(
                f'Expected more than 1 value per channel when training, got '
                f'input size {tuple(input.shape)} on each of '
                f'{dist.get_world_size(group)} processes.'
            )
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
