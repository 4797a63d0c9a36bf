"""Bad arguments, inputs and weights that each get a message naming the problem: block
and backbone arguments, inputs too small, BN without running statistics, train-form
weights fusing on load into a deploy model (and missing a branch), fused weights into a
train model, pickled payloads, every bad checkpoint through Pretrained.

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
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import Payload, rel_error

from mobileone_mm import (
    CheckpointError,
    MobileOne,
    MobileOneBlock,
    load_checkpoint_file,
    reparameterize_model,
    save_checkpoint,
)
from mobileone_mm.devkit.analysis import randomize_bn


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
