"""The two rules of issue 24 that every tool follows, one table row per case.

* One error boundary (mobileone_mm.errors.run_tool): an expected mistake in a tool's
  input ends in one line ``tool: problem ... fix`` on stderr, exit code 2, no traceback;
  ``--debug`` prints the traceback too; a bug (any other exception) keeps its traceback
  and is not exit code 2. The API refuses wrong argument types with a TypeError naming
  the fix, not an AttributeError deep inside.
* Class names come from one place (mobileone_mm.predict.metadata.dataset_meta): the
  checkpoint's meta, else the config's test dataset metainfo, else the dataset type's
  default; image_demo (the codebases' inferencers) and export_onnx / onnx_infer show the
  same names and say where they came from.
"""

import contextlib
import io
import os
import re
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np
import pytest
import torch
from helpers import CLASSES, REPO, load_tool
from helpers import CLASSIFIER_CONFIG as CONFIG
from PIL import Image

from mobileone_mm import MobileOne, reparameterize_model
from mobileone_mm.loading.config import build_model, load_config

DET_TINY = str(REPO / 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py')
SEG_TINY = str(
    REPO / 'configs/segmentation/deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py'
)
DETECTION_DEPLOY = str(REPO / 'configs/mmdeploy/detection_onnxruntime_static-320x320.py')


TOOLS = {
    name: load_tool(name)
    for name in (
        'reparameterize',
        'export_onnx',
        'onnx_infer',
        'convert_weights',
        'image_demo',
        'quantize',
        'mmdeploy_export',
        'make_tiny_datasets',
        'benchmark',
        'demo',
        'export',
        'infer',
    )
}


def run_tool(tool: str, argv) -> Tuple[int, str, str]:
    """(exit code, stdout, stderr) of a tool's main(argv) in this process; an exception
    that leaves main is re-raised."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            TOOLS[tool].main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def files(tiny_classifier, tmp_path_factory):
    """name -> path of the inputs the rows use: the tiny classifier (conftest.py: config,
    checkpoint, ONNX graph, photo), broken configs, an odd photo and ONNX file."""
    d = tmp_path_factory.mktemp('inputs')
    (d / 'raises.py').write_text(f"_base_ = '{CONFIG}'\nscale = 1 / 0\n")
    (d / 'imports.py').write_text("import no_such_module_xyz\nmodel = dict(type='X')\n")
    (d / 'custom_imports.py').write_text(
        f"_base_ = '{CONFIG}'\ncustom_imports = dict(imports=['no_such_module_xyz'], "
        f'allow_failed_imports=False)\n'
    )
    (d / 'nomodel.py').write_text('train_cfg = dict(max_epochs=1)\n')
    (d / 'badarch.py').write_text(f"_base_ = '{CONFIG}'\nmodel = dict(backbone=dict(arch='s9'))\n")
    Image.fromarray(np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40), 'F').save(
        d / 'float32.tif'
    )
    import onnx

    graph = onnx.load(tiny_classifier['cls_onnx'])
    onnx.save(
        graph,
        str(d / 'external.onnx'),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location='external.onnx.data',
        size_threshold=0,
    )
    os.remove(d / 'external.onnx.data')
    return dict(
        tiny_classifier, **{name.replace('.', '_'): str(d / name) for name in os.listdir(d)}
    )


def unavailable_cuda() -> str:
    """'cuda' on a machine without a GPU (this one), else a GPU index it lacks."""
    return 'cuda' if not torch.cuda.is_available() else f'cuda:{torch.cuda.device_count()}'


# ----------------------------------------------------------- rule: one error boundary
@dataclass
class Mistake:
    tool: str
    args: Tuple[str, ...]
    error: str  # pattern of the one line, after 'tool: '


OUT = '{out}'
MISTAKES = {
    # a config file that raises, imports a missing module, or has no model
    'config-raises': Mistake(
        'reparameterize',
        ('{raises_py}', '{cls_pth}', OUT + '/d.pth'),
        r"Config '.*raises.py' \(or a config it inherits\) failed while "
        r'mmengine read it \(ZeroDivisionError: division by zero\)',
    ),
    'config-raises-export': Mistake(
        'export_onnx',
        ('{raises_py}', '{cls_pth}', OUT + '/m.onnx'),
        r'ZeroDivisionError.*Fix the file',
    ),
    'config-imports-missing-module': Mistake(
        'export_onnx',
        ('{imports_py}', '{cls_pth}', OUT + '/m.onnx'),
        r"'.*imports.py' .*imports 'no_such_module_xyz', which is not installed: "
        r'install it',
    ),
    'config-custom-imports-missing': Mistake(
        'quantize',
        ('{custom_imports_py}', '{cls_pth}', OUT + '/q.onnx'),
        r"imports 'no_such_module_xyz', which is not installed: install it",
    ),
    'config-without-model': Mistake(
        'image_demo',
        ('{nomodel_py}', '{cls_pth}', '{photo_jpg}'),
        r"'.*nomodel.py' has no model .*not a model config",
    ),
    'config-bad-arch': Mistake(
        'export_onnx',
        ('{badarch_py}', '{cls_pth}', OUT + '/m.onnx'),
        r"model cannot be built: .*Unknown MobileOne arch 's9'",
    ),
    # arguments swapped
    'checkpoint-as-config': Mistake(
        'reparameterize',
        ('{cls_pth}', CONFIG, OUT + '/d.pth'),
        r"Config '.*cls.pth' is a checkpoint, not a config .*"
        r'arguments swapped',
    ),
    'photo-as-config': Mistake(
        'image_demo',
        ('{photo_jpg}', '{cls_pth}', '{photo_jpg}'),
        r"Config '.*photo.jpg' is an image, not a config",
    ),
    # mmdeploy_export: the deploy config and the model config
    'mmdeploy-detection-deploy-seg-model': Mistake(
        'mmdeploy_export',
        (DETECTION_DEPLOY, SEG_TINY, '{cls_pth}', OUT + '/e.onnx'),
        r'is for mmdet models \(codebase_config.type\) but .* is an mmseg model: use a '
        r'segmentation deploy config',
    ),
    'mmdeploy-model-config-as-deploy-config': Mistake(
        'mmdeploy_export',
        (CONFIG, CONFIG, '{cls_pth}', OUT + '/e.onnx'),
        r"Deploy config '.*' is a model config .*without onnx_config, codebase_config, "
        r'backend_config: the deploy config comes first',
    ),
    # a device this machine does not have
    'image-demo-device-gpu0': Mistake(
        'image_demo',
        (CONFIG, '{cls_pth}', '{photo_jpg}', '--device', 'gpu0'),
        r'--device gpu0: not a device name; use cpu, cuda',
    ),
    'image-demo-device-cuda': Mistake(
        'image_demo',
        (CONFIG, '{cls_pth}', '{photo_jpg}', '--device', unavailable_cuda()),
        r'--device cuda.*(no CUDA|has \d CUDA GPU).*',
    ),
    'mmdeploy-device-gpu0': Mistake(
        'mmdeploy_export',
        (
            'configs/mmdeploy/classification_onnxruntime_static.py',
            CONFIG,
            '{cls_pth}',
            OUT + '/e.onnx',
            '--device',
            'gpu0',
        ),
        r'--device gpu0: not a device name',
    ),
    'mmdeploy-device-cuda': Mistake(
        'mmdeploy_export',
        (
            'configs/mmdeploy/classification_onnxruntime_static.py',
            CONFIG,
            '{cls_pth}',
            OUT + '/e.onnx',
            '--device',
            unavailable_cuda(),
        ),
        r'--device cuda.*use --device cpu|'
        r'has \d CUDA GPU',
    ),
    # an input shape whose memory the machine cannot hold: said before allocating
    'export-shape-too-large': Mistake(
        'export_onnx',
        (CONFIG, '{cls_pth}', OUT + '/m.onnx', '--shape', '300000', '300000'),
        r'An input of 300000x300000 pixels needs at least '
        r'\d+\.\d GiB of memory and this machine has '
        r'\d+\.\d GiB free: use a smaller input shape',
    ),
    'quantize-shape-too-large': Mistake(
        'quantize',
        (CONFIG, '{cls_pth}', OUT + '/q.onnx', '--shape', '300000', '300000'),
        r'needs at least .* GiB of memory',
    ),
    # photos and ONNX files
    'float32-tiff': Mistake(
        'onnx_infer',
        ('{cls_onnx}', '{float32_tif}'),
        r"'.*float32.tif' is a 32-bit floating-point image \(Pillow mode "
        r"'F'\).*save it as 8 or 16 bits",
    ),
    'onnx-external-data-missing': Mistake(
        'onnx_infer',
        ('{external_onnx}', '{photo_jpg}'),
        r"keeps its weights in external data files, and 'external.onnx.data' \(tensor .*\) "
        r"is missing: looked for '.*/external.onnx.data'",
    ),
    # make_tiny_datasets: a settings mistake of the library (was a ValueError list)
    'tiny-data-no-val-images': Mistake(
        'make_tiny_datasets',
        ('coco', '--out', OUT + '/d', '--num-val', '0'),
        r'Need at least one train and one val image',
    ),
    # issue 24, a new user's table: 10^10 images were written one by one until the disk
    # was full; now the disk they need is said before the first
    'tiny-data-beyond-disk': Mistake(
        'make_tiny_datasets',
        ('flowers', '--out', OUT + '/d', '--num-train', '10000000000'),
        r'10000000040 images need at least [\d.]+ GiB of disk '
        r"and '.*' has [\d.]+ GiB free: write fewer images",
    ),
}


@pytest.mark.parametrize('case', list(MISTAKES.values()), ids=list(MISTAKES))
def test_a_mistake_ends_in_one_line_and_exit_code_2(case, files, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = [a.format(out=tmp_path, **files) for a in case.args]
    code, out, err = run_tool(case.tool, argv)
    assert code == 2, (code, err)
    assert 'Traceback' not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f'{case.tool}: ') and re.search(case.error, line), line
    assert os.listdir(tmp_path) == [], 'something was written'
    debug_code, _, debug_err = run_tool(case.tool, argv + ['--debug'])
    assert debug_code == 2 and 'Traceback (most recent call last)' in debug_err, debug_err
    last = debug_err.strip().splitlines()[-1]
    assert last.startswith(f'{case.tool}: ') and re.search(case.error, last), last


@pytest.mark.parametrize(
    'command',
    [
        pytest.param(lambda tool: [str(REPO / 'tools' / f'{tool}.py')], id='path'),
        # issue 24, a new user's table: `python -m tools.export_onnx` from the repository
        # (its `from argtypes import` was a ModuleNotFoundError traceback)
        pytest.param(lambda tool: ['-m', f'tools.{tool}'], id='python-m'),
    ],
)
def test_a_mistake_as_a_command_is_one_line_on_stderr(files, tmp_path, command):
    """What a user sees: stderr is the one line, nothing before it (mmengine's
    pkg_resources notice was four lines above it whenever a config was read)."""
    done = subprocess.run(
        [
            sys.executable,
            *command('export_onnx'),
            files['badarch_py'],
            files['cls_pth'],
            str(tmp_path / 'm.onnx'),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith('export_onnx: ') and done.stderr.count('\n') == 1, done.stderr
    assert 'Unknown MobileOne arch' in done.stderr and done.stdout == ''


def test_a_bug_keeps_its_traceback(files, tmp_path, monkeypatch):
    """An exception that is not a user's mistake leaves main (in-process) and, as a
    command, prints its traceback with exit code 1, not 2."""

    def broken(*args, **kwargs):
        raise RuntimeError('a bug in predict')

    import mobileone_mm.runtimes.common as library  # onnx_infer's one library call

    monkeypatch.setattr(library, 'predict', broken)
    with pytest.raises(RuntimeError, match='a bug in predict'):
        run_tool('onnx_infer', [files['cls_onnx'], files['photo_jpg']])
    script = (
        'import sys, runpy; sys.argv = ["onnx_infer.py"] + sys.argv[1:]; '
        'import mobileone_mm.predict.prediction as p; '
        'p.preprocess = lambda *a, **k: 1 / 0; '
        f'runpy.run_path({str(REPO / "tools" / "onnx_infer.py")!r}, '
        f'run_name="__main__")'
    )
    done = subprocess.run(
        [sys.executable, '-c', script, files['cls_onnx'], files['photo_jpg']],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=f'{REPO}:{REPO / "tools"}'),
    )
    assert done.returncode == 1, done.stderr
    assert 'Traceback (most recent call last)' in done.stderr
    assert done.stderr.strip().splitlines()[-1] == 'ZeroDivisionError: division by zero'


def test_ctrl_c_mid_write_ends_in_one_line_and_leaves_no_file(files, tmp_path, monkeypatch):
    """Ctrl-C while the graph is half written (issue 24, a new user's table: 40 lines of
    traceback): one line, exit code 130, neither the output nor a temporary file left;
    --debug shows the traceback."""
    import mobileone_mm.runtimes.export as library  # export_onnx's one library call

    real_atomic_file = library.atomic_file

    class HalfThenCtrlC:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interrupted_atomic_file(path):
        with real_atomic_file(path) as file:
            yield HalfThenCtrlC(file)

    monkeypatch.setattr(library, 'atomic_file', interrupted_atomic_file)
    argv = [CONFIG, files['cls_pth'], tmp_path / 'm.onnx']
    try:
        code, out, err = run_tool('export_onnx', argv)
    except KeyboardInterrupt:  # would stop pytest itself
        pytest.fail('the KeyboardInterrupt left the error boundary')
    assert code == 130 and 'Traceback' not in err, err
    assert err.strip().splitlines()[-1] == (
        'export_onnx: interrupted; every output is written '
        'whole or not at all (temporary files removed)'
    )
    assert os.listdir(tmp_path) == []
    code, _, err = run_tool('export_onnx', argv + ['--debug'])
    assert code == 130 and 'Traceback (most recent call last)' in err, err


def test_every_tool_has_the_boundary_and_debug():
    """Every tool in tools/ (but the install check) goes through run_tool and takes
    --debug."""
    for name, module in TOOLS.items():
        assert getattr(module.main, '__wrapped__', None) is not None, name
        code, out, _ = run_tool(name, ['--help'])
        assert code == 0 and '--debug' in out, name


@dataclass
class ApiMistake:
    call: Callable
    error: type
    match: str
    where: str  # the function that raises it: where the argument is checked


API_MISTAKES = {
    'reparameterize-none': ApiMistake(
        lambda: reparameterize_model(None),
        TypeError,
        r'expects a torch.nn.Module .*got NoneType: pass the '
        r'built model',
        'reparameterize_model',
    ),
    'backbone-numpy-input': ApiMistake(
        lambda: MobileOne('s0').eval()(np.zeros((1, 3, 32, 32), np.float32)),
        TypeError,
        r'expects a torch.Tensor \(N, 3, H, W\), got a numpy.ndarray: .*torch.from_numpy',
        '_check_input',
    ),
    'backbone-list-input': ApiMistake(
        lambda: MobileOne('s0').eval()([[1.0]]), TypeError, r'got a list', '_check_input'
    ),
}


@pytest.mark.parametrize('case', list(API_MISTAKES.values()), ids=list(API_MISTAKES))
def test_api_refuses_wrong_types_naming_the_fix(case):
    with pytest.raises(case.error, match=case.match) as raised:
        case.call()
    assert traceback.extract_tb(raised.tb)[-1].name == case.where


# ------------------------------------------------------ rule: class names from one place
@dataclass
class Names:
    meta: dict  # the checkpoint's meta
    config_text: str  # the model config (a child of the tiny detector's)
    classes: Callable  # () -> the names every tool must show
    source: str  # what they say about where the names came from


def coco_names():
    from mmdet.datasets import CocoDataset

    return list(CocoDataset.METAINFO['classes'])


NAME_SOURCES = {
    # bad case 3: no meta, and a config that names its 4 classes (image_demo showed
    # mmdet's COCO names, onnx_infer the config's)
    'config-metainfo': Names({}, '', lambda: CLASSES, "the config's test dataset metainfo"),
    'checkpoint-meta': Names(
        dict(dataset_meta=dict(classes=['a', 'b', 'c', 'd'])),
        '',
        lambda: ['a', 'b', 'c', 'd'],
        "the checkpoint's meta",
    ),
    'dataset-default': Names(
        {},
        'model = dict(bbox_head=dict(num_classes=80))\n'
        'test_dataloader = dict(dataset=dict(metainfo=None))\n',
        coco_names,
        'CocoDataset.METAINFO',
    ),
}


def printed_names(out: str) -> set:
    """The class names of the detection lines (name score box [...]) of a printout."""
    return {m.group(1) for m in re.finditer(r'^  (.+) \d\.\d{3} box \[', out, re.M)}


@pytest.mark.parametrize(
    'case',
    [
        pytest.param(case, id=name, marks=[] if name == 'config-metainfo' else [pytest.mark.slow])
        for name, case in NAME_SOURCES.items()
    ],
)
def test_class_names_come_from_one_place(case, files, tmp_path, monkeypatch):
    """image_demo (mmdet's DetInferencer) and export_onnx + onnx_infer on the same
    detector show names of the same source, say which, and show nothing else; every
    detection (score threshold 0) is printed by name."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / 'detector.py'
    config.write_text(f"_base_ = '{DET_TINY}'\n{case.config_text}")
    model, _ = build_model(load_config(str(config)))
    torch.save(dict(meta=case.meta, state_dict=model.state_dict()), tmp_path / 'det.pth')
    photo = files['photo_jpg']
    code, demo_out, err = run_tool(
        'image_demo', [config, tmp_path / 'det.pth', photo, '--score-thr', '0']
    )
    assert code == 0, err
    assert f'class names: {case.source}\n' in demo_out, demo_out
    code, out, err = run_tool('export_onnx', [config, tmp_path / 'det.pth', tmp_path / 'det.onnx'])
    assert code == 0, err
    assert f'classes: {len(case.classes())} ({case.source})' in out, out
    code, infer_out, err = run_tool(
        'onnx_infer', [tmp_path / 'det.onnx', photo, '--score-thr', '0']
    )
    assert code == 0, err
    assert f'class names: {case.source}\n' in infer_out, infer_out
    for shown in (printed_names(demo_out), printed_names(infer_out)):
        assert shown and shown <= set(case.classes()), (shown, demo_out, infer_out)
