"""The training form with each block's branches stacked (issue 12's "training at the same
math, faster"), timed by the benchmark's training step."""

import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobileone_mm.models.reparam import pad_to

from ...models.mobileone_block import MobileOneBlock


# Issue 12's "training at the same math, faster": a block's conv + BN branches (the 1 x 1
# kernel zero-padded to k x k) as one convolution with len(branches) x out_channels outputs
# and one F.batch_norm over them, each branch's running statistics updated as its own BN
# would. Measured slower than branch by branch on this CPU (docs/speed.md), so
# the library keeps the plain sum; the benchmark times it for other CPUs to tell.
def _stack_by_group(tensors, groups: int) -> torch.Tensor:
    """Per-output-channel tensors of several branches as one, in (group, branch, channel
    in the group) order: how a grouped convolution lays out its outputs."""
    return torch.stack([t.unflatten(0, (groups, -1)) for t in tensors], 1).flatten(0, 2)


def stacked_sum(block, x):
    """``MobileOneBlock.sum_branches`` of a train-form block with BN layers, computed with
    one convolution and one batch norm for all its conv + BN branches. Not for with_cp:
    recomputation in backward stops once the tensors backward needs exist, before the
    statistics are copied back."""
    out = block.branch_norm(x) if block.branch_norm is not None else 0
    branches = list(block.branch_conv_list)
    if block.branch_scale is not None:
        branches.append(block.branch_scale)
    norms, groups = [b.norm for b in branches], block.groups
    weight = _stack_by_group([pad_to(b.conv.weight, block.kernel_size) for b in branches], groups)
    y = F.conv2d(x, weight, None, block.stride, block.padding, block.dilation, groups)
    mean, var = (
        _stack_by_group([getattr(n, k) for n in norms], groups)
        for k in ('running_mean', 'running_var')
    )
    training = norms[0].training
    y = F.batch_norm(
        y,
        mean,
        var,
        _stack_by_group([n.weight for n in norms], groups),
        _stack_by_group([n.bias for n in norms], groups),
        training,
        norms[0].momentum,
        norms[0].eps,
    )
    if training:  # F.batch_norm updated the stacked copies: back to each branch's BN
        with torch.no_grad():
            means, variances = (
                t.unflatten(0, (groups, len(norms), -1)).unbind(1) for t in (mean, var)
            )
            for norm, norm_mean, norm_var in zip(norms, means, variances):
                norm.running_mean.view(groups, -1).copy_(norm_mean)
                norm.running_var.view(groups, -1).copy_(norm_var)
                norm.num_batches_tracked.add_(1)
    return out + y.unflatten(1, (groups, len(branches), -1)).sum(2).flatten(1, 2)


def with_stacked_branches(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose train-form MobileOne blocks with two or more conv + BN
    branches sum them with ``stacked_sum``; same parameters and state dict."""
    model = copy.deepcopy(model)
    for block in model.modules():
        if (
            isinstance(block, MobileOneBlock)
            and not block.deploy
            and len(block.branch_conv_list) + (block.branch_scale is not None) > 1
        ):
            block.sum_branches = functools.partial(stacked_sum, block)
    return model
