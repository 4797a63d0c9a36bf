"""Checkpoint formats, Pretrained init, safe loading and atomic saving."""

import io
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from apple_layout import to_apple  # tests/ on the path: conftest.py
from helpers import REPO, Payload
from mmengine.logging import MMLogger
from mmengine.runner import CheckpointLoader

import mobileone_mm.fixes.safe_loading  # noqa: F401  (mmengine through our loader)
from mobileone_mm import (
    CheckpointError,
    MobileOne,
    check_arch,
    convert_state_dict,
    load_checkpoint_file,
    save_checkpoint,
)
from mobileone_mm.checkpoints.formats import backbone_state_dict
from mobileone_mm.models.arch import infer_arch


def classifier_state_dict(arch, randomize_bn, deploy=False):
    model = MobileOne(arch, deploy=deploy)
    randomize_bn(model, seed=3)
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    width = model.out_channels[-1]
    state.update({'head.fc.weight': torch.randn(1000, width), 'head.fc.bias': torch.randn(1000)})
    return state


@pytest.mark.parametrize('deploy', [False, True])
@pytest.mark.parametrize('module_prefix', [False, True])
def test_apple_layouts_convert(deploy, module_prefix, randomize_bn):
    state = classifier_state_dict('s4', randomize_bn, deploy=deploy)
    apple = to_apple(state, module_prefix)
    assert any('rbr_skip' in k for k in apple) != deploy
    converted, fmt = convert_state_dict(apple)
    assert fmt == 'apple'
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


def test_arch_is_inferred_from_shapes(randomize_bn):
    for arch in ['s0', 's1', 's2', 's3', 's4']:
        backbone = backbone_state_dict(classifier_state_dict(arch, randomize_bn))
        assert infer_arch(backbone) == MobileOne(arch).arch


def test_foreign_model_and_wrong_arch_are_refused(randomize_bn):
    with pytest.raises(CheckpointError, match='Not a MobileOne checkpoint.*another model'):
        convert_state_dict({'conv1.weight': torch.zeros(1), 'layer1.0.bn1.weight': torch.zeros(1)})
    with pytest.raises(CheckpointError, match='MobileOne-s1 weights but the model is MobileOne-s0'):
        converted, _ = convert_state_dict(classifier_state_dict('s1', randomize_bn))
        check_arch(backbone_state_dict(converted), MobileOne('s0').arch)


def pretrained(path, **kwargs):
    return dict(type='Pretrained', checkpoint=str(path), **kwargs)


def test_pretrained_init_every_format(tmp_path, randomize_bn):
    import timm
    from safetensors.torch import save_file

    state = classifier_state_dict('s0', randomize_bn)
    expected = backbone_state_dict(state)
    files = {
        'mmpretrain.pth': dict(state_dict=state, meta=dict(mmpretrain_version='1.2.0')),
        'mobileone_s0_unfused.pth.tar': to_apple(state, module_prefix=True),
    }
    for name, checkpoint in files.items():
        torch.save(checkpoint, tmp_path / name)
    peer = randomize_bn(timm.create_model('mobileone_s0'))
    torch.save(peer.state_dict(), tmp_path / 'timm.pth')
    save_file(peer.state_dict(), str(tmp_path / 'timm.safetensors'))
    for name in files:
        model = MobileOne('s0', init_cfg=pretrained(tmp_path / name))
        model.init_weights()
        loaded = model.state_dict()  # once: state_dict() per key made this test take a minute
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), name
    timm_state = backbone_state_dict(convert_state_dict(peer.state_dict())[0])
    for name in ['timm.pth', 'timm.safetensors']:
        model = MobileOne('s0', init_cfg=pretrained(tmp_path / name))
        model.init_weights()
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in timm_state.items()), name
    # mmpretrain's documented way, with prefix
    model = MobileOne('s0', init_cfg=pretrained(tmp_path / 'mmpretrain.pth', prefix='backbone.'))
    model.init_weights()
    assert torch.equal(
        model.stage4[1].branch_conv_list[0].norm.running_var,
        expected['stage4.1.branch_conv_list.0.norm.running_var'],
    )


def test_pretrained_fused_and_unfused_forms(tmp_path, randomize_bn, rel_error):
    state = classifier_state_dict('s1', randomize_bn)
    torch.save(to_apple(state), tmp_path / 'unfused.pth.tar')
    train_form = MobileOne('s1', init_cfg=pretrained(tmp_path / 'unfused.pth.tar'))
    train_form.init_weights()
    # a train-form checkpoint into a deploy-form model: fused on load
    deploy = MobileOne('s1', deploy=True, init_cfg=pretrained(tmp_path / 'unfused.pth.tar'))
    deploy.init_weights()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_error(deploy.eval()(x)[0], train_form.eval()(x)[0]) <= 1e-5
    # a fused checkpoint cannot be un-fused: explained
    torch.save(
        to_apple({f'backbone.{k}': v for k, v in deploy.state_dict().items()}),
        tmp_path / 'fused.pth.tar',
    )
    with pytest.raises(CheckpointError, match='fused .*deploy=True'):
        MobileOne('s1', init_cfg=pretrained(tmp_path / 'fused.pth.tar')).init_weights()
    model = MobileOne('s1', deploy=True, init_cfg=pretrained(tmp_path / 'fused.pth.tar'))
    model.init_weights()
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0], deploy(x)[0])


def test_pretrained_names_both_archs_and_missing_keys(tmp_path, randomize_bn):
    state = classifier_state_dict('s1', randomize_bn)
    torch.save(state, tmp_path / 's1.pth')
    with pytest.raises(CheckpointError, match='MobileOne-s1 weights but the model is MobileOne-s2'):
        MobileOne('s2', init_cfg=pretrained(tmp_path / 's1.pth')).init_weights()
    # The load is strict (as every load of weights): a part missing or a key left over
    # is named, not logged with the backbone left half at its random init.
    partial = {
        k: v
        for k, v in state.items()
        if k != 'backbone.stage2.3.branch_conv_list.0.norm.running_mean'
    }
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(
        CheckpointError,
        match=r'stage2\.3\.branch_conv_list\.0\.norm without '
        r'running_mean',
    ):
        MobileOne('s1', init_cfg=pretrained(tmp_path / 'partial.pth')).init_weights()
    torch.save({**state, 'backbone.stage2.3.extra.weight': torch.zeros(1)}, tmp_path / 'extra.pth')
    with pytest.raises(CheckpointError, match=r'1 unexpected keys: stage2\.3\.extra\.weight'):
        MobileOne('s1', init_cfg=pretrained(tmp_path / 'extra.pth')).init_weights()
    # strict=False, for weights meant to cover part of the backbone: logged by name
    torch.save(
        {**partial, 'backbone.stage2.3.extra.weight': torch.zeros(1)},
        tmp_path / 'partial_extra.pth',
    )
    logger = MMLogger.get_instance('test_missing_keys')  # the current logger from now on
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    MobileOne(
        's1', init_cfg=pretrained(tmp_path / 'partial_extra.pth', strict=False)
    ).init_weights()
    log = stream.getvalue()
    assert re.search(r'missing .*stage2\.3\.branch_conv_list\.0\.norm\.running_mean', log)
    assert re.search(r'unexpected .*stage2\.3\.extra\.weight', log)
    # what a checkpoint may lack: BN's batch counters (not weights)
    torch.save(
        {k: v for k, v in state.items() if 'num_batches_tracked' not in k},
        tmp_path / 'no_counters.pth',
    )
    model = MobileOne('s1', init_cfg=pretrained(tmp_path / 'no_counters.pth'))
    model.init_weights()
    assert torch.equal(
        model.stage2[3].branch_conv_list[0].norm.running_mean,
        state['backbone.stage2.3.branch_conv_list.0.norm.running_mean'],
    )


def test_bad_files_get_clear_errors(tmp_path, randomize_bn):
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': {}, 'x': Payload(marker)}, tmp_path / 'payload.pth')
    with pytest.raises(CheckpointError, match='Refusing to load .*system'):
        load_checkpoint_file(tmp_path / 'payload.pth')
    with pytest.raises(CheckpointError, match='Refusing'):  # through mmengine as well
        CheckpointLoader.load_checkpoint(str(tmp_path / 'payload.pth'))
    assert not marker.exists()
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match='is empty'):
        load_checkpoint_file(tmp_path / 'empty.pth')
    torch.save(classifier_state_dict('s0', randomize_bn), tmp_path / 'good.pth')
    data = (tmp_path / 'good.pth').read_bytes()
    (tmp_path / 'truncated.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupted'):
        load_checkpoint_file(tmp_path / 'truncated.pth')
    (tmp_path / 'notes.txt').write_text('not a checkpoint\n')
    with pytest.raises(CheckpointError, match='not a .*PyTorch checkpoint'):
        load_checkpoint_file(tmp_path / 'notes.txt')
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint_file(tmp_path / 'missing.pth')


def test_save_checkpoint_is_atomic(tmp_path):
    target = tmp_path / 'out' / 'model.pth'
    save_checkpoint({'a': torch.ones(2)}, target)
    assert torch.equal(load_checkpoint_file(target)['a'], torch.ones(2))
    assert os.listdir(target.parent) == ['model.pth']  # no temp file left behind


@pytest.mark.slow
def test_convert_weights_tool(tmp_path, randomize_bn):
    state = classifier_state_dict('s0', randomize_bn)
    torch.save(to_apple(state), tmp_path / 'apple.pth.tar')
    tool = [sys.executable, str(REPO / 'tools' / 'convert_weights.py')]
    done = subprocess.run(
        tool + [str(tmp_path / 'apple.pth.tar'), str(tmp_path / 'out.pth'), '--arch', 's0'],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert 'apple' in done.stdout and 's0' in done.stdout
    written = load_checkpoint_file(tmp_path / 'out.pth')['state_dict']
    assert written.keys() == state.keys()
    done = subprocess.run(
        tool + [str(tmp_path / 'apple.pth.tar'), str(tmp_path / 'x.pth'), '--arch', 's2'],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and 'model is MobileOne-s2' in done.stderr
    assert not (tmp_path / 'x.pth').exists()
