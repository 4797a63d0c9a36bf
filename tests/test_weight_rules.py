"""The rule for weights, one table: every path that loads weights loads them the same way.

Rows: each loading path x each kind of checkpoint. A path is what a tool or the library
does with a checkpoint file (the safe loader itself, mmengine's loader through the
safe-loading fix, ``load_model``, the tools over it, the ``Pretrained`` init, the
deploy-checkpoint hook, image_demo's inferencer, mmdeploy's export, int8 quantization,
weight conversion). The checkpoints:

* ``module``: a good training checkpoint as mmengine writes it for a model wrapped in
  DistributedDataParallel (keys with the ``module.`` prefix; numpy values and the
  message hub beside the weights), with a config that does not import the safe-loading
  fix: it loads, and what the path made of it holds exactly the good weights (fused
  ones: exactly what fusing the good weights gives);
* ``foreign``: torchvision's ResNet-18: refused, naming its keys;
* ``nan``, ``inf``, ``negative_var``: one corrupt value: refused, naming the entry;
* ``torchscript``, ``torch_export``: a saved program (``torch.jit.save``,
  ``torch.export.save``): refused as such, with the fix.

No refusal passes on torch's advice to load with ``weights_only=False``, and a refusal
writes nothing. Then the outputs side: a graph that yields NaN (exported before the
rule) is refused by onnx_infer and ``predict``, and a NaN prediction by image_demo's
``PhotoDemo``.
"""

import copy
import io
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from helpers import REPO, load_tool
from onnx import numpy_helper
from PIL import Image

from mobileone_mm import CheckpointError, MobileOne, reparameterize_model
from mobileone_mm.checkpoints.io import check_weights, load_checkpoint_file, state_dict_of
from mobileone_mm.fusion.reparameterize import reparameterize_checkpoint
from mobileone_mm.loading.checkpoint import load_model
from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.predict.metadata import export_metadata
from mobileone_mm.predict.photos import PredictError, read_photo
from mobileone_mm.predict.prediction import predict
from mobileone_mm.runtimes.onnx_graphs import export_onnx, load_onnx

BASE = REPO / 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py'
ARCH = dict(
    num_blocks=[1, 1, 1, 1],
    width_factor=[0.25] * 4,
    num_conv_branches=[1] * 4,
    num_se_blocks=[0] * 4,
)
NAN_KEY = 'backbone.stage1.0.branch_conv_list.0.conv.weight'
VAR_KEY = 'backbone.stage2.0.branch_conv_list.0.norm.running_var'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A tiny-arch Flowers classifier (a config that does not import the safe-loading
    fix; a good checkpoint with class names), each kind of checkpoint, a photo, and the
    tiny Flowers set (for int8 calibration)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    from mobileone_mm.devkit.tiny_data import make_tiny_flowers

    d = tmp_path_factory.mktemp('weights')
    config = d / 'tiny.py'
    config.write_text(
        f"_base_ = '{BASE}'\n"
        f'model = dict(backbone=dict(arch=dict(_delete_=True, **{ARCH!r})),\n'
        f'             head=dict(in_channels=128))\n'
        f"custom_imports = dict(_delete_=True, imports=['mobileone_mm'])\n"
        f"data_root = '{d}/flowers'\n"
        f'train_dataloader = dict(dataset=dict(data_root=data_root))\n'
        f'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        f'test_dataloader = val_dataloader\n'
    )
    make_tiny_flowers(d / 'flowers', num_train=4, num_val=2)
    torch.manual_seed(0)
    model, _ = build_model(load_config(str(config)))
    from mobileone_mm.devkit.analysis import randomize_bn

    randomize_bn(model)
    good = model.state_dict()
    meta = dict(dataset_meta=dict(classes=['disk', 'square', 'triangle', 'star']))

    def save(name, state, **extra):
        torch.save(dict(meta=meta, state_dict=state, **extra), d / name)

    def corrupt(key, value, index=0):
        state = {k: v.clone() for k, v in good.items()}
        state[key].view(-1)[index] = value
        return state

    save('good.pth', good)
    # what mmengine writes besides weights: numpy values, its message hub
    save(
        'module.pth',
        {f'module.{k}': v for k, v in good.items()},
        seed=np.int64(0),
        message_hub=dict(log_scalars=dict(loss=HistoryBuffer([0.5], [1]))),
    )
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), d / 'foreign.pth')
    save('nan.pth', corrupt(NAN_KEY, float('nan')))
    save('inf.pth', corrupt(NAN_KEY, float('-inf'), 5))
    save('negative_var.pth', corrupt(VAR_KEY, -0.25, 3))
    example = torch.zeros(1, 3, 64, 64)
    backbone = copy.deepcopy(model.backbone).eval()
    torch.jit.save(torch.jit.trace(backbone, example), d / 'torchscript.pth')
    torch.export.save(torch.export.export(backbone, (example,)), d / 'torch_export.pth')
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (48, 40, 3)).astype(np.uint8)).save(
        d / 'photo.png'
    )
    fused = reparameterize_model(copy.deepcopy(model)).state_dict()
    return SimpleNamespace(
        dir=d, config=str(config), good=good, fused=fused, photo=str(d / 'photo.png')
    )


def onnx_weights(path) -> dict:
    """The head's weight as the ONNX graph holds it (a Gemm's initializer, either
    orientation), under the state-dict key it came from."""
    for init in onnx.load(str(path)).graph.initializer:
        value = torch.from_numpy(numpy_helper.to_array(init).copy())
        if value.shape == (4, 128):
            return {'head.fc.weight': value}
        if value.shape == (128, 4):
            return {'head.fc.weight': value.t()}
    raise AssertionError(f'no head weight in {path}')


def run_tool(name, argv, monkeypatch, capsys):
    """A tool's main() in this process: its exit code, or CheckpointError with what it
    said when it ended non-zero (the message a user sees)."""
    monkeypatch.setattr(sys, 'argv', [f'{name}.py', *map(str, argv)])
    try:
        load_tool(name).main()
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            said = exit_.code if isinstance(exit_.code, str) else capsys.readouterr().err
            raise CheckpointError(said.strip()) from None


# --------------------------------------------------------------------- the paths
# Each takes (checkpoint, files, out folder, monkeypatch, capsys) and returns what it
# loaded, as state-dict entries, and which weights those must be: 'good' or 'fused'.
def safe_loader(ckpt, f, out, mp, cs):
    return state_dict_of(load_checkpoint_file(ckpt)), 'good'


def mmengine_loader(ckpt, f, out, mp, cs):
    """What load_from, --resume and `mim test --checkpoint` read with the safe-loading
    fix (the shipped configs import it)."""
    from mmengine.runner import CheckpointLoader

    from mobileone_mm.fixes.safe_loading import register_safe_checkpoint_loader

    register_safe_checkpoint_loader()  # what importing the fix does
    return state_dict_of(CheckpointLoader.load_checkpoint(str(ckpt))), 'good'


def strict_model(ckpt, f, out, mp, cs):
    return load_model(f.config, ckpt)[0].state_dict(), 'good'


def pretrained_init(ckpt, f, out, mp, cs):
    backbone = MobileOne(ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    backbone.init_weights()
    return {f'backbone.{k}': v for k, v in backbone.state_dict().items()}, 'good'


def reparameterize_tool(ckpt, f, out, mp, cs):
    """tools/reparameterize.py: fused, outputs checked, written."""
    result = reparameterize_checkpoint(f.config, ckpt, out / 'deploy.pth', num_images=1)
    return load_checkpoint_file(result.out_checkpoint)['state_dict'], 'fused'


def deploy_hook(ckpt, f, out, mp, cs):
    """SaveDeployCheckpointHook after a validation that saved ``ckpt`` as the best
    checkpoint; it reports a refusal in the log (training goes on): raised here."""
    from mmengine.logging import MessageHub, MMLogger

    from mobileone_mm import SaveDeployCheckpointHook

    best = out / 'best.pth'
    best.write_bytes(Path(ckpt).read_bytes())
    cfg = load_config(f.config)
    model, _ = build_model(cfg)
    hub = MessageHub.get_instance(f'weight-rules-{out.name}')
    hub.update_info('best_ckpt', str(best))
    logger = MMLogger.get_instance(f'weight-rules-{out.name}')
    log = io.StringIO()
    logger.addHandler(logging.StreamHandler(log))
    runner = SimpleNamespace(message_hub=hub, model=model, cfg=cfg, logger=logger)
    try:
        SaveDeployCheckpointHook(verify=False).after_val_epoch(runner)
    finally:
        best.unlink()  # the input's copy: the table checks what the path wrote
    if 'is not saved' in log.getvalue():
        raise CheckpointError(log.getvalue().strip())
    return load_checkpoint_file(out / 'best_deploy.pth')['state_dict'], 'fused'


def image_demo(ckpt, f, out, mp, cs):
    """tools/image_demo.py's PhotoDemo: the codebase's inferencer with the checkpoint."""
    from mobileone_mm.predict.inferencers import PhotoDemo

    return PhotoDemo(f.config, ckpt).inferencer.model.state_dict(), 'good'


def export_onnx_tool(ckpt, f, out, mp, cs):
    """tools/export_onnx.py without --verify."""
    run_tool('export_onnx', [f.config, ckpt, out / 'm.onnx'], mp, cs)
    return onnx_weights(out / 'm.onnx'), 'good'


def mmdeploy_export_tool(ckpt, f, out, mp, cs):
    """tools/mmdeploy_export.py (mmdeploy's torch2onnx after our loader)."""
    run_tool(
        'mmdeploy_export',
        [
            REPO / 'configs/mmdeploy/classification_onnxruntime_static.py',
            f.config,
            ckpt,
            out / 'end2end.onnx',
        ],
        mp,
        cs,
    )
    return onnx_weights(out / 'end2end.onnx'), 'good'


def quantize_tool(ckpt, f, out, mp, cs):
    """tools/quantize.py's library call: int8 graph (the head stays float)."""
    from mobileone_mm.runtimes.evaluate import quantize_checkpoint

    graph, _ = quantize_checkpoint(f.config, ckpt, calib_images=4, check_images=2)
    (out / 'int8.onnx').write_bytes(graph)
    return onnx_weights(out / 'int8.onnx'), 'good'


def convert_weights_tool(ckpt, f, out, mp, cs):
    run_tool('convert_weights', [ckpt, out / 'c.pth'], mp, cs)
    return load_checkpoint_file(out / 'c.pth')['state_dict'], 'good'


PATHS = dict(
    safe_loader=safe_loader,
    mmengine_loader=mmengine_loader,
    load_model=strict_model,
    pretrained_init=pretrained_init,
    reparameterize=reparameterize_tool,
    deploy_hook=deploy_hook,
    image_demo=image_demo,
    export_onnx=export_onnx_tool,
    mmdeploy_export=mmdeploy_export_tool,
    quantize=quantize_tool,
    convert_weights=convert_weights_tool,
)
# Which model a checkpoint is of is not the file loaders' question (they read any
# state dict; the model-aware paths over them answer it).
FILE_LEVEL = ('safe_loader', 'mmengine_loader')

FOREIGN_KEYS = r'conv1\.weight, bn1\.weight, bn1\.bias'
REFUSALS = {
    'foreign': rf'does not fit the model: \d+ missing keys: .*; \d+ unexpected keys: '
    rf'{FOREIGN_KEYS}|Not a MobileOne checkpoint: its keys \({FOREIGN_KEYS}',
    'nan': rf'{re.escape(repr(NAN_KEY))} holds 1 NaN value',
    'inf': rf'{re.escape(repr(NAN_KEY))} holds 1 inf value',
    'negative_var': rf'BatchNorm variance {re.escape(repr(VAR_KEY))} has 1 negative value\(s\) '
    r'\(lowest -0\.25\)',
    'torchscript': r'\.pth\' is a TorchScript archive \(torch.jit.save\), not a '
    r'checkpoint.*Give the training checkpoint',
    'torch_export': r"\.pth' is a torch\.export archive \(torch\.export\.save\), not a "
    r'checkpoint.*Give the training checkpoint',
}
ROWS = [
    (path, kind)
    for path in PATHS
    for kind in ['module', *REFUSALS]
    if not (kind == 'foreign' and path in FILE_LEVEL)
]


@pytest.mark.parametrize('path,kind', ROWS, ids=[f'{p}-{k}' for p, k in ROWS])
def test_every_path_loads_weights_by_one_rule(path, kind, files, tmp_path, monkeypatch, capsys):
    # as in a process whose configs did not import the fix: mmengine's loader is torch's
    from mmengine.runner import CheckpointLoader
    from mmengine.runner import checkpoint as mmengine_checkpoint

    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))
    CheckpointLoader.register_scheme('', mmengine_checkpoint.load_from_local, force=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / 'out'
    out.mkdir()
    ckpt = files.dir / f'{kind}.pth'
    if kind == 'module':
        loaded, form = PATHS[path](ckpt, files, out, monkeypatch, capsys)
        expected = files.good if form == 'good' else files.fused
        assert loaded and set(loaded) <= set(expected), sorted(set(loaded) - set(expected))
        for key, value in loaded.items():
            assert torch.equal(value, expected[key]), key
        return
    with pytest.raises(CheckpointError) as refused:
        PATHS[path](ckpt, files, out, monkeypatch, capsys)
    message = str(refused.value)
    assert re.search(REFUSALS[kind], message), message
    assert 'weights_only' not in message.replace('weights_only=True', '')
    assert list(out.iterdir()) == [], 'a refusal wrote something'


def test_the_first_bad_entry_is_named():
    """In the state dict's order, numpy values too; integer entries are not judged."""
    state = {
        'a': torch.ones(3),
        'n': torch.tensor([1, -2]),
        'bn.running_var': np.array([1.0, -1.0], np.float32),
        'b': torch.tensor([float('nan')]),
    }
    with pytest.raises(CheckpointError, match=r"'bn.running_var' has 1 negative"):
        check_weights(state)
    del state['bn.running_var']
    with pytest.raises(CheckpointError, match=r"'b' holds 1 NaN"):
        check_weights(state)
    check_weights(
        {
            'a': torch.zeros(2),
            'bn.running_var': torch.zeros(2),
            'bn.num_batches_tracked': torch.tensor(-1),
        }
    )


def test_a_state_dict_in_memory_is_held_to_the_rule(files):
    """load_strict (what load_model uses) judges a state dict that never was a file."""
    from mobileone_mm.loading.checkpoint import load_strict

    model, _ = build_model(load_config(files.config))
    state = {k: v.clone() for k, v in files.good.items()}
    state[VAR_KEY][0] = -1.0
    with pytest.raises(
        CheckpointError,
        match=rf'The weights: BatchNorm variance '
        rf'{re.escape(repr(VAR_KEY))}',
    ):
        load_strict(model, state, 'The weights')


def test_other_schemes_are_held_to_the_rule(files, monkeypatch):
    """A checkpoint from a scheme mmengine loads (s3://, open-mmlab://, ...; here one
    registered for the test) is judged as a local file is."""
    from mmengine.runner import CheckpointLoader

    from mobileone_mm.checkpoints.io import load_checkpoint

    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))
    CheckpointLoader.register_scheme(
        'weights-test://',
        lambda name, map_location=None: torch.load(
            files.dir / name[len('weights-test://') :], weights_only=True
        ),
    )
    assert set(state_dict_of(load_checkpoint('weights-test://good.pth'))) == set(files.good)
    with pytest.raises(
        CheckpointError,
        match=rf"'weights-test://inf.pth'.*"
        rf'{re.escape(repr(NAN_KEY))} holds 1 inf',
    ):
        load_checkpoint('weights-test://inf.pth')


def test_torch_advice_to_drop_weights_only_is_never_passed_on(files, tmp_path):
    """torch's own errors for files the loader refuses (a TorchScript archive past the
    check for one, a whole pickled model) advise weights_only=False: what is said
    instead keeps the reason and drops the advice."""
    from mobileone_mm.checkpoints.io import _load_error

    torch.save(torch.nn.Linear(2, 2), tmp_path / 'model.pth')
    for path in (files.dir / 'torchscript.pth', tmp_path / 'model.pth'):
        with pytest.raises(Exception) as raised:
            torch.load(path, weights_only=True)
        assert 'weights_only` set to `False`' in str(raised.value)
        said = str(_load_error(str(path), raised.value))
        assert 'weights_only' not in said.replace('loaded with weights_only=True', ''), said
        assert re.search(r'not a readable PyTorch checkpoint|asks for `torch\.nn', said), said


# ------------------------------------------------------------------- the outputs side
@pytest.fixture(scope='module')
def corrupt_graphs(files):
    """Graphs exported from corrupt weights without the loader, as export_onnx did
    before the rule: a NaN weight, and a negative BN variance (NaN once fused)."""
    cfg = load_config(files.config)
    graphs = {}
    for kind in ('nan', 'negative_var'):
        model, _ = build_model(cfg)
        model.load_state_dict(torch.load(files.dir / f'{kind}.pth')['state_dict'])
        graphs[kind] = files.dir / f'{kind}.onnx'
        export_onnx(
            model.eval(),
            str(graphs[kind]),
            (64, 64),
            metadata=export_metadata(cfg, {}, model, files.config),
        )
    return graphs


@pytest.mark.parametrize('kind', ['nan', 'negative_var'])
def test_a_graph_that_yields_nan_is_refused(
    kind, files, corrupt_graphs, tmp_path, monkeypatch, capsys
):
    session, meta = load_onnx(str(corrupt_graphs[kind]))
    with pytest.raises(
        PredictError,
        match=r"output 'logits' holds NaN or inf.*Export it "
        r'again',
    ):
        predict(session, meta, read_photo(files.photo))
    with pytest.raises(CheckpointError, match=r'holds NaN or inf'):  # exit code not 0
        run_tool(
            'onnx_infer',
            [corrupt_graphs[kind], files.photo, '--out', tmp_path / 'vis.png'],
            monkeypatch,
            capsys,
        )
    assert 'nan' not in capsys.readouterr().out.lower()
    assert list(tmp_path.iterdir()) == []


def test_image_demo_refuses_a_nan_prediction(files):
    from mobileone_mm.predict.inferencers import PhotoDemo

    demo = PhotoDemo(files.config, files.dir / 'good.pth')
    assert demo.predict([files.photo])[0].lines  # the sound model predicts
    with torch.no_grad():
        demo.inferencer.model.head.fc.bias[1] = float('nan')
    with pytest.raises(PredictError, match=r"photo.png' holds NaN or inf \(pred_score\)"):
        demo.predict([files.photo])
