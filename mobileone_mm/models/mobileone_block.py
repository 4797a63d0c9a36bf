"""The MobileOne block (Vasu et al., CVPR 2023): in its train form several branches summed
(k x k conv + BN branches, a 1x1 scale branch, the identity BN), optional squeeze-excite,
then the activation; in its deploy form one conv. ``switch_to_deploy`` fuses the first into
the second with the math of reparam.py, written once for every branch type.
"""

import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmengine.model import BaseModule, Sequential
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoints.io import CheckpointError
from .reparam import fuse_branches
from .sync_batchnorm import CPUSyncBatchNorm


def make_divisible(value: float, divisor: int) -> int:
    """Round to the nearest multiple of divisor, at least divisor, losing <= 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _local_batch_norm(module: nn.Module) -> bool:
    """A BN layer in training mode whose batch statistics come from this process alone."""
    if not (isinstance(module, _BatchNorm) and module.training):
        return False
    synced = isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm))
    return not (synced and torch.distributed.is_available() and torch.distributed.is_initialized())


class SqueezeExcite(BaseModule):
    """Squeeze-and-excitation gate: x * sigmoid(conv2(relu(conv1(mean(x))))).

    Parameter names (conv1.conv, conv2.conv) and the squeeze width
    (channels // ratio rounded to a multiple of divisor) follow mmpretrain's SELayer.
    """

    def __init__(self, channels: int, ratio: int = 16, divisor: int = 8, init_cfg=None):
        super().__init__(init_cfg)
        squeeze = make_divisible(channels // ratio, divisor)
        self.conv1 = ConvModule(channels, squeeze, 1, act_cfg=dict(type='ReLU'))
        self.conv2 = ConvModule(squeeze, channels, 1, act_cfg=dict(type='Sigmoid'))

    def forward(self, x):
        return x * self.conv2(self.conv1(F.adaptive_avg_pool2d(x, 1)))


class MobileOneBlock(BaseModule):
    """One MobileOne block: act(se(sum of branches)).

    Train form, all branches with the block's stride and groups:
      * ``branch_conv_list``: num_branches x (k x k conv + BN), dilated
      * ``branch_scale``: 1 x 1 conv + BN, when k > 1
      * ``branch_norm``: BN of the input (identity), when the block keeps the shape
    Deploy form: ``branch_reparam``, one k x k conv with bias (see reparam.py).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): odd size k of the k x k branches (1 for a pointwise block,
            which then has no ``branch_scale``).
        stride (int): stride of every branch. Default: 1.
        dilation (int): dilation of the k x k branches (padding = dilation x (k // 2));
            the 1 x 1 scale branch is not dilated. Default: 1.
        groups (int): groups of every conv; ``in_channels`` makes the block depthwise.
            Must divide in_channels and out_channels. Default: 1.
        num_branches (int): number of k x k conv + BN branches (the paper's
            over-parameterisation factor k). Default: 1.
        identity (bool, optional): whether to build the identity branch. Default: when
            in_channels == out_channels and stride == 1. The backbone passes it
            explicitly so that a stage made to stop striding (output stride 8/16) keeps
            the structure, and so the weights, of its ImageNet checkpoint.
        se_cfg (dict, optional): squeeze-excite after the branch sum, the keyword
            arguments of ``SqueezeExcite`` (ratio, divisor); None for none. Default: None.
        norm_cfg (dict): norm layer of each branch. Default: dict(type='BN').
        act_cfg (dict): activation after the (SE-gated) sum. Default: ReLU, in place.
        deploy (bool): build the fused form (``branch_reparam``) directly. Default: False.
        with_cp (bool): recompute the branches in backward (gradient checkpointing) to
            save memory while training. Default: False.
        init_cfg (dict | list[dict], optional): mmengine init config. Default: None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        num_branches: int = 1,
        identity: Optional[bool] = None,
        se_cfg: Optional[dict] = None,
        norm_cfg: dict = dict(type='BN'),
        act_cfg: dict = dict(type='ReLU', inplace=True),
        deploy: bool = False,
        with_cp: bool = False,
        init_cfg=None,
    ):
        super().__init__(init_cfg)
        if identity is None:
            identity = in_channels == out_channels and stride == 1
        self._check_args(
            in_channels, out_channels, kernel_size, stride, dilation, groups, num_branches, identity
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding = dilation * (kernel_size // 2)
        self.groups = groups
        # The train-form structure, kept in deploy form too: loading train-form weights
        # into a deploy-form block needs every branch of it (_fuse_on_load).
        self.num_branches, self.identity = num_branches, identity
        self.deploy = deploy
        self.with_cp = with_cp
        self.norm_cfg = norm_cfg

        if deploy:
            self.branch_reparam = self._conv(kernel_size, bias=True)
        else:
            self.branch_conv_list = nn.ModuleList(
                self._conv_norm(kernel_size, norm_cfg) for _ in range(num_branches)
            )
            self.branch_scale = self._conv_norm(1, norm_cfg) if kernel_size > 1 else None
            self.branch_norm = build_norm_layer(norm_cfg, in_channels)[1] if identity else None
        self.se = SqueezeExcite(out_channels, **se_cfg) if se_cfg else nn.Identity()
        self.act = build_activation_layer(act_cfg)

    @staticmethod
    def _check_args(
        in_channels, out_channels, kernel_size, stride, dilation, groups, num_branches, identity
    ):
        positive = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            stride=stride,
            dilation=dilation,
            groups=groups,
            num_branches=num_branches,
        )
        bad = {k: v for k, v in positive.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ValueError(f'MobileOneBlock: {bad} must be positive ints.')
        if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2):
            raise ValueError(
                f'MobileOneBlock: kernel_size must be an odd positive int (the '
                f'branches are centred on one tap), got {kernel_size!r}.'
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f'MobileOneBlock: groups={groups} must divide in_channels='
                f'{in_channels} and out_channels={out_channels}.'
            )
        if identity and (in_channels != out_channels or stride != 1):
            raise ValueError(
                f'MobileOneBlock: an identity branch needs in_channels == '
                f'out_channels and stride 1, got {in_channels} -> '
                f'{out_channels}, stride {stride}: pass identity=False.'
            )

    def _conv(self, kernel_size: int, bias: bool) -> nn.Conv2d:
        dilation = self.dilation if kernel_size > 1 else 1
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            kernel_size,
            self.stride,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            groups=self.groups,
            bias=bias,
        )

    def _conv_norm(self, kernel_size: int, norm_cfg: dict) -> Sequential:
        conv_norm = Sequential()
        conv_norm.add_module('conv', self._conv(kernel_size, bias=False))
        conv_norm.add_module('norm', build_norm_layer(norm_cfg, self.out_channels)[1])
        return conv_norm

    def sum_branches(self, x):
        """The block before SE and activation: the part that fusion replaces."""
        if self.deploy:
            return self.branch_reparam(x)
        out = self.branch_norm(x) if self.branch_norm is not None else 0
        if self.branch_scale is not None:
            out = out + self.branch_scale(x)
        for branch in self.branch_conv_list:
            out = out + branch(x)
        return out

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self.sum_branches, x, use_reentrant=False)
        else:
            out = self.sum_branches(x)
        return self.act(self.se(out))

    BRANCHES = ('branch_conv_list.', 'branch_scale.', 'branch_norm.')

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Train-form weights into a deploy-form block are fused on load (``load_state_dict``,
        mmengine's ``load_from``, ``mim test --checkpoint``); deploy-form weights into a
        train-form block are refused with the fix, since fusion cannot be undone (a
        non-strict load would otherwise leave the block at its random init silently)."""
        fused = prefix + 'branch_reparam.weight' in state_dict
        branch_keys = [
            k
            for k in state_dict
            if k.startswith(prefix) and k[len(prefix) :].startswith(self.BRANCHES)
        ]
        if self.deploy and not fused and branch_keys:
            self._fuse_on_load(state_dict, prefix, branch_keys)
        elif not self.deploy and fused:
            raise CheckpointError(
                f'{prefix}branch_reparam: the weights are in deploy (fused) form but the '
                f'model is in train form, and fused weights cannot be split back into '
                f'branches. Build the model with deploy=True (model.backbone.deploy=True, '
                f'as in the config tools/reparameterize.py writes), or load the train-form '
                f'checkpoint.'
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _fuse_on_load(self, state_dict, prefix, branch_keys):
        """Fuse this block's train-form weights; every branch the train form has must be
        there (a missing branch would silently change the fused function)."""
        train_form = MobileOneBlock(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.dilation,
            self.groups,
            self.num_branches,
            identity=self.identity,
            norm_cfg=self.norm_cfg,
        )
        local = {k[len(prefix) :]: state_dict[k] for k in branch_keys}
        # in the weights' own precision: float64 weights are fused in float64
        train_form.to(local[next(k for k in local if k.endswith('.weight'))].dtype)
        missing, unexpected = train_form.load_state_dict(local, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f'{prefix}: the train-form weights do not fit this block '
                f'({self.in_channels}->{self.out_channels} channels, '
                f'{self.kernel_size}x{self.kernel_size}, {self.num_branches} conv branches'
                f'{", identity branch" if self.identity else ""}): missing {missing}, '
                f'unexpected {unexpected}. Fusing needs every branch of the train form; '
                f'use the complete checkpoint of this arch.'
            )
        train_form.eval().switch_to_deploy()
        for key in branch_keys:
            del state_dict[key]
        state_dict[prefix + 'branch_reparam.weight'] = train_form.branch_reparam.weight.data
        state_dict[prefix + 'branch_reparam.bias'] = train_form.branch_reparam.bias.data

    def switch_to_deploy(self):
        """Fuse all branches into ``branch_reparam``, in place. Uses the BN running
        statistics, as eval mode does; idempotent."""
        if self.deploy:
            return
        if self.training:
            warnings.warn(
                'MobileOneBlock.switch_to_deploy() in train mode: the fused conv '
                'uses the BN running statistics (eval-mode behaviour).',
                stacklevel=2,
            )
        reference = self.branch_conv_list[0].conv
        branches = list(self.branch_conv_list)
        if self.branch_scale is not None:
            branches.append(self.branch_scale)
        weight, bias = fuse_branches(
            ((b.conv, b.norm) for b in branches),
            self.branch_norm,
            self.in_channels,
            self.groups,
            self.kernel_size,
            reference.weight.dtype,
        )
        self.branch_reparam = self._conv(self.kernel_size, bias=True).to(reference.weight)
        with torch.no_grad():
            self.branch_reparam.weight.copy_(weight)
            self.branch_reparam.bias.copy_(bias)
        del self.branch_conv_list, self.branch_scale, self.branch_norm
        self.deploy = True
