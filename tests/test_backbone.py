"""The MobileOne backbone: shapes, options, exact fusion, bad arguments."""

import copy

import pytest
import torch
import torch.nn as nn

from mobileone_mm import MobileOne, MobileOneBlock, reparameterize_model
from mobileone_mm.models.arch import ARCH_SETTINGS, stage_channels

ARCHS = sorted(ARCH_SETTINGS)
OUTPUT_STRIDES = {
    32: dict(strides=(2, 2, 2, 2), dilations=(1, 1, 1, 1)),
    16: dict(strides=(2, 2, 2, 1), dilations=(1, 1, 1, 2)),
    8: dict(strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4)),
}


def fused_copy(model):
    return reparameterize_model(copy.deepcopy(model))


@pytest.mark.parametrize('arch', ARCHS)
def test_shapes_all_stages(arch):
    model = MobileOne(arch, out_indices=(0, 1, 2, 3)).eval()
    outs = model(torch.rand(1, 3, 64, 96))
    widths = stage_channels(ARCH_SETTINGS[arch])
    assert [o.shape[1] for o in outs] == widths == model.out_channels
    assert [o.shape[2:] for o in outs] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]


def test_s0_widths_match_paper():
    assert stage_channels(ARCH_SETTINGS['s0']) == [48, 128, 256, 1024]
    assert MobileOne('s0').stage0.out_channels == 48
    assert MobileOne('s1').stage0.out_channels == 64


@pytest.mark.slow
@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_fused_equals_train_form(arch, output_stride, randomize_bn, rel_error):
    """Every arch, 224x224 and an odd size, OS 32/16/8: max abs diff <= 1e-5 x max abs.

    S4 runs in float64: a random S4 is chaotic, its 20 SE gates amplify the float32
    rounding of the two forms (1e-7 per block, see the next test) to 1e-3 at the output,
    which says nothing about the fusion. In float64 both forms agree to ~1e-12."""
    dtype = torch.float64 if ARCH_SETTINGS[arch]['num_se_blocks'] != [0] * 4 else torch.float32
    model = MobileOne(arch, out_indices=(0, 1, 2, 3), **OUTPUT_STRIDES[output_stride])
    randomize_bn(model).to(dtype).eval()
    fused = fused_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    for size in [(224, 224), (97, 131)]:
        x = torch.randn(1, 3, *size, dtype=dtype)
        with torch.no_grad():
            expected, actual = model(x), fused(x)
        assert actual[-1].shape[-2] == -(-size[0] // output_stride)
        for e, a in zip(expected, actual):
            assert rel_error(a, e) <= 1e-5


@pytest.mark.parametrize('arch', ['s0', 's4'])
def test_every_block_fuses_to_float32_rounding(arch, randomize_bn, rel_error):
    """Each block of the float32 backbone, fed its real input: the fused conv is within
    1e-5 of the exact (float64) sum of the train-form branches. (Not the float32 train
    form: where its branches cancel, its own rounding error is the larger one. SE and
    activation are the same modules in both forms and are left out: a random SE gate
    turns 1e-7 input rounding into 1e-5 output differences by itself.)"""
    model = randomize_bn(MobileOne(arch, **OUTPUT_STRIDES[8])).eval()
    inputs = {}
    blocks = [m for m in model.modules() if isinstance(m, MobileOneBlock)]
    for block in blocks:
        block.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 65, 49))
        for block in blocks:
            x = inputs[block]
            exact = copy.deepcopy(block).double().sum_branches(x.double())
            assert rel_error(fused_copy(block).sum_branches(x).double(), exact) <= 1e-5


def test_output_stride_8_and_16_feature_sizes():
    for os_, cfg in OUTPUT_STRIDES.items():
        outs = MobileOne('s0', out_indices=(0, 1, 2, 3), **cfg).eval()(torch.rand(1, 3, 64, 64))
        assert outs[-1].shape[-1] == 64 // os_
        assert outs[2].shape[-1] == 64 // min(os_, 16)


def test_dilated_stage_keeps_checkpoint_structure():
    """Stopping a stage's stride must not add an identity branch: ImageNet keys fit."""
    plain = MobileOne('s1').state_dict()
    dilated = MobileOne('s1', **OUTPUT_STRIDES[8]).state_dict()
    assert plain.keys() == dilated.keys()
    assert all(plain[k].shape == dilated[k].shape for k in plain)


def test_deploy_flag_builds_fused_form_with_mmpretrain_keys():
    model = MobileOne('s4', deploy=True)
    keys = model.state_dict().keys()
    assert 'stage0.branch_reparam.weight' in keys
    assert 'stage3.19.se.conv1.conv.weight' in keys
    assert not any('branch_conv_list' in k or 'branch_norm' in k for k in keys)
    assert fused_copy(MobileOne('s4').eval()).state_dict().keys() == keys


def test_switch_to_deploy_is_idempotent_and_in_place(randomize_bn):
    model = randomize_bn(MobileOne('s0')).eval()
    x = torch.rand(1, 3, 64, 64)
    assert reparameterize_model(model) is model and model.deploy
    first = model(x)[0]
    model.switch_to_deploy()
    model.stage1[0].switch_to_deploy()
    assert torch.equal(model(x)[0], first)


def test_switch_in_train_mode_warns():
    block = MobileOneBlock(8, 8, 3, groups=8).train()
    with pytest.warns(UserWarning, match='running statistics'):
        block.switch_to_deploy()


def test_syncbn_model_fuses_single_process(randomize_bn, rel_error):
    model = MobileOne('s0', out_indices=(1, 3), norm_cfg=dict(type='SyncBN'))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    randomize_bn(model).eval()  # SyncBN in eval mode needs no process group
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        actual = reparameterize_model(model)(x)
    assert all(rel_error(a, e) <= 1e-5 for a, e in zip(actual, expected))


def test_frozen_stages_and_norm_eval():
    model = MobileOne('s0', frozen_stages=2, norm_eval=True).train()
    for i, stage in enumerate(model.stages):
        frozen = i <= 2
        assert all(p.requires_grad != frozen for p in stage.parameters())
        assert stage.training != frozen
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    model = MobileOne('s0', frozen_stages=0).train()
    assert not model.stage0.training and model.stage1.training
    assert all(p.requires_grad for p in model.stage1.parameters())


def test_with_cp_gives_same_outputs_and_gradients():
    torch.manual_seed(1)
    model = MobileOne('s0', out_indices=(2, 3))
    model_cp = copy.deepcopy(model)
    model_cp.apply(lambda m: setattr(m, 'with_cp', True) if isinstance(m, MobileOneBlock) else 0)
    assert MobileOne('s0', with_cp=True).stage1[0].with_cp
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    for m in (model, model_cp):
        sum(o.sum() for o in m.train()(x)).backward()
    assert torch.allclose(
        model.stage0.branch_scale.conv.weight.grad,
        model_cp.stage0.branch_scale.conv.weight.grad,
        rtol=1e-4,
        atol=1e-6,
    )


def test_dict_arch_and_act_cfg(randomize_bn, rel_error):
    arch = dict(
        num_blocks=[1, 2, 2, 1],
        width_factor=[0.5, 0.5, 0.5, 0.5],
        num_conv_branches=[2, 1, 3, 1],
        num_se_blocks=[0, 1, 0, 1],
    )
    model = MobileOne(arch, out_indices=-1, act_cfg=dict(type='GELU'), se_cfg=dict(ratio=4))
    assert model.arch_name.startswith('custom') and model.out_indices == [3]
    assert len(model.stage2) == 4 and len(model.stage1[0].branch_conv_list) == 2
    assert isinstance(model.stage1[0].act, nn.GELU)
    randomize_bn(model).eval()
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert rel_error(fused_copy(model)(x)[0], model(x)[0]) <= 1e-5


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(arch='s9'), "Unknown MobileOne arch 's9'"),
        (dict(arch=dict(num_blocks=[1, 1, 1, 1])), 'needs exactly the keys'),
        (
            dict(
                arch=dict(
                    num_blocks=[1, 1, 1],
                    width_factor=[1, 1, 1],
                    num_conv_branches=[1] * 3,
                    num_se_blocks=[0] * 3,
                )
            ),
            'must be 4 numbers',
        ),
        (
            dict(
                arch=dict(
                    num_blocks=[1, 1, 1, 1],
                    width_factor=[1] * 4,
                    num_conv_branches=[1] * 4,
                    num_se_blocks=[0, 0, 2, 0],
                )
            ),
            'has 2 SE blocks but 1 blocks',
        ),
        (dict(out_indices=(0, 4)), r'out_indices \[4\] out of range'),
        (dict(out_indices=(-5,)), 'out of range'),
        (dict(out_indices=(1, -3)), 'name a stage twice'),
        (dict(out_indices=()), 'non-empty sequence'),
        (dict(strides=(2, 2, 3, 2)), 'strides'),
        (dict(strides=(2, 2, 2)), 'strides must be 4 ints'),
        (dict(dilations=(1, 1, 0, 1)), 'dilations'),
        (dict(frozen_stages=5), 'frozen_stages must be -1'),
        (dict(in_channels=0), 'in_channels'),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        MobileOne(**kwargs)


def test_wrong_input_channels_is_named():
    with pytest.raises(ValueError, match=r'expects input \(N, 3, H, W\)'):
        MobileOne('s0')(torch.rand(1, 4, 32, 32))
