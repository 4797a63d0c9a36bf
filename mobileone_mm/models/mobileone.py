"""MobileOne: An Improved One millisecond Mobile Backbone (Vasu et al., CVPR 2023,
arXiv 2206.04040), as a multi-scale backbone for OpenMMLab detection and segmentation.

Reading order: the arch table (arch.py), the block (train form: several branches summed;
deploy form: one conv, the fusion math in reparam.py), then the backbone (a stem block
and four stages of depthwise / pointwise block pairs). State-dict keys are those of
mmpretrain's MobileOne in both forms, so its ImageNet checkpoints load unchanged.
"""

from typing import Sequence, Union

import torch
from mmengine.model import BaseModule, Sequential
from mmengine.utils import is_seq_of
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import MODELS
from .arch import NUM_STAGES, arch_name, resolve_arch, stage_channels, stem_channels
from .mobileone_block import MobileOneBlock, _local_batch_norm
from .pretrained import load_pretrained
from .reparam import reparameterize_model


@MODELS.register_module()
class MobileOne(BaseModule):
    """MobileOne backbone with multi-scale outputs.

    Args:
        arch (str | dict): 's0'..'s4', or a dict with the keys of ``ARCH_SETTINGS``
            (num_blocks, width_factor, num_conv_branches, num_se_blocks; four values each).
        in_channels (int): input image channels. Default: 3.
        out_indices (int | Sequence[int]): stages to output, 0..3 = stage1..stage4
            (strides 4, 8, 16, 32); negative values count from the end. Default: (3,).
        strides (Sequence[int]): stride of the first block of each stage. Default: (2, 2,
            2, 2). Output stride 16: (2, 2, 2, 1); 8: (2, 2, 1, 1).
        dilations (Sequence[int]): dilation of each stage's k x k depthwise branches
            (padding = dilation). Default (1, 1, 1, 1); ``atrous_settings(16)`` gives
            OS16, strides (2, 2, 2, 1) and dilations (1, 1, 1, 2); OS8: (2, 2, 1, 1) and
            (1, 1, 2, 4).
        contract_dilation (bool): the first block of each stage (the one that strides in
            the ImageNet model) takes the previous stage's dilation and only the later
            blocks take the stage's own. Default True: this is DeepLab's exact atrous
            rule (torchvision's replace_stride_with_dilation, timm's first_dilation,
            mmseg ResNetV1c's contract_dilation), under which the OS8 / OS16 network
            computes the ImageNet network's features on a denser grid, so the pretrained
            weights keep their meaning. False dilates every block of the stage (mmseg's
            MobileNetV2 convention).
        frozen_stages (int): -1 freezes nothing, 0 the stem, i the stem and stages 1..i.
        norm_eval (bool): keep BN layers in eval mode while training. Default: False.
        norm_cfg (dict): norm layers, e.g. dict(type='SyncBN'). Default: BN.
        act_cfg (dict): activation after each block. Default: ReLU (in place: the sum or SE
            product it follows is not needed for backward; a few % faster).
        se_cfg (dict): squeeze-excite settings of the SE blocks. Default: dict(ratio=16).
        deploy (bool): build the fused (single-conv) form directly. Default: False.
        with_cp (bool): gradient checkpointing of each block's branches. Default: False.
        init_cfg (dict | list[dict]): mmengine init config. ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL)`` accepts mmpretrain, Apple (fused / unfused) and timm
            ImageNet checkpoints and converts them on load (see models/pretrained.py).
    """

    def __init__(
        self,
        arch: Union[str, dict] = 's0',
        in_channels: int = 3,
        out_indices: Union[int, Sequence[int]] = (3,),
        strides: Sequence[int] = (2, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        contract_dilation: bool = True,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm_cfg: dict = dict(type='BN'),
        act_cfg: dict = dict(type='ReLU', inplace=True),
        se_cfg: dict = dict(ratio=16),
        deploy: bool = False,
        with_cp: bool = False,
        init_cfg=(
            dict(type='Kaiming', layer='Conv2d'),
            dict(type='Constant', val=1, layer='_BatchNorm'),
        ),
    ):
        super().__init__(init_cfg=list(init_cfg) if isinstance(init_cfg, tuple) else init_cfg)
        self.arch = resolve_arch(arch)
        self.arch_name = arch_name(self.arch)
        self.out_indices, self.strides, self.dilations = self._check_args(
            in_channels, out_indices, strides, dilations, frozen_stages
        )
        self.in_channels = in_channels
        self.contract_dilation = contract_dilation
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = deploy
        self.out_channels = [stage_channels(self.arch)[i] for i in self.out_indices]

        block_cfg = dict(norm_cfg=norm_cfg, act_cfg=act_cfg, deploy=deploy, with_cp=with_cp)
        channels = stem_channels(self.arch)
        self.stage0 = MobileOneBlock(in_channels, channels, 3, stride=2, **block_cfg)
        for i, out_channels in enumerate(stage_channels(self.arch)):
            previous_dilation = self.dilations[i - 1] if i else 1
            self.add_module(
                f'stage{i + 1}',
                self._make_stage(
                    channels,
                    out_channels,
                    num_blocks=self.arch['num_blocks'][i],
                    num_se_blocks=self.arch['num_se_blocks'][i],
                    num_conv_branches=self.arch['num_conv_branches'][i],
                    stride=self.strides[i],
                    dilation=self.dilations[i],
                    first_dilation=previous_dilation if contract_dilation else self.dilations[i],
                    se_cfg=se_cfg,
                    block_cfg=block_cfg,
                ),
            )
            channels = out_channels

    @staticmethod
    def _make_stage(
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        num_se_blocks: int,
        num_conv_branches: int,
        stride: int,
        dilation: int,
        first_dilation: int,
        se_cfg: dict,
        block_cfg: dict,
    ) -> Sequential:
        """One stage: ``num_blocks`` pairs of a depthwise 3 x 3 and a pointwise 1 x 1
        block, SE on the last ``num_se_blocks`` pairs. The first pair is the downsampling
        one in the ImageNet model: it strides by ``stride``, has no identity branch even
        when made to stop striding, and reads with ``first_dilation`` (the previous
        stage's dilation under contract_dilation) the grid it is given."""
        blocks = []
        for j in range(num_blocks):
            first = j == 0
            common = dict(
                block_cfg,
                num_branches=num_conv_branches,
                se_cfg=se_cfg if j >= num_blocks - num_se_blocks else None,
            )
            blocks.append(
                MobileOneBlock(  # depthwise k x k
                    in_channels,
                    in_channels,
                    3,
                    stride=stride if first else 1,
                    dilation=first_dilation if first else dilation,
                    groups=in_channels,
                    identity=not first,
                    **common,
                )
            )
            blocks.append(
                MobileOneBlock(  # pointwise 1 x 1
                    in_channels, out_channels, 1, **common
                )
            )
            in_channels = out_channels
        return Sequential(*blocks)

    @classmethod
    def _check_args(cls, in_channels, out_indices, strides, dilations, frozen_stages):
        """The arguments' checks, in the order they are reported; returns the resolved
        out_indices, strides and dilations."""
        out_indices = cls._check_out_indices(out_indices)
        strides = cls._check_per_stage('strides', strides, (1, 2))
        dilations = cls._check_per_stage('dilations', dilations, None)
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= NUM_STAGES):
            raise ValueError(
                f'frozen_stages must be -1 (none), 0 (stem) .. {NUM_STAGES}, got {frozen_stages!r}.'
            )
        if not (isinstance(in_channels, int) and in_channels > 0):
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}.')
        return out_indices, strides, dilations

    @staticmethod
    def _check_out_indices(out_indices) -> list:
        indices = [out_indices] if isinstance(out_indices, int) else out_indices
        if not is_seq_of(indices, int) or not indices:
            raise TypeError(
                f'out_indices must be an int or a non-empty sequence of ints '
                f'in -{NUM_STAGES}..{NUM_STAGES - 1}, got {out_indices!r}.'
            )
        bad = [i for i in indices if not -NUM_STAGES <= i < NUM_STAGES]
        if bad:
            raise ValueError(
                f'out_indices {bad} out of range: 0..{NUM_STAGES - 1} select '
                f'stage1..stage{NUM_STAGES} (strides 4..32), negatives count '
                f'from the end.'
            )
        resolved = sorted({i % NUM_STAGES for i in indices})
        if len(resolved) != len(indices):
            raise ValueError(f'out_indices {list(indices)} name a stage twice.')
        return resolved

    @staticmethod
    def _check_per_stage(name: str, values, allowed) -> list:
        if not is_seq_of(values, int) or len(values) != NUM_STAGES:
            raise ValueError(f'{name} must be {NUM_STAGES} ints (one per stage), got {values!r}.')
        bad = [v for v in values if v < 1 or (allowed is not None and v not in allowed)]
        if bad:
            raise ValueError(
                f'{name} {list(values)}: values must be '
                f'{"in " + str(allowed) if allowed else ">= 1"}.'
            )
        return list(values)

    @property
    def stages(self) -> list:
        return [getattr(self, f'stage{i}') for i in range(NUM_STAGES + 1)]

    @property
    def stage_strides(self) -> list:
        """Cumulative stride after the stem and after each stage (2, 4, 8, 16, 32 at OS32)."""
        total, out = 2, [2]
        for stride in self.strides:
            total *= stride
            out.append(total)
        return out

    def _check_input(self, x):
        """Shape and dtype, with the fix. No dtype is cast: like timm's and mmpretrain's
        backbones, the input must have the weights' floating dtype (float32 images from a
        data preprocessor; model.double() for float64). A uint8 image is refused rather
        than cast, since casting would skip the mean / std normalisation."""
        if not isinstance(x, torch.Tensor):
            kind = f'{type(x).__module__}.{type(x).__name__}'.replace('builtins.', '')
            raise TypeError(
                f'MobileOne expects a torch.Tensor (N, {self.in_channels}, H, W), '
                f'got a {kind}: convert it first, e.g. '
                f'torch.from_numpy(x).float() for a normalised numpy image.'
            )
        shape = tuple(int(s) for s in x.shape)  # ints, also while tracing (no tensor(1))
        if len(shape) != 4 or shape[1] != self.in_channels:
            hint = (
                f' (or build the backbone with in_channels={shape[1]})' if len(shape) == 4 else ''
            )
            raise ValueError(
                f'MobileOne expects input (N, {self.in_channels}, H, W), got {shape}{hint}.'
            )
        n, _, h, w = shape
        if n < 1 or h < 1 or w < 1:
            raise ValueError(
                f'MobileOne got an empty input {shape}: batch, height and width must be at least 1.'
            )
        weight = next(self.stage0.parameters())
        if not x.is_floating_point():
            raise TypeError(
                f'MobileOne expects a normalised floating-point image, got '
                f"{x.dtype}: pass it through the model's data preprocessor "
                f'(mean / std), or use x.float() and normalise it yourself.'
            )
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"MobileOne's weights are {weight.dtype} but the input is "
                f'{x.dtype}: convert the input (x.to({weight.dtype})) or the '
                f'model (model.to({x.dtype})).'
            )
        if self.training and not self.deploy:
            self._check_train_size(n, h, w)

    def _check_train_size(self, n, h, w):
        """BN in training mode needs more than one value per channel; the stride-s feature
        map of an h x w input is ceil(h / s) x ceil(w / s)."""
        for i, stride in reversed(list(enumerate(self.stage_strides))):
            values = n * -(-h // stride) * -(-w // stride)
            if values > 1:
                return
            if any(_local_batch_norm(m) for m in self.stages[i].modules()):
                raise ValueError(
                    f'MobileOne in training mode got {n} x {h} x {w} (batch x H x W): stage'
                    f'{i} (stride {stride}) sees a 1 x 1 map, and its BatchNorm needs more than '
                    f'one value per channel. Use a batch of 2 or more, or inputs larger than '
                    f'{stride} x {stride} (height or width > {stride}), or eval mode.'
                )

    def forward(self, x):
        self._check_input(x)
        x = self.stage0(x)
        outs = []
        for i, stage in enumerate(self.stages[1:]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True):
        super().train(mode)
        for stage in self.stages[: self.frozen_stages + 1]:
            stage.eval()
            for param in stage.parameters():
                param.requires_grad = False
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def switch_to_deploy(self):
        """Fuse every block into one conv, in place; outputs are unchanged (eval mode)."""
        for stage in self.stages:
            reparameterize_model(stage)
        self.deploy = True

    def init_weights(self):
        """mmengine initialisation, except that a ``Pretrained`` init_cfg goes through
        models/pretrained.py: any published checkpoint format, safe loading, arch
        check, a strict load (missing / unexpected keys refused by name; with
        ``strict=False`` in the init_cfg, logged)."""
        original = self.init_cfg
        cfgs = original if isinstance(original, list) else [original]
        pretrained = [c for c in cfgs if c and c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        self.init_cfg = [c for c in cfgs if c and c.get('type') != 'Pretrained']
        try:
            super().init_weights()
        finally:
            self.init_cfg = original
        for cfg in pretrained:
            load_pretrained(self, **{k: v for k, v in cfg.items() if k != 'type'})
