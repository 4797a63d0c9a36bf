"""Fusion checked on 500 random block and backbone settings (hypothesis, derandomized:
the same examples in every run): kernel, stride, dilation, groups, branches, SE, channels,
BN statistics, input size; the fused form computes the train form's outputs."""

import copy

import torch
from helpers import rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_mm import (
    MobileOne,
    MobileOneBlock,
    reparameterize_model,
)
from mobileone_mm.devkit.analysis import randomize_bn

# Deterministic in CI: the same examples on every run (derandomize), no example database,
# no per-example deadline (the machine may be loaded).
PROPERTY = dict(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BLOCK_EXAMPLES, BACKBONE_EXAMPLES = 350, 150  # 500 settings in all


bn_values = st.fixed_dictionaries(
    dict(
        seed=st.integers(0, 2**31 - 1),
        mean_std=st.sampled_from([0.0, 0.5, 3.0]),
        var_range=st.sampled_from([(0.9, 1.1), (0.14, 7.4), (0.007, 148.0)]),
        gamma_range=st.sampled_from([(-0.2, 0.2), (-2.0, 2.0), (-6.0, 6.0)]),
        beta_std=st.sampled_from([0.0, 0.2, 2.0]),
    )
)
norm_cfgs = st.builds(
    lambda kind, eps, affine: dict(type=kind, eps=eps, affine=affine),
    st.sampled_from(['BN', 'SyncBN']),
    st.sampled_from([1e-5, 1e-3, 1e-1]),
    st.booleans(),
)


@st.composite
def block_settings(draw):
    kernel = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):  # depthwise, as the backbone's k x k blocks
        groups = in_channels = out_channels = draw(st.integers(1, 12))
    else:
        groups = draw(st.sampled_from([1, 2, 3]))
        in_channels = groups * draw(st.integers(1, 4))
        out_channels = in_channels if draw(st.booleans()) else groups * draw(st.integers(1, 4))
    identity = (in_channels == out_channels and stride == 1) and draw(st.booleans())
    se = draw(
        st.one_of(
            st.none(),
            st.builds(dict, ratio=st.sampled_from([1, 2, 4]), divisor=st.sampled_from([1, 4])),
        )
    )
    return dict(
        block=dict(
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel,
            stride=stride,
            dilation=draw(st.sampled_from([1, 2, 3])),
            groups=groups,
            num_branches=draw(st.integers(1, 4)),
            identity=identity,
            se_cfg=se,
            norm_cfg=draw(norm_cfgs),
            act_cfg=dict(type=draw(st.sampled_from(['ReLU', 'GELU', 'SiLU']))),
        ),
        bn=draw(bn_values),
        batch=draw(st.integers(1, 3)),
        size=(draw(st.integers(1, 13)), draw(st.integers(1, 13))),
    )


@settings(max_examples=BLOCK_EXAMPLES, **PROPERTY)
@given(block_settings())
def test_property_block_fuses_exactly(setting):
    """Any block (kernel 1/3/5, stride, dilation, groups, branch count, identity, SE,
    BN eps / affine / statistics, input size): the fused float32 block equals the train
    form. Reference: the train form in float64, so that the train form's own float32
    rounding does not count against the fusion. The sum of branches (what fusion
    replaces) agrees to 1e-5 x its max; the block output (after the same SE and
    activation in both forms) to 1e-5 x the larger of its max and the sum's max: an
    activation can shrink the output far below the rounding of its input (GELU(-5))."""
    torch.manual_seed(setting['bn']['seed'])
    block = MobileOneBlock(**setting['block'])
    randomize_bn(block, **setting['bn']).eval()
    x = torch.randn(setting['batch'], setting['block']['in_channels'], *setting['size'])
    with torch.no_grad():
        reference = copy.deepcopy(block).double()
        exact_sum, exact = reference.sum_branches(x.double()), reference(x.double())
        train32 = block(x)
        fused = reparameterize_model(copy.deepcopy(block))
        assert fused.deploy and not any(isinstance(m, _BatchNorm) for m in fused.modules())
        fused_sum, actual = fused.sum_branches(x), fused(x)
    assert actual.shape == exact.shape == train32.shape
    assert rel_error(fused_sum, exact_sum) <= 1e-5
    scale = max(exact.abs().max().item(), exact_sum.abs().max().item(), 1e-30)
    assert (actual.double() - exact).abs().max().item() <= 1e-5 * scale
    assert (actual - train32).abs().max().item() <= 1e-5 * scale


@st.composite
def backbone_settings(draw):
    num_blocks = [draw(st.integers(1, 2)) for _ in range(4)]
    arch = dict(
        num_blocks=num_blocks,
        width_factor=[draw(st.sampled_from([1 / 32, 1 / 16, 0.125])) for _ in range(4)],
        num_conv_branches=[draw(st.integers(1, 3)) for _ in range(4)],
        num_se_blocks=[draw(st.integers(0, n)) for n in num_blocks],
    )
    strides = [draw(st.sampled_from([1, 2])) for _ in range(4)]
    return dict(
        kwargs=dict(
            arch=arch,
            strides=strides,
            dilations=[1 if s == 2 else draw(st.sampled_from([1, 2, 3])) for s in strides],
            out_indices=sorted(draw(st.sets(st.integers(0, 3), min_size=1))),
            norm_cfg=draw(norm_cfgs),
            se_cfg=dict(ratio=draw(st.sampled_from([2, 16]))),
            act_cfg=dict(type=draw(st.sampled_from(['ReLU', 'GELU']))),
        ),
        bn=draw(bn_values),
        batch=draw(st.integers(1, 2)),
        size=(draw(st.integers(5, 40)), draw(st.integers(5, 40))),
    )


@settings(max_examples=BACKBONE_EXAMPLES, **PROPERTY)
@given(backbone_settings())
def test_property_backbone_fuses_exactly(setting):
    """Random small archs (blocks, widths, branches, SE), strides / dilations,
    out_indices, norm settings and input sizes: every output of the fused backbone equals
    the train form's, and the fused weights load strictly into a deploy=True build.
    In float64: with random BN statistics a deep random net amplifies float32 rounding
    chaotically (see test_backbone), which says nothing about the fusion."""
    torch.manual_seed(setting['bn']['seed'])
    model = MobileOne(init_cfg=None, **setting['kwargs'])
    randomize_bn(model, **setting['bn']).double().eval()
    x = torch.randn(setting['batch'], 3, *setting['size'], dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        fused = reparameterize_model(copy.deepcopy(model))
        actual = fused(x)
    assert len(actual) == len(setting['kwargs']['out_indices'])
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert (a - e).abs().max() <= 1e-5 * max(e.abs().max().item(), 1e-12)
    direct = MobileOne(init_cfg=None, deploy=True, **setting['kwargs'])
    direct.load_state_dict(fused.state_dict(), strict=True)
