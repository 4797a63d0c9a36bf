"""The backbone judged from outside its own code (issue 17).

1. ``reference_forward``: MobileOne written again from the paper (arXiv 2206.04040) and
   mmpretrain's layout, with ``torch.nn.functional`` only, reading the tensors of a state
   dict. It shares nothing with ``MobileOneBlock`` / ``MobileOne``, so a mistake in their
   stride, dilation, padding, groups, branches, SE or activation is not repeated here.
   It is itself anchored to mmpretrain's MobileOne at output stride 32.
2. Every arch, a custom arch, output stride 32 / 16 / 8, train and deploy form: the
   backbone equals the reference in float64.
3. The atrous identity (DeepLab): with the first, formerly strided, block of a dilated
   stage at the previous stage's dilation, the OS8 / OS16 network is the ImageNet network
   evaluated on a denser grid; its features taken every 2nd / 4th pixel are the OS32
   features, exactly.
4. The segmentation configs' strides and dilations follow from their names (-d8, -d16).
"""

import copy
import functools
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mobileone_mm import ARCH_SETTINGS, MobileOne, reparameterize_model

# --------------------------------------------------------------------------------------
# The reference forward
# --------------------------------------------------------------------------------------
# Paper, Table 7 / mmpretrain: stage widths 64, 128, 256, 512 times the width factor; the
# stem (one 3x3 stride-2 block with a single conv branch) has min(64, 64 x factor[0]).
PAPER_WIDTHS = (64, 128, 256, 512)
IMAGENET_STRIDES = (2, 2, 2, 2)
BN_EPS = 1e-5


def atrous_settings(output_stride: int):
    """(strides, dilations) of the four stages for an output stride of 32, 16, 8 or 4.

    The stem and every stage halve the resolution in the ImageNet net (2, 4, 8, 16, 32).
    Once the output stride is reached, each later stage stops striding and dilates by the
    product of the strides removed so far (DeepLab; torchvision, timm, mmseg alike)."""
    strides, dilations = [], []
    reached, removed = 2, 1
    for imagenet_stride in IMAGENET_STRIDES:
        if reached * imagenet_stride <= output_stride:
            reached *= imagenet_stride
            strides.append(imagenet_stride)
        else:
            removed *= imagenet_stride
            strides.append(1)
        dilations.append(removed)
    assert reached == output_stride, f'output stride {output_stride} is not reachable'
    return tuple(strides), tuple(dilations)


def depthwise_dilations(num_blocks, strides, dilations, contract_dilation=True):
    """Dilation of each depthwise k x k block, stage by stage.

    contract_dilation=True (exact atrous): the first block of a stage that stopped striding
    (the block that strides in the ImageNet net) keeps the previous stage's dilation, the
    later ones take the stage's. False (mmseg MobileNetV2 style): all take the stage's."""
    out, previous = [], 1
    for n, stride, imagenet_stride, d in zip(num_blocks, strides, IMAGENET_STRIDES, dilations):
        first = previous if (contract_dilation and stride < imagenet_stride) else d
        out.append([first] + [d] * (n - 1))
        previous = d
    return out


class _Tensors:
    """The state dict, with a record of which keys the reference used: at the end every
    key must have been read (a branch the reference does not expect is an error too)."""

    def __init__(self, state_dict):
        self.state_dict = state_dict
        self.used = set()

    def __contains__(self, key):
        return key in self.state_dict

    def __getitem__(self, key):
        self.used.add(key)
        return self.state_dict[key]

    def check_all_used(self):
        unused = sorted(
            k
            for k in self.state_dict
            if k not in self.used and not k.endswith('num_batches_tracked')
        )
        assert not unused, f'state-dict keys the reference has no place for: {unused[:8]}'


def _batch_norm(x, t, prefix):
    return F.batch_norm(
        x,
        t[prefix + 'running_mean'],
        t[prefix + 'running_var'],
        t[prefix + 'weight'],
        t[prefix + 'bias'],
        training=False,
        eps=BN_EPS,
    )


def _block(
    x, t, prefix, kernel_size, stride, dilation, groups, num_conv_branches, identity, se, gate
):
    """act(se(sum of branches)); every k x k branch with the block's stride, dilation and
    groups, padding dilation * (k // 2); the 1 x 1 scale branch undilated, padding 0."""
    dilation = dilation if kernel_size > 1 else 1
    padding = dilation * (kernel_size // 2)
    if prefix + 'branch_reparam.weight' in t:  # deploy form: one conv with bias
        out = F.conv2d(
            x,
            t[prefix + 'branch_reparam.weight'],
            t[prefix + 'branch_reparam.bias'],
            stride,
            padding,
            dilation,
            groups,
        )
    else:
        out = 0
        for j in range(num_conv_branches):
            p = f'{prefix}branch_conv_list.{j}.'
            out = out + _batch_norm(
                F.conv2d(x, t[p + 'conv.weight'], None, stride, padding, dilation, groups),
                t,
                p + 'norm.',
            )
        if kernel_size > 1:
            p = prefix + 'branch_scale.'
            out = out + _batch_norm(
                F.conv2d(x, t[p + 'conv.weight'], None, stride, 0, 1, groups), t, p + 'norm.'
            )
        if identity:
            out = out + _batch_norm(x, t, prefix + 'branch_norm.')
    if se:  # squeeze-excite, before the activation (Apple, mmpretrain, timm)
        p = prefix + 'se.'
        s = out.mean(dim=(2, 3), keepdim=True)
        s = F.relu(F.conv2d(s, t[p + 'conv1.conv.weight'], t[p + 'conv1.conv.bias']))
        s = gate(F.conv2d(s, t[p + 'conv2.conv.weight'], t[p + 'conv2.conv.bias']))
        out = out * s
    return F.relu(out)


def reference_forward(
    state_dict,
    arch,
    x,
    strides=IMAGENET_STRIDES,
    dilations=(1, 1, 1, 1),
    contract_dilation=True,
    gate=torch.sigmoid,
):
    """The four stage outputs of a MobileOne backbone with these weights.

    state_dict: the backbone's (``stage0.``, ``stage{i}.{k}.``), block by block in train
    form (``branch_conv_list`` / ``branch_scale`` / ``branch_norm``) or deploy form
    (``branch_reparam``); arch: dict with num_blocks, width_factor, num_conv_branches,
    num_se_blocks. Stage i is num_blocks[i] pairs (depthwise 3x3, groups = channels;
    pointwise 1x1); the first depthwise block of a stage strides; a block has the identity
    BN branch when it keeps the channels and does not stride in the ImageNet net; the last
    num_se_blocks[i] pairs have SE on both blocks."""
    t = _Tensors(state_dict)
    channels = min(64, int(PAPER_WIDTHS[0] * arch['width_factor'][0]))
    x = _block(x, t, 'stage0.', 3, 2, 1, 1, 1, identity=False, se=False, gate=gate)
    per_block_dilation = depthwise_dilations(
        arch['num_blocks'], strides, dilations, contract_dilation
    )
    outs = []
    for i in range(4):
        width = int(PAPER_WIDTHS[i] * arch['width_factor'][i])
        n, branches = arch['num_blocks'][i], arch['num_conv_branches'][i]
        for j in range(n):
            se = j >= n - arch['num_se_blocks'][i]
            x = _block(
                x,
                t,
                f'stage{i + 1}.{2 * j}.',
                3,
                strides[i] if j == 0 else 1,
                per_block_dilation[i][j],
                channels,
                branches,
                identity=j > 0,
                se=se,
                gate=gate,
            )
            x = _block(
                x,
                t,
                f'stage{i + 1}.{2 * j + 1}.',
                1,
                1,
                1,
                1,
                branches,
                identity=channels == width,
                se=se,
                gate=gate,
            )
            channels = width
        outs.append(x)
    t.check_all_used()
    return outs


# --------------------------------------------------------------------------------------
# Weights and helpers
# --------------------------------------------------------------------------------------
ARCHS = sorted(ARCH_SETTINGS)
CUSTOM_ARCH = dict(
    num_blocks=[1, 2, 2, 2],
    width_factor=[0.5, 0.75, 1.0, 1.0],
    num_conv_branches=[2, 1, 3, 1],
    num_se_blocks=[0, 1, 1, 1],
)
ALL_ARCHS = ARCHS + ['custom']
OUTPUT_STRIDES = [32, 16, 8]


def arch_dict(arch):
    return CUSTOM_ARCH if arch == 'custom' else ARCH_SETTINGS[arch]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random float64 weights, in place. BN statistics and affine values far from the
    identity (mean 0.5 randn, var U(0.25, 1.75), gamma U(0.5, 1.5), beta 0.2 randn), so a
    mistake in any branch shows; SE biases 0.5 randn. Conv weights are random and then
    scaled, layer by layer along a forward pass, so that each conv's output has standard
    deviation one: activations stay of order one through ~50 blocks (plain random weights
    reach 1e13 at S0's stage 4) and SE gate logits spread over sigmoid's curved range
    (|logit| < 3), where a hard-sigmoid or a misplaced gate changes the output."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    model.double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(randn(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(0.5 * randn(m.bias.shape))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.5 * randn(n))
                m.running_var.copy_(torch.rand(n, generator=gen, dtype=torch.float64) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=gen, dtype=torch.float64) + 0.5)
                m.bias.copy_(0.2 * randn(n))

        def unit_output(conv, inputs, out):
            bias = 0 if conv.bias is None else conv.bias.view(1, -1, 1, 1)
            scale = (out - bias).std()
            conv.weight.div_(scale)
            return (out - bias) / scale + bias

        hooks = [
            m.register_forward_hook(unit_output)
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        ]
        try:
            model(image(64, 96, seed=seed + 100))
        finally:
            for hook in hooks:
                hook.remove()
    return model


@functools.lru_cache(maxsize=None)
def random_state_dict(arch):
    """Train-form float64 weights of an arch, shared by every test (read-only)."""
    model = randomize_(MobileOne(arch_dict(arch), out_indices=(0, 1, 2, 3)))
    return {k: v.detach() for k, v in model.state_dict().items()}


def ours(arch, output_stride=32, deploy=False, **kwargs):
    """Our backbone at an output stride, loaded with the arch's random weights, eval."""
    strides, dilations = atrous_settings(output_stride)
    model = (
        MobileOne(
            arch_dict(arch),
            out_indices=(0, 1, 2, 3),
            strides=strides,
            dilations=dilations,
            **kwargs,
        )
        .double()
        .eval()
    )
    model.load_state_dict(random_state_dict(arch), strict=True)
    return reparameterize_model(model) if deploy else model


def rel_error(actual, expected) -> float:
    """max |a - e| / max |e|; refuses an all-zero expectation (nothing to compare)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max()
    assert scale > 0, 'the expected features are all zero: the check would be vacuous'
    return ((actual - expected).abs().max() / scale).item()


def image(height, width, seed=1):
    return torch.randn(
        1, 3, height, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


# --------------------------------------------------------------------------------------
# The reference itself, against mmpretrain (the peer that defines the state-dict layout)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['s0', 's4'])
def test_reference_matches_mmpretrain(arch):
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne

    peer = randomize_(MMPretrainMobileOne(arch, out_indices=(0, 1, 2, 3)), seed=3)
    peer.eval()  # mmpretrain's train() returns None
    x = image(64, 96)
    with torch.no_grad():
        for form in ('train', 'deploy'):
            if form == 'deploy':
                peer.switch_to_deploy()
            expected = peer(x)
            actual = reference_forward(peer.state_dict(), ARCH_SETTINGS[arch], x)
            for stage, (a, e) in enumerate(zip(actual, expected)):
                assert rel_error(a, e) <= 1e-10, (form, stage)


# --------------------------------------------------------------------------------------
# Our backbone against the reference
# --------------------------------------------------------------------------------------
def _check_against_reference(arch, output_stride, size, contract_dilation):
    strides, dilations = atrous_settings(output_stride)
    # the default convention is checked through the default (no argument)
    kwargs = {} if contract_dilation else dict(contract_dilation=False)
    x = image(*size)
    with torch.no_grad():
        expected = reference_forward(
            random_state_dict(arch), arch_dict(arch), x, strides, dilations, contract_dilation
        )
        train_form = ours(arch, output_stride, **kwargs)
        fused = reparameterize_model(copy.deepcopy(train_form))
        for form, model in (('train', train_form), ('deploy', fused)):
            actual = model(x)
            assert len(actual) == 4
            for stage, (a, e) in enumerate(zip(actual, expected)):
                assert rel_error(a, e) <= 1e-10, (form, f'stage{stage + 1}')
            if form == 'deploy':  # the fused weights read by the reference: same network
                again = reference_forward(
                    model.state_dict(), arch_dict(arch), x, strides, dilations, contract_dilation
                )
                for stage, (a, e) in enumerate(zip(again, expected)):
                    assert rel_error(a, e) <= 1e-10, ('fused weights', f'stage{stage + 1}')


@pytest.mark.parametrize('output_stride', OUTPUT_STRIDES)
@pytest.mark.parametrize('arch', ALL_ARCHS)
def test_backbone_equals_reference(arch, output_stride):
    """Default (exact atrous) convention; a non-square input whose sides are not
    multiples of 32 for the small archs."""
    size = (66, 94) if arch in ('s0', 'custom') else (64, 96)
    _check_against_reference(arch, output_stride, size, contract_dilation=True)


@pytest.mark.parametrize('output_stride', [16, 8])
@pytest.mark.parametrize('arch', ['s0', 's4', 'custom'])
def test_backbone_equals_reference_without_contraction(arch, output_stride):
    """contract_dilation=False: every depthwise block of a dilated stage at its dilation."""
    _check_against_reference(arch, output_stride, (64, 96), contract_dilation=False)


# --------------------------------------------------------------------------------------
# The atrous identity
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('output_stride', [16, 8])
@pytest.mark.parametrize('arch', ['s0', 's1', 's2', 's3'])
def test_dilated_backbone_is_imagenet_backbone_on_denser_grid(arch, output_stride):
    """Without SE in the dilated stages, the OS8 / OS16 features at every 2nd / 4th pixel
    are the OS32 features, exactly. Phase 0: a stride-2 k x k conv with padding k // 2
    centres its output o on input pixel 2 o (and the 1 x 1 scale branch reads 2 o), so
    the dense map holds the strided one at the even positions."""
    assert ARCH_SETTINGS[arch]['num_se_blocks'][2:] == [0, 0]
    x = image(96, 128) if arch != 's0' else image(100, 140)  # S0: sides not multiples of 32
    with torch.no_grad():
        for deploy in (False, True):
            sparse = ours(arch, 32, deploy=deploy)(x)
            dense = ours(arch, output_stride, deploy=deploy)(x)
            for stage in range(4):
                imagenet_stride = 4 * 2**stage
                step = imagenet_stride // min(imagenet_stride, output_stride)
                subsampled = dense[stage][..., ::step, ::step]
                assert rel_error(subsampled, sparse[stage]) <= 1e-12, (deploy, stage, step)


# --------------------------------------------------------------------------------------
# The segmentation configs
# --------------------------------------------------------------------------------------
SEG_CONFIGS = sorted((Path(__file__).parents[1] / 'configs' / 'segmentation').glob('*.py'))


def test_there_are_segmentation_configs():
    assert len(SEG_CONFIGS) >= 2


@functools.lru_cache(maxsize=None)
def _backbone_output_shape(arch, strides, dilations, size):
    model = MobileOne(
        arch,
        out_indices=(0, 1, 2, 3),
        strides=list(strides),
        dilations=list(dilations),
        init_cfg=None,
    ).eval()
    with torch.no_grad():
        return tuple(out.shape[-2:] for out in model(torch.zeros(1, 3, *size)))


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=[p.stem for p in SEG_CONFIGS])
def test_segmentation_config_strides_follow_from_name(path):
    from mmengine import Config
    from mmengine.registry import init_default_scope

    init_default_scope('mmseg')
    match = re.search(r'mobileone-(s\d)-d(\d+)_', path.name)
    assert match, f'{path.name}: the name must say the arch and the output stride (-d8 ...)'
    arch, output_stride = match.group(1), int(match.group(2))
    backbone = Config.fromfile(str(path)).model.backbone
    assert backbone.type.endswith('MobileOne') and backbone.arch == arch
    strides, dilations = atrous_settings(output_stride)
    assert (tuple(backbone.strides), tuple(backbone.dilations)) == (strides, dilations)
    assert backbone.get('contract_dilation', True) is True  # the exact atrous default
    # the backbone built from these settings has the output stride of the name
    size = (64, 96)
    shapes = _backbone_output_shape(arch, strides, dilations, size)
    assert shapes[-1] == (size[0] // output_stride, size[1] // output_stride)
