"""Structural re-parameterization: the branch-fusion math, written once.

A MobileOne block at training time sums several branches that all see the same input
with the same stride, dilation and groups:

    y = sum_b BN_b(conv_b(x))          conv_b: k x k, 1 x 1, or the identity

Each branch is a linear map followed by a per-channel affine (BN in eval mode), so each
one is a k x k convolution with bias, and their sum is one convolution:

* conv + BN:  W' = W * gamma / std,  b' = beta - mean * gamma / std,  std = sqrt(var + eps)
* 1 x 1 conv: zero-padded to k x k around the centre tap (exact for any dilation, since
  the centre tap of a dilated kernel has offset 0)
* identity:   a k x k kernel with a single 1 at the centre of each channel's own input
  (within its group), followed by its BN

The arithmetic is done in float64 and cast back, so the fused block equals the
multi-branch block up to the rounding of the float32 forward pass.
"""

from typing import Iterable, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

Tensor = torch.Tensor


def fuse_conv_bn(weight: Tensor, norm: _BatchNorm) -> Tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm (BN, SyncBN, ...) into the conv weight before it."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(
            f'Cannot fuse {norm}: it keeps no running statistics '
            f'(track_running_stats=False), so eval mode normalises with each '
            f"batch's own statistics, which no fixed conv can reproduce. Train "
            f'with track_running_stats=True to re-parameterize.'
        )
    std = (norm.running_var.double() + norm.eps).sqrt()
    gamma = norm.weight.double() if norm.affine else torch.ones_like(std)
    beta = norm.bias.double() if norm.affine else torch.zeros_like(std)
    scale = gamma / std
    return (weight.double() * scale.reshape(-1, 1, 1, 1), beta - norm.running_mean.double() * scale)


def identity_kernel(channels: int, groups: int, kernel_size: int, device=None) -> Tensor:
    """The k x k grouped-conv weight that maps x to itself."""
    in_per_group = channels // groups
    weight = torch.zeros(
        channels, in_per_group, kernel_size, kernel_size, dtype=torch.float64, device=device
    )
    centre = kernel_size // 2
    weight[torch.arange(channels), torch.arange(channels) % in_per_group, centre, centre] = 1
    return weight


def pad_to(weight: Tensor, kernel_size: int) -> Tensor:
    """Zero-pad a smaller (odd) kernel to kernel_size x kernel_size, centred."""
    pad = (kernel_size - weight.shape[-1]) // 2
    return nn.functional.pad(weight, [pad] * 4)


def fuse_branches(
    convs_with_norms: Iterable[Tuple[nn.Conv2d, _BatchNorm]],
    identity_norm: Optional[_BatchNorm],
    channels: int,
    groups: int,
    kernel_size: int,
    dtype: torch.dtype,
) -> Tuple[Tensor, Tensor]:
    """Sum conv+BN branches (any odd kernel <= kernel_size) and an optional BN identity
    branch into the weight and bias of a single kernel_size x kernel_size conv."""
    weight, bias = 0, 0
    for conv, norm in convs_with_norms:
        w, b = fuse_conv_bn(conv.weight, norm)
        weight, bias = weight + pad_to(w, kernel_size), bias + b
    if identity_norm is not None:
        ident = identity_kernel(
            channels, groups, kernel_size, device=identity_norm.running_mean.device
        )
        w, b = fuse_conv_bn(ident, identity_norm)
        weight, bias = weight + w, bias + b
    return weight.to(dtype), bias.to(dtype)


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Switch every re-parameterizable module of a model tree (detector, segmentor,
    classifier, bare backbone) to its deploy form, in place; returns the model.

    Any submodule with a ``switch_to_deploy()`` method is switched (ours, mmpretrain's
    MobileOne / RepVGG blocks, ...). Switching twice is harmless.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f'reparameterize_model expects a torch.nn.Module (a detector, '
            f'segmentor, classifier or backbone), got {type(model).__name__}: '
            f'pass the built model (e.g. MODELS.build(cfg.model)).'
        )
    for module in list(model.modules()):
        switch = getattr(module, 'switch_to_deploy', None)
        if callable(switch):
            switch()
    return model
