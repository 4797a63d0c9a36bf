"""The runtime layer's frame (mobileone_mm/runtimes, tools/export.py, tools/infer.py):
its table, bad input (an unknown runtime or precision lists the valid ones, a runtime
that is not installed names the extra, an operator a runtime cannot take names the
runtime, the operator and the layer, a failed export leaves nothing on disk), and the
checked export of a real mmpretrain classifier to onnxruntime and OpenVINO."""

import importlib.util
import os
import re
import subprocess
import sys
from typing import Callable, NamedTuple

import pytest
import torch
import torch.nn as nn
from helpers import CLASSES, REPO, run_main
from helpers import CLASSIFIER_CONFIG as CONFIG

from mobileone_mm.checkpoints.paths import PathError
from mobileone_mm.devkit.analysis import randomize_bn
from mobileone_mm.loading.config import ExportError, build_model, load_config
from mobileone_mm.runtimes import (
    RUNTIMES,
    export_to_runtime,
    get_runtime,
    load_runner,
    operator_error,
    runtime_of_path,
)
from mobileone_mm.runtimes.wrappers import wrap_for_export


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    """(config, checkpoint) of a random tiny classifier with realistic BN statistics."""
    folder = tmp_path_factory.mktemp('classifier')
    torch.manual_seed(0)
    model, _ = build_model(load_config(CONFIG))
    model.init_weights()
    randomize_bn(model)  # devkit.analysis: realistic BN statistics
    path = folder / 'cls.pth'
    torch.save(
        dict(meta=dict(dataset_meta=dict(classes=CLASSES)), state_dict=model.state_dict()), path
    )
    return CONFIG, str(path)


class Odd(nn.Module):
    """A layer with an operator no exporter here takes (aten::i0: no ONNX form)."""

    def forward(self, x):
        return tuple(torch.special.i0(t) for t in x)  # the neck gives a tuple


def odd_classifier():
    model, _ = build_model(load_config(CONFIG))
    model.neck = nn.Sequential(model.neck, Odd())
    return model.eval()


def without(package):
    """sys.modules with ``package`` marked absent: import and find_spec see it missing,
    as on a system without it."""
    return {package: None}


# ------------------------------------------------------------------------ the table
def test_table_lists_the_five_runtimes_and_agrees_with_the_modules():
    assert list(RUNTIMES) == ['onnxruntime', 'openvino', 'executorch', 'ncnn', 'coreml']
    for name, entry in RUNTIMES.items():
        if importlib.util.find_spec(entry.module) is None:
            continue  # a module of another branch, not merged here
        module = importlib.import_module(entry.module)
        assert (module.NAME, module.EXTRA, tuple(module.PRECISIONS), module.SUFFIX) == (
            name,
            entry.extra,
            entry.precisions,
            entry.suffix,
        ), name
    assert runtime_of_path('a/b.onnx') == 'onnxruntime'
    assert runtime_of_path('m.xml') == 'openvino' and runtime_of_path('m.pte') == 'executorch'
    assert runtime_of_path('m.ncnn.param') == 'ncnn'
    assert runtime_of_path('out/m.mlpackage/') == 'coreml'


def test_import_mobileone_mm_imports_no_runtime_package():
    import subprocess

    code = (
        'import sys, mobileone_mm, mobileone_mm.runtimes, mobileone_mm.runtimes.openvino, '
        'mobileone_mm.runtimes.onnxruntime\n'
        'print(sorted(p for p in ("openvino", "executorch", "ncnn", "pnnx", "coremltools") '
        'if p in sys.modules))'
    )
    done = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0 and done.stdout.strip() == '[]', done.stderr


# -------------------------------------------------------------------- bad input
class Case(NamedTuple):
    call: Callable  # (checkpoint pair, tmp_path) -> anything; must raise
    error: str  # regex the one-line message must match
    modules: dict = {}  # sys.modules entries set for the call
    kind: type = ExportError


CASES = {
    'unknown-runtime': Case(
        lambda c, t: get_runtime('tflite'),
        r"^Unknown runtime 'tflite': use one of onnxruntime, openvino, "
        r'executorch, ncnn, coreml\.$',
    ),
    'unknown-precision': Case(
        lambda c, t: get_runtime('openvino', 'bf16'),
        r'^The openvino runtime takes precision fp32 or int8, not '
        r"'bf16'\.$",
    ),
    'precision-of-another-runtime': Case(
        lambda c, t: get_runtime('ncnn', 'int8'), r"takes precision fp32, not 'int8'"
    ),
    'openvino-not-installed': Case(
        lambda c, t: get_runtime('openvino'),
        r'^The openvino runtime is not installed \(no openvino\): '
        r"pip install 'mobileone-mm\[openvino\]'$",
        without('openvino'),
    ),
    'onnxruntime-not-installed': Case(
        lambda c, t: get_runtime('onnxruntime', 'int8'),
        r'not installed \(no onnxruntime\): pip install '
        r"'mobileone-mm\[onnx\]'$",
        without('onnxruntime'),
    ),
    'export-without-the-runtime': Case(
        lambda c, t: export_to_runtime(*c, t / 'm.xml', 'openvino'),
        r"pip install 'mobileone-mm\[openvino\]'$",
        without('openvino'),
    ),
    'infer-without-the-runtime': Case(
        lambda c, t: load_runner(t / 'm.xml'),
        r"pip install 'mobileone-mm\[openvino\]'$",
        without('openvino'),
    ),
    'unknown-artefact': Case(
        lambda c, t: load_runner(t / 'm.tflite'),
        r'must end in \.onnx \(onnxruntime\), \.xml \(openvino\), '
        r'\.pte \(executorch\), \.ncnn\.param \(ncnn\), \.mlpackage',
    ),
    'export-unknown-runtime': Case(
        lambda c, t: export_to_runtime(*c, t / 'm.x', 'tvm'),
        r"Unknown runtime 'tvm': use one of onnxruntime",
    ),
    'export-wrong-extension': Case(
        lambda c, t: export_to_runtime(*c, t / 'm.onnx', 'openvino'),
        r"openvino output .*m\.onnx' has extension '\.onnx': use "
        r'\.xml',
        kind=PathError,
    ),
    'export-int8-to-ncnn': Case(
        lambda c, t: export_to_runtime(*c, t / 'm.ncnn.param', 'ncnn', 'int8'),
        r"The ncnn runtime takes precision fp32, not 'int8'",
    ),
    'onnx-operator': Case(
        lambda c, t: get_runtime('onnxruntime').export(
            *wrap_for_export(odd_classifier(), (32, 32)), str(t / 'm.onnx'), {}
        ),
        r'^The onnxruntime runtime cannot take the operator aten::(special_)?i0 in layer '
        r"'model\.neck\.1' \(no ONNX opset 17 form\): replace that layer, or export to "
        r'another runtime\.$',
    ),
    'openvino-operator': Case(
        lambda c, t: get_runtime('openvino').export(
            *wrap_for_export(odd_classifier(), (32, 32)), str(t / 'm.xml'), {}
        ),
        r'^The openvino runtime cannot take the operator aten::(special_)?i0 in layer '
        r"'model\.neck\.1'",
    ),
}


@pytest.mark.parametrize('case', list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused_in_one_line_and_leaves_nothing(
    case, classifier, tmp_path, monkeypatch
):
    for name, value in case.modules.items():
        monkeypatch.setitem(sys.modules, name, value)
    with pytest.raises(case.kind) as error:
        case.call(classifier, tmp_path)
    message = str(error.value)
    assert '\n' not in message and re.search(case.error, message), message
    assert os.listdir(tmp_path) == []


def test_operator_error_names_the_layer_running_an_aten_operator():
    wrapper, example = wrap_for_export(odd_classifier(), (32, 32))
    message = str(operator_error('ncnn', 'aten::i0', wrapper, example))
    assert "operator aten::i0 in layer 'model.neck.1'" in message
    message = str(operator_error('ncnn', 'aten::no_such_op', wrapper, example))
    assert 'aten::no_such_op:' in message and 'layer' not in message.split(':')[0]


# ------------------------------------------------------------- checked exports
@pytest.mark.parametrize(
    'runtime, files', [('onnxruntime', ['m.onnx']), ('openvino', ['m.bin', 'm.xml'])]
)
def test_export_tool_writes_a_checked_artefact_that_infer_runs(
    runtime, files, classifier, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no data here: the check runs on random images
    out = tmp_path / 'out' / files[-1]
    code, error, stdout, _ = run_main(
        'export',
        [*classifier, out, '--runtime', runtime, '--shape', 48, 64, '--verify'],
        capsys,
        monkeypatch,
    )
    assert code == 0, error
    assert f'classification for {runtime} fp32: input 48x64' in stdout
    assert (
        'verify on 8 random images (val set not on disk): task classification, images 8, '
        'passed True' in stdout
    )
    assert sorted(os.listdir(tmp_path / 'out')) == files
    runner = load_runner(str(out))
    assert runner.metadata['classes'] == CLASSES and runner.input_shape == (48, 64)
    from photos import photo_paths

    photo = photo_paths(tmp_path / 'photos')['small_jpeg']
    code, error, stdout, _ = run_main('infer', [out, photo], capsys, monkeypatch)
    assert code == 0, error
    assert 'classification on' in stdout and '(97x75, network input 64x48' in stdout
    assert (
        len(
            [
                line
                for line in stdout.splitlines()
                if line.startswith('  disk: ') or re.match(r'  (square|triangle|star): ', line)
            ]
        )
        == 4
    )


@pytest.mark.parametrize(
    'argv, message',
    [
        (
            ['--runtime', 'tflite'],
            r"argument --runtime: invalid choice: 'tflite' \(choose from "
            r"'?onnxruntime'?, '?openvino'?, '?executorch'?, '?ncnn'?, "
            r"'?coreml'?\)",
        ),
        (
            ['--runtime', 'ncnn', '--precision', 'int8'],
            r"^export: The ncnn runtime takes precision fp32, not 'int8'\.$",
        ),
        (['--runtime', 'openvino', '--precision', 'fp64'], r'argument --precision: invalid choice'),
    ],
)
def test_export_tool_lists_the_valid_runtimes_and_precisions(
    argv, message, classifier, tmp_path, capsys, monkeypatch
):
    out = tmp_path / 'm.ncnn.param'
    code, error, _, _ = run_main('export', [*classifier, out, *argv], capsys, monkeypatch)
    assert code != 0 and re.search(message, error), error
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_a_failed_check_writes_nothing(runtime, classifier, tmp_path, monkeypatch):
    """An artefact of another model (one weight scaled by 1.5 before the ONNX graph both
    runtimes start from) is refused by the check, and nothing is left on disk."""
    import mobileone_mm.runtimes.onnxruntime as module

    real = module.onnx_graph

    def wrong_graph(wrapper, *args, **kwargs):
        import copy

        altered = copy.deepcopy(wrapper)
        with torch.no_grad():
            altered.model.head.fc.weight.mul_(1.5)
        return real(altered, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(module, 'onnx_graph', wrong_graph)
    out = tmp_path / f'm{RUNTIMES[runtime].suffix}'
    with pytest.raises(ExportError, match=r'from the exact \(float64\).*Nothing written\.$'):
        export_to_runtime(*classifier, str(out), runtime, shape=(32, 32), verify=True, num_images=2)
    assert os.listdir(tmp_path) == []
    export_to_runtime(*classifier, str(out), runtime, shape=(32, 32), verify=False)
    assert out.exists()  # the same wrong artefact, unchecked, is written


# ------------------------------------------------- OpenVINO in optimize_for_inference
TINY = dict(
    num_blocks=[1, 1, 1, 1],
    width_factor=[0.25, 0.25, 0.25, 0.25],
    num_conv_branches=[2, 2, 2, 2],
    num_se_blocks=[0, 0, 0, 1],
)


def test_openvino_is_a_backend_of_optimize_for_inference(monkeypatch):
    """fp32: OpenVINO when named, checked against the float64 train form like every
    backend; auto keeps onnxruntime first (faster in fp32 here). int8: auto picks
    OpenVINO (faster), and onnxruntime when OpenVINO is not installed."""
    from mobileone_mm import MobileOne, optimize_for_inference

    torch.manual_seed(0)
    model = randomize_bn(MobileOne(TINY, out_indices=(1, 2, 3))).eval()
    x = torch.randn(1, 3, 64, 64)
    fp32 = optimize_for_inference(model, x, backend='openvino', threads=1)
    assert fp32.backend == 'openvino' and fp32.check['passed']
    with torch.no_grad():
        expected = model(x)
    for found, wanted in zip(fp32(x), expected):
        assert (found - wanted).abs().max() <= 1e-4 * wanted.abs().max()
    assert optimize_for_inference(model, x, threads=1).backend == 'onnxruntime'
    calibration = [
        torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]
    int8 = optimize_for_inference(model, x, precision='int8', calibration=calibration, threads=1)
    assert int8.backend == 'openvino' and int8.check['passed'] and int8.skipped == {}
    monkeypatch.setitem(sys.modules, 'openvino', None)
    int8 = optimize_for_inference(model, x, precision='int8', calibration=calibration, threads=1)
    assert int8.backend == 'onnxruntime' and int8.check['passed']
    assert 'ModuleNotFoundError' in int8.skipped['openvino']


ALTERNATE_SIGNAL_STACK = """
import ctypes, gc, signal, subprocess, sys
import numpy as np, torch

class stack_t(ctypes.Structure):
    _fields_ = [('sp', ctypes.c_void_p), ('flags', ctypes.c_int), ('size', ctypes.c_size_t)]

def alternate_stack_is_mapped():
    stack = stack_t()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    for line in open('/proc/self/maps'):
        start, end = (int(a, 16) for a in line.split()[0].split('-'))
        if start <= (stack.sp or 0) < end:
            return True
    return False

def openvinos_own_cores():
    import openvino as ov
    model = ov.convert_model(torch.nn.Conv2d(3, 4, 3), example_input=torch.zeros(1, 3, 16, 16))
    core = ov.Core()
    return core.compile_model(model, 'CPU'), core

def ours():
    from mobileone_mm import MobileOne, optimize_for_inference
    model = MobileOne(TINY).eval()
    return optimize_for_inference(model, torch.zeros(1, 3, 64, 64), backend='openvino')

first, second = (openvinos_own_cores if sys.argv[1] == 'openvino' else ours)(), None
second = (openvinos_own_cores if sys.argv[1] == 'openvino' else ours)()
del first  # freed in the order made: the first plugin's stack goes before the second's
gc.collect()
del second
gc.collect()
print('mapped' if alternate_stack_is_mapped() else 'unmapped', flush=True)
signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, as torch's DataLoader sets
subprocess.run(['true'])  # its end signals this process
print('survived', flush=True)
"""


def test_openvino_models_freed_in_any_order_leave_the_signal_stack_alone(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack; with one plugin per
    Core, two Cores freed in the order made leave it on unmapped memory and the next signal
    (a subprocess ending) kills the process with SIGSEGV: the crash that ended make test
    after the benchmark's OpenVINO runs. Shown first with OpenVINO's own Cores, then
    optimize_for_inference's OpenVINO models freed the same way (one Core per process,
    runtimes.openvino.openvino_core): the stack is mapped and the process lives."""
    script = tmp_path / 'stack.py'
    script.write_text(f'TINY = {TINY!r}\n' + ALTERNATE_SIGNAL_STACK)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    run = [sys.executable, str(script)]
    theirs = subprocess.run([*run, 'openvino'], capture_output=True, text=True, env=env)
    # unmapped: the SIGSEGV that follows is likely, not certain (the pages may be mapped
    # again first, and the signal frame then written over them)
    assert theirs.stdout.startswith('unmapped'), (theirs.returncode, theirs.stderr[-2000:])
    ours = subprocess.run([*run, 'ours'], capture_output=True, text=True, env=env)
    assert ours.returncode == 0 and ours.stdout.split() == ['mapped', 'survived'], ours.stderr


# -------------------------------------------------------- int8 on the config's data
@pytest.mark.slow
def test_int8_export_calibrates_on_the_config_images_and_is_checked(
    classifier, tmp_path, monkeypatch
):
    """int8 for onnxruntime and OpenVINO through export_to_runtime, as tools/quantize.py
    does it: calibrated on the train images, checked on the val images; the fp32
    artefacts of both runtimes score the val set as the codebase's test loop's metric
    path does (evaluate_graph), equal to each other."""
    from mobileone_mm.devkit.tiny_data import make_tiny_flowers
    from mobileone_mm.runtimes.evaluate import evaluate_graph

    monkeypatch.chdir(tmp_path)
    make_tiny_flowers('data/tiny_flowers', num_train=8, num_val=8)
    cfg = load_config(CONFIG)
    scores, sizes = {}, {}
    for runtime in ('onnxruntime', 'openvino'):
        for precision in ('fp32', 'int8'):
            out = tmp_path / f'{precision}{RUNTIMES[runtime].suffix}'
            report = export_to_runtime(
                *classifier,
                str(out),
                runtime,
                precision,
                shape=(64, 64),
                verify=True,
                calib_images=8,
            )
            assert report['check']['passed'] and report['images'] == '8 val images'
            if precision == 'int8':
                assert report['calibration'] == '8 train images'
                assert report['check']['agreement'] >= 0.75
            runner = load_runner(str(out))
            assert runner.metadata['precision'] == precision
            scores[runtime, precision] = evaluate_graph(cfg, runner, runner.metadata)
            sizes[runtime, precision] = sum(os.path.getsize(p) for p in report['paths'])
        # int8 weights: the artefact a third of the float one (the heads' last layers
        # and the biases stay float)
        assert sizes[runtime, 'int8'] < 0.4 * sizes[runtime, 'fp32'], sizes
    assert scores['openvino', 'fp32'] == scores['onnxruntime', 'fp32']


@pytest.mark.slow
def test_int8_accuracy_scores_each_runtime_and_precision(classifier, tmp_path, monkeypatch):
    """devkit.int8_accuracy (docs/int8.md's accuracy table): every runtime x precision
    exported and scored by the config's metric; the float32 artefacts of the two
    runtimes score alike, and each score is the artefact's own (evaluate_artefact)."""
    from mobileone_mm.devkit.int8_accuracy import int8_accuracy
    from mobileone_mm.devkit.tiny_data import make_tiny_flowers
    from mobileone_mm.runtimes.evaluate import evaluate_artefact

    monkeypatch.chdir(tmp_path)
    make_tiny_flowers('data/tiny_flowers', num_train=8, num_val=8)
    table = int8_accuracy(*classifier, str(tmp_path / 'out'), calib_images=8)
    assert list(table) == [
        ('onnxruntime', 'fp32'),
        ('onnxruntime', 'int8'),
        ('openvino', 'fp32'),
        ('openvino', 'int8'),
    ]
    assert table['openvino', 'fp32'] == table['onnxruntime', 'fp32']
    int8_ir = str(tmp_path / 'out/openvino_int8.xml')
    assert load_runner(int8_ir).metadata['precision'] == 'int8'
    assert table['openvino', 'int8'] == evaluate_artefact(CONFIG, int8_ir, threads=1)
