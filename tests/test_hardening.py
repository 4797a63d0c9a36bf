"""Hardening: fusion checked on hundreds of random settings (hypothesis, derandomized),
bad inputs that each get a message naming the problem, atomic writes that survive
SIGKILL, and training checkpoints that survive a killed run.

Where the other bad-input cases live: unknown / bad dict arch, out_indices, strides,
dilations, frozen_stages, in_channels=0 (test_backbone.test_bad_arguments_are_named);
wrong channel count (test_backbone.test_wrong_input_channels_is_named); another arch,
another model (test_weights.test_foreign_model_and_wrong_arch_are_refused,
test_pretrained_names_both_archs_and_missing_keys, test_deploy.test_bad_input_gets_a_clear_error);
truncated, empty, not a checkpoint, payload (test_weights.test_bad_files_get_clear_errors);
fused into train form and back through Pretrained and the deploy tool
(test_weights.test_pretrained_fused_and_unfused_forms,
test_deploy.test_random_inputs_without_data_and_fused_checkpoint_left_alone) and through
load_state_dict / load_from (here);
switch_to_deploy in train mode (test_backbone.test_switch_in_train_mode_warns).
"""

import copy
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import deque
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import REPO, Payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_mm import (
    CheckpointError,
    MobileOne,
    MobileOneBlock,
    load_checkpoint_file,
    reparameterize_model,
    save_checkpoint,
)
from mobileone_mm.checkpoints.io import TEMP_MARK, atomic_file, remove_stale_temp_files
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


def rel_error(actual, expected) -> float:
    return (
        (actual.double() - expected.double()).abs().max()
        / expected.double().abs().max().clamp_min(1e-30)
    ).item()


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


# ---------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(arch=['s0']), 'must be a name or a dict'),
        (
            dict(
                arch=dict(
                    num_blocks=[1, 1, 1, 1],
                    width_factor=[1, 1, 1, 0.001],
                    num_conv_branches=[1] * 4,
                    num_se_blocks=[0] * 4,
                )
            ),
            'no channels',
        ),
        (
            dict(
                arch=dict(
                    num_blocks=[1, 0, 1, 1],
                    width_factor=[1] * 4,
                    num_conv_branches=[1] * 4,
                    num_se_blocks=[0] * 4,
                )
            ),
            'at least one block',
        ),
        (
            dict(
                arch=dict(
                    num_blocks=[1, 1, 1, 1.5],
                    width_factor=[1] * 4,
                    num_conv_branches=[1] * 4,
                    num_se_blocks=[0] * 4,
                )
            ),
            'must be integers',
        ),
        (dict(out_indices='3'), 'out_indices must be an int'),
        (dict(strides=(2, 2, 2, 0)), 'values must be in'),
        (dict(dilations=(1, 1, 1)), 'dilations must be 4 ints'),
        (dict(dilations=(1, 1, 1, 2.0)), 'dilations must be 4 ints'),
        (dict(frozen_stages=-2), 'frozen_stages must be -1'),
        (dict(frozen_stages='1'), 'frozen_stages must be -1'),
        (dict(in_channels=3.0), 'in_channels must be a positive int'),
    ],
)
def test_more_bad_arguments_are_named(kwargs, message):
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        MobileOne(**kwargs)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(kernel_size=2), 'kernel_size must be an odd positive int'),
        (dict(kernel_size=0), 'kernel_size must be an odd'),
        (dict(stride=0), "'stride': 0"),
        (dict(num_branches=0), "'num_branches': 0"),
        (dict(groups=3), 'groups=3 must divide'),
        (dict(out_channels=8, identity=True), 'identity branch needs'),
        (dict(stride=2, identity=True), 'identity branch needs'),
    ],
)
def test_bad_block_arguments_are_named(kwargs, message):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    with pytest.raises(ValueError, match=message):
        MobileOneBlock(**{**args, **kwargs})


def test_input_too_small_is_named_with_the_minimum():
    """In eval mode any size >= 1 x 1 runs (stride-2 convs with padding round up, never to
    0). In training mode the BN of a stage whose map is 1 x 1 for a batch of one has one
    value per channel, which torch refuses deep inside; we say which stage and what to do."""
    model = MobileOne('s0', out_indices=(0, 1, 2, 3))
    with torch.no_grad():
        outs = model.eval()(torch.rand(1, 3, 1, 1))
    assert [tuple(o.shape[2:]) for o in outs] == [(1, 1)] * 4
    model.train()
    with pytest.raises(
        ValueError,
        match=r'stage4 \(stride 32\) sees a 1 x 1 map.*batch of 2 '
        r'or more.*larger than 32 x 32',
    ):
        model(torch.rand(1, 3, 32, 32))
    model(torch.rand(1, 3, 33, 32))  # 2 x 1 at stride 32: fine
    model(torch.rand(2, 3, 16, 16))  # two values per channel: fine
    os16 = MobileOne('s0', strides=(2, 2, 2, 1), dilations=(1, 1, 1, 2)).train()
    with pytest.raises(ValueError, match=r'stage4 \(stride 16\)'):
        os16(torch.rand(1, 3, 16, 16))
    # frozen (eval-mode) stages do not count; a deploy model has no BN
    MobileOne('s0', frozen_stages=4).train()(torch.rand(1, 3, 32, 32))
    MobileOne('s0', deploy=True).train()(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='empty input'):
        model.eval()(torch.rand(1, 3, 0, 8))
    with pytest.raises(ValueError, match=r'in_channels=1\)'):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r'expects input \(N, 3, H, W\), got \(3, 32, 32\)'):
        model(torch.rand(3, 32, 32))


def test_bn_without_running_stats_cannot_fuse():
    block = MobileOneBlock(
        4, 4, 3, groups=4, norm_cfg=dict(type='BN', track_running_stats=False)
    ).eval()
    with pytest.raises(ValueError, match='track_running_stats=False'):
        block.switch_to_deploy()


def test_switch_to_deploy_in_train_mode_warns_and_uses_running_statistics():
    model = randomize_bn(MobileOne('s0'), 0, gamma_range=(-2.0, 2.0))
    x = torch.rand(2, 3, 64, 64)
    reference = copy.deepcopy(model).eval()(x)[0]
    with pytest.warns(UserWarning, match='running statistics'):
        model.train().switch_to_deploy()
    assert rel_error(model.eval()(x)[0], reference) <= 1e-5


def test_train_form_weights_fuse_on_load_into_a_deploy_model(tmp_path):
    """Every load path (torch strict, mmengine's non-strict load_checkpoint as load_from /
    `mim test --checkpoint` use it) fuses train-form weights into a deploy=True model."""
    from mmengine.runner import load_checkpoint

    train = randomize_bn(
        MobileOne('s0', out_indices=(0, 1, 2, 3)), 5, gamma_range=(-2.0, 2.0)
    ).eval()
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        expected = train(x)
    deploy = MobileOne('s0', out_indices=(0, 1, 2, 3), deploy=True).eval()
    assert not deploy.load_state_dict(train.state_dict(), strict=True).missing_keys
    save_checkpoint(
        {'state_dict': {f'backbone.{k}': v for k, v in train.state_dict().items()}},
        tmp_path / 'train_form.pth',
    )
    wrapped = nn.Module()
    wrapped.backbone = MobileOne('s0', out_indices=(0, 1, 2, 3), deploy=True).eval()
    load_checkpoint(wrapped, str(tmp_path / 'train_form.pth'), strict=False)
    with torch.no_grad():
        for model in (deploy, wrapped.backbone):
            for a, e in zip(model(x), expected):
                assert rel_error(a, e) <= 1e-5


@pytest.mark.parametrize('strict', [True, False])
@pytest.mark.parametrize(
    'dropped',
    [
        'stage2.3.branch_norm.',  # one block's identity branch
        'stage1.0.branch_scale.',  # one block's 1x1 branch
        '.branch_conv_list.3.',  # every block's 4th conv branch
        'stage3.5.branch_conv_list.0.norm.',  # one BN of one branch
    ],
)
def test_train_form_weights_missing_a_branch_are_refused_by_a_deploy_model(dropped, strict):
    """Fusing on load needs every branch of the train form: with one missing, the fused
    conv would be another function (29 % to 94 % of the output off), while the strict
    load reported every key matched (issue 14, bad case 1)."""
    state = {k: v for k, v in MobileOne('s0').state_dict().items() if dropped not in k}
    with pytest.raises(CheckpointError, match=r'missing \[.*branch.*\].*every branch'):
        MobileOne('s0', deploy=True).load_state_dict(state, strict=strict)
    with pytest.raises(RuntimeError, match='Missing key'):  # the train form refuses it too
        MobileOne('s0').load_state_dict(state, strict=True)


def test_float64_train_form_weights_fuse_on_load_in_float64():
    """Fuse-on-load keeps the weights' precision: a float64 deploy model loaded from
    float64 train-form weights equals the train form to float64 rounding (it used to go
    through a float32 block: ~1e-7)."""
    train = randomize_bn(MobileOne('s0'), 7).double().eval()
    deploy = MobileOne('s0', deploy=True).double().eval()
    deploy.load_state_dict(train.state_dict())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert rel_error(deploy(x)[0], train(x)[0]) <= 1e-12


def test_fused_weights_into_a_train_model_are_refused_with_the_fix(tmp_path):
    """Not even a non-strict load (mmengine's load_from) may leave a train-form backbone
    at its random init because the checkpoint was fused."""
    from mmengine.runner import load_checkpoint

    fused = reparameterize_model(MobileOne('s0').eval())
    with pytest.raises(
        CheckpointError,
        match=r'stage0\.branch_reparam: .*deploy \(fused\) form '
        r'.*deploy=True',
    ):
        MobileOne('s0').load_state_dict(fused.state_dict(), strict=False)
    save_checkpoint({'state_dict': fused.state_dict()}, tmp_path / 'fused.pth')
    with pytest.raises(CheckpointError, match='cannot be split back into branches'):
        load_checkpoint(MobileOne('s0'), str(tmp_path / 'fused.pth'), strict=False)


def getattr_chain_pickle(command: str) -> bytes:
    """A hand-written pickle that runs ``command`` using only globals our loader allows
    (builtins.getattr, HistoryBuffer): getattr(HistoryBuffer.__init__, '__globals__')
    .get('__builtins__').get('__import__')('os').system(command), in a dict."""

    def global_(module, name):
        return f'c{module}\n{name}\n'.encode()

    def text(value):  # BINUNICODE: the weights-only unpickler reads protocol >= 2 opcodes
        data = value.encode()
        return b'X' + len(data).to_bytes(4, 'little') + data

    def call(func, *args):
        return func + b'(' + b''.join(args) + b'tR'

    getattr_ = global_('builtins', 'getattr')
    init = call(
        getattr_, global_('mmengine.logging.history_buffer', 'HistoryBuffer'), text('__init__')
    )
    module_globals = call(getattr_, init, text('__globals__'))
    builtins_ = call(call(getattr_, module_globals, text('get')), text('__builtins__'))
    import_ = call(call(getattr_, builtins_, text('get')), text('__import__'))
    system = call(getattr_, call(import_, text('os')), text('system'))
    return b'\x80\x02}(' + text('state_dict') + call(system, text(command)) + b'u.'


def replace_data_pkl(path: Path, data: bytes):
    """Swap the pickle inside a torch zip checkpoint for ``data``."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in entries if n.endswith('/data.pkl'))
    entries[name] = data
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        for entry, content in entries.items():
            archive.writestr(entry, content)


@pytest.mark.parametrize(
    'writer',
    ['raw_pickle', 'raw_pickle_protocol_4', 'legacy_torch', 'zip_torch_nested', 'getattr_chain'],
)
def test_payload_checkpoints_never_run(writer, tmp_path):
    """Pickles that would run `touch MARKER` on load, in every container torch reads: a
    bare pickle, torch's legacy format, a nested entry of a zip checkpoint, and a chain
    through builtins.getattr. Each is refused with a CheckpointError, by our loader, by
    mmengine's (which we route through ours) and by init_cfg=Pretrained, and the marker
    never appears."""
    from mmengine.runner import CheckpointLoader

    import mobileone_mm.fixes.safe_loading  # noqa: F401  (routes mmengine through ours)

    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    message = 'Refusing to load .*(asks for|calls) `'
    if writer == 'raw_pickle':
        path.write_bytes(pickle.dumps({'state_dict': Payload(marker)}, protocol=2))
    elif writer == 'raw_pickle_protocol_4':  # torch stops at the first FRAME opcode
        path.write_bytes(pickle.dumps({'state_dict': Payload(marker)}, protocol=4))
        message = 'not a readable PyTorch checkpoint'
    elif writer == 'legacy_torch':
        torch.save(
            {'state_dict': {'w': torch.ones(1)}, 'meta': Payload(marker)},
            path,
            _use_new_zipfile_serialization=False,
        )
    elif writer == 'zip_torch_nested':
        torch.save(
            {'state_dict': {'w': torch.ones(1)}, 'meta': {'hist': [1, {'x': Payload(marker)}]}},
            path,
        )
    else:
        control = tmp_path / 'control'
        pickle.loads(getattr_chain_pickle(f'touch {control}'))  # the payload is live
        assert control.exists()
        torch.save({'state_dict': {'w': torch.ones(1)}}, path)
        replace_data_pkl(path, getattr_chain_pickle(f'touch {marker}'))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError):
        CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(CheckpointError):
        MobileOne('s0', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()
    assert not marker.exists()


def test_every_bad_checkpoint_through_pretrained(tmp_path):
    """The same files that load_checkpoint_file refuses, through the path users take
    (init_cfg=Pretrained): the error names the file and the problem."""
    good = {f'backbone.{k}': v for k, v in MobileOne('s0').state_dict().items()}
    torch.save(good, tmp_path / 'good.pth')
    data = (tmp_path / 'good.pth').read_bytes()
    files = {
        'empty.pth': (b'', 'is empty'),
        'truncated.pth': (data[: len(data) // 3], 'truncated or corrupted'),
        'notes.txt': (b'hello\n', 'not a readable PyTorch checkpoint'),
        'list.pth': (None, 'holds a list, not a checkpoint dict'),
        'other_model.pth': (None, 'Not a MobileOne checkpoint'),
        's1.pth': (None, 'MobileOne-s1 weights but the model is MobileOne-s0'),
    }
    torch.save([torch.ones(1)], tmp_path / 'list.pth')
    torch.save(
        {'conv1.weight': torch.ones(1), 'fc.weight': torch.ones(1)}, tmp_path / 'other_model.pth'
    )
    torch.save(
        {f'backbone.{k}': v for k, v in MobileOne('s1').state_dict().items()}, tmp_path / 's1.pth'
    )
    for name, (content, message) in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        model = MobileOne('s0', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / name)))
        with pytest.raises(CheckpointError, match=message):
            model.init_weights()


# ------------------------------------------------------------------- atomic writes
WRITER = textwrap.dedent("""
    import os, sys, time, torch
    import mobileone_mm.fixes.durable_checkpoints
    from mobileone_mm.checkpoints.io import atomic_file, save_checkpoint
    kind, path, version = sys.argv[1], sys.argv[2], int(sys.argv[3])
    checkpoint = dict(version=version, state_dict={
        f'w{i}': torch.full((1 << 19, ), float(version)) for i in range(32)})  # 64 MB
    print('writing', flush=True)
    if kind == 'ours':
        save_checkpoint(checkpoint, path)
    elif kind == 'mmengine':  # the Runner's writer, made atomic by the durable fix
        from mmengine.runner.checkpoint import save_checkpoint as mm_save
        mm_save(checkpoint, path)
    else:  # slow chunks: the kill lands mid-write
        import io
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with atomic_file(path) as f:
            for start in range(0, len(data), len(data) // 40):
                f.write(data[start:start + len(data) // 40])
                time.sleep(0.01)
    print('done', flush=True)
""")


def _temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['ours', 'mmengine', 'chunked'])
def test_writer_killed_midway_leaves_old_or_new_file(kind, tmp_path):
    """A process writing a 64 MB checkpoint over an existing one is SIGKILLed at a
    (seeded) random moment after it starts writing, four times: the target always loads
    and holds the previous version or the new one, whole. Killed writers leave
    `.model.pth.tmp-<host>-<pid>-*` files, which the next write removes."""
    folder = tmp_path / 'ckpt'
    target = folder / 'model.pth'
    save_checkpoint(dict(version=0, state_dict={'w0': torch.zeros(4)}), target)
    script = tmp_path / 'writer.py'
    script.write_text(WRITER)
    rng = random.Random(f'kill-{kind}')
    current, outcomes = 0, []
    for version in range(1, 5):
        child = subprocess.Popen(
            [sys.executable, str(script), kind, str(target), str(version)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS='1'),
        )
        assert child.stdout.readline().strip() == 'writing'
        time.sleep(rng.uniform(0.0, 0.5 if kind == 'chunked' else 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        left = _temp_files(folder)
        assert all(name.startswith('.model.pth.tmp-') for name in left), left
        checkpoint = load_checkpoint_file(target)  # never torn: it loads
        assert checkpoint['version'] in (current, version)
        assert all(
            torch.all(w == float(checkpoint['version'])) for w in checkpoint['state_dict'].values()
        )
        outcomes.append(
            'new' if checkpoint['version'] == version else 'old+temp' if left else 'old'
        )
        current = checkpoint['version']
    if kind == 'chunked':
        assert 'old+temp' in outcomes, outcomes  # the kills did land mid-write
    save_checkpoint(dict(version=99, state_dict={}), target)  # the next write cleans up
    assert sorted(p.name for p in folder.iterdir()) == ['model.pth']
    assert load_checkpoint_file(target)['version'] == 99


def test_stale_temp_files_of_live_or_foreign_writers_are_kept(tmp_path):
    target = tmp_path / 'model.pth'
    import socket

    host = socket.gethostname()
    live = tmp_path / f'.model.pth{TEMP_MARK}{host}-{os.getpid()}-abc'
    foreign = tmp_path / f'.model.pth{TEMP_MARK}otherhost-1-abc'
    dead_child = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    )
    dead = tmp_path / f'.model.pth{TEMP_MARK}{host}-{dead_child.stdout.strip()}-abc'
    unrelated = tmp_path / '.other.pth.tmp-x'
    for path in (live, foreign, dead, unrelated):
        path.write_bytes(b'partial')
    assert remove_stale_temp_files(target) == [str(dead)]
    assert live.exists() and foreign.exists() and unrelated.exists()


def test_atomic_file_error_keeps_the_old_file(tmp_path):
    target = tmp_path / 'config.py'
    target.write_text('old = 1\n')
    with pytest.raises(RuntimeError):
        with atomic_file(target, 'w') as f:
            f.write('new = ')
            raise RuntimeError('interrupted')
    assert target.read_text() == 'old = 1\n'
    assert os.listdir(tmp_path) == ['config.py']


# ------------------------------------------------------- training checkpoints (mmengine)
def checkpoint_named(name: str) -> dict:
    """A checkpoint as training writes one (weights and meta), its name in the meta."""
    return dict(state_dict={'weight': torch.zeros(1)}, meta=dict(name=name))


class FakeRunner:
    """What CheckpointHook._save_checkpoint_with_step uses of the Runner."""

    def __init__(self, work_dir, fail: bool):
        from mmengine.logging import MessageHub

        self.work_dir, self.fail = str(work_dir), fail
        self.message_hub = MessageHub.get_instance(f'durable-{work_dir}')

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        if self.fail:  # the process dies while writing the new checkpoint
            raise KeyboardInterrupt('killed while saving')
        save_checkpoint(checkpoint_named(filename), os.path.join(out_dir, filename))


def checkpoint_hook(work_dir):
    from mmengine.fileio import get_file_backend
    from mmengine.hooks import CheckpointHook

    hook = CheckpointHook(interval=1, max_keep_ckpts=1)
    hook.out_dir, hook.file_backend = str(work_dir), get_file_backend(str(work_dir))
    hook.keep_ckpt_ids = deque([1], 1)
    save_checkpoint(checkpoint_named('epoch_1.pth'), work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    return hook


def test_checkpoint_hook_deletes_the_old_checkpoint_only_after_saving(tmp_path):
    """mmengine's CheckpointHook (max_keep_ckpts=1) deletes epoch_1.pth before writing
    epoch_2.pth: a kill in between leaves last_checkpoint naming a deleted file. With
    mobileone_mm.fixes.durable_checkpoints imported, the deletion waits until the new
    checkpoint is written."""
    from mmengine.hooks import CheckpointHook
    from mmengine.runner.runner import find_latest_checkpoint

    import mobileone_mm.fixes.durable_checkpoints  # noqa: F401

    upstream = CheckpointHook._save_checkpoint_with_step.__wrapped__
    (tmp_path / 'upstream').mkdir()
    hook = checkpoint_hook(tmp_path / 'upstream')
    with pytest.raises(KeyboardInterrupt):
        upstream(hook, FakeRunner(tmp_path / 'upstream', fail=True), 2, {})
    assert not (tmp_path / 'upstream' / 'epoch_1.pth').exists()  # the trap, guarded

    (tmp_path / 'ours').mkdir()
    work_dir = tmp_path / 'ours'
    hook = checkpoint_hook(work_dir)
    with pytest.raises(KeyboardInterrupt):
        hook._save_checkpoint_with_step(FakeRunner(work_dir, fail=True), 2, {})
    assert find_latest_checkpoint(str(work_dir)) == str(work_dir / 'epoch_1.pth')
    assert load_checkpoint_file(work_dir / 'epoch_1.pth')['meta']['name'] == 'epoch_1.pth'
    hook = checkpoint_hook(work_dir)
    hook._save_checkpoint_with_step(FakeRunner(work_dir, fail=False), 2, {})
    assert sorted(os.listdir(work_dir)) == ['epoch_2.pth', 'last_checkpoint']
    assert find_latest_checkpoint(str(work_dir)) == str(work_dir / 'epoch_2.pth')


def test_deferred_removals_nest(tmp_path):
    """_save_best_checkpoint removes the previous best, saves the new best, then calls
    _save_checkpoint_with_step: the removals of both wait for the outer call's end."""
    from mmengine.fileio import get_file_backend

    from mobileone_mm.fixes.durable_checkpoints import _defer_removals

    for name in ('best_1.pth', 'epoch_1.pth'):
        save_checkpoint({}, tmp_path / name)
    seen = []

    class Hook:
        file_backend = get_file_backend(str(tmp_path))

        @_defer_removals
        def step(self):
            self.file_backend.remove(str(tmp_path / 'epoch_1.pth'))
            save_checkpoint({}, tmp_path / 'epoch_2.pth')
            seen.append(sorted(os.listdir(tmp_path)))

        @_defer_removals
        def best(self):
            self.file_backend.remove(str(tmp_path / 'best_1.pth'))
            save_checkpoint({}, tmp_path / 'best_2.pth')
            self.step()
            seen.append(sorted(os.listdir(tmp_path)))

    Hook().best()
    assert seen == [['best_1.pth', 'best_2.pth', 'epoch_1.pth', 'epoch_2.pth']] * 2
    assert sorted(os.listdir(tmp_path)) == ['best_2.pth', 'epoch_2.pth']
    assert 'remove' not in vars(Hook.file_backend)


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    """last_checkpoint missing (killed before it was written), empty (killed while it was
    written) or naming a file that is gone: --resume takes the newest epoch_/iter_ file."""
    from mmengine.runner.runner import find_latest_checkpoint

    import mobileone_mm.fixes.durable_checkpoints  # noqa: F401

    assert find_latest_checkpoint(str(tmp_path)) is None
    for i, name in enumerate(['epoch_1.pth', 'epoch_2.pth', 'best_coco_bbox_mAP_epoch_9.pth']):
        save_checkpoint({}, tmp_path / name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    newest = str(tmp_path / 'epoch_2.pth')
    assert find_latest_checkpoint(str(tmp_path)) == newest
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_latest_checkpoint(str(tmp_path)) == newest
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_7.pth'))
    assert find_latest_checkpoint(str(tmp_path)) == newest
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_1.pth')


def mmdet_train_command(*args):
    import mmdet

    script = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'
    return [
        sys.executable,
        str(script),
        str(REPO / 'configs' / 'detection' / 'ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py'),
        *map(str, args),
    ]


@pytest.mark.slow
def test_training_killed_after_first_checkpoint_resumes(tmp_path):
    """Tiny SSDLite training (what `mim train mmdet` runs), SIGKILLed as soon as its first
    checkpoint file appears (which may be before last_checkpoint is written), then run
    again with --resume: it continues from that checkpoint's epoch and iteration, and ends
    where an uninterrupted run would (2 epochs of K iterations: iteration 2K)."""
    from mobileone_mm.devkit.tiny_data import make_tiny_coco

    make_tiny_coco(tmp_path / 'data' / 'tiny_coco', num_train=8, num_val=2)
    work_dir = tmp_path / 'work'
    options = [
        '--cfg-options',
        'train_dataloader.batch_size=4',
        'train_cfg.max_epochs=2',
        'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.save_best=None',
        'default_hooks.logger.interval=1',
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    log = open(tmp_path / 'killed.log', 'w')
    child = subprocess.Popen(
        mmdet_train_command('--work-dir', work_dir, *options),
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    first = work_dir / 'epoch_1.pth'
    deadline = time.time() + 240
    while not first.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    log.close()
    assert first.exists(), (tmp_path / 'killed.log').read_text()[-3000:]
    assert not (work_dir / 'epoch_2.pth').exists()
    iters = load_checkpoint_file(first)['meta']['iter']  # complete: written atomically
    assert iters > 0

    done = subprocess.run(
        mmdet_train_command('--work-dir', work_dir, '--resume', *options),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f'resumed epoch: 1, iter: {iters}' in output, output[-3000:]
    assert 'Traceback' not in output
    final = load_checkpoint_file(work_dir / 'epoch_2.pth')['meta']
    assert (final['epoch'], final['iter']) == (2, 2 * iters)
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / 'epoch_2.pth')
    assert not (work_dir / 'epoch_1.pth').exists()  # max_keep_ckpts=1, after the save
