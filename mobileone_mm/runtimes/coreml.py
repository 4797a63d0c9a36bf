"""Core ML (Apple): the fused model as an ML Program (``.mlpackage``, iOS 16 / macOS 13
target), converted by coremltools from ``torch.export``, with float16 or float32 compute
precision. The normalisation is inside (from the export wrapper), the metadata (task,
class names, preprocessing, detection post-process settings ...) is in the model's
user-defined metadata, each value JSON-encoded as in the ONNX files.

Core ML runs only on Apple systems: here an artefact is checked by its structure
(``check_structure``: input and output names and shapes, the normalisation constants,
the class names, the convolutions against the fused model's), not by its outputs.

Differences from the ONNX graph: the segmentor's ``labels`` are int32 (Core ML has no
int64), and the input is named ``image`` as there.
"""

import json
import os
import re
import shutil
import socket
import tempfile
from collections import Counter
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints.io import TEMP_MARK
from ..checkpoints.paths import check_extension
from ..loading.config import ExportError, task_of
from .wrappers import WRAPPERS, count_conv_calls

NAME = 'coreml'
EXTRA = 'coreml'
PACKAGES = ('coremltools',)
PRECISIONS = ('fp32', 'fp16')
SUFFIX = '.mlpackage'
RUNS_HERE = False

INPUT_NAME = 'image'
DEPLOYMENT_TARGET = 'iOS16'


def _convert(program, wrapper: nn.Module, example: torch.Tensor, precision: str):
    """The coremltools MLModel of ``program`` (``wrapper`` as ``torch.export`` gives it):
    an ML Program, input ``image``, float outputs float32."""
    import coremltools as ct

    with torch.no_grad():
        outputs = wrapper(example)
    outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    model = ct.convert(
        program,
        convert_to='mlprogram',
        minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        compute_precision=dict(fp16=ct.precision.FLOAT16, fp32=ct.precision.FLOAT32)[precision],
        outputs=[
            ct.TensorType(name=name, dtype=np.float32 if out.is_floating_point() else np.int32)
            for name, out in zip(wrapper.output_names, outputs)
        ],
    )
    spec = model.get_spec()
    ct.utils.rename_feature(spec, spec.description.input[0].name, INPUT_NAME)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


def unconvertible_message(error: Exception, program) -> str:
    """One line: the runtime, coremltools' error, and the module of the wrapper that ran
    the op it names (from ``torch.export``'s module stack)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ''
    op = re.search(r"fx node (\w+)|op '(\w+)'", text)
    where = ''
    if op:
        name = op.group(1) or op.group(2)
        for node in program.graph.nodes:
            if name in (node.name, getattr(node.target, '__name__', '').split('.')[0]):
                stack = list(node.meta.get('nn_module_stack', {}).values())
                where = (
                    f' (operator {name}, module {stack[-1][0]})' if stack else f' (operator {name})'
                )
                break
    return f'coreml: coremltools could not convert the model{where}: {type(error).__name__}: {text}'


def _replace_folder(built: str, out: str):
    """Move the folder ``built`` to ``out``, replacing what is there only once ``built``
    is complete: the old artefact is renamed aside, the new one renamed in, the old one
    removed (a crash in between leaves the old one beside it, never a torn one)."""
    aside = None
    if os.path.lexists(out):
        aside = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=os.path.basename(built))
        os.rename(out, os.path.join(aside, 'old'))
    os.rename(built, out)
    if aside:
        shutil.rmtree(aside)


def export(
    wrapper: nn.Module,
    example: torch.Tensor,
    out: str,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
) -> List[str]:
    """Write ``out`` (an ``.mlpackage`` folder), all of it or nothing; returns [out]. See
    the runtime interface (mobileone_mm/runtimes) and this module's docstring."""
    if precision not in PRECISIONS:
        raise ValueError(f'Core ML exports precision {" or ".join(PRECISIONS)}, not {precision!r}.')
    out = os.path.abspath(check_extension(out, [SUFFIX], 'Core ML artefact'))
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ExportError(f'{out!r} exists and is not an .mlpackage folder: choose another name.')
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,)).run_decompositions({})
    try:
        model = _convert(program, wrapper, example, precision)
    except Exception as error:  # coremltools names the op it has no conversion for
        raise ExportError(unconvertible_message(error, program)) from error
    stored = {
        'input_shape': list(example.shape[2:]),
        **metadata,
        'runtime': NAME,
        'precision': precision,
        'outputs': list(wrapper.output_names),
    }
    for key, value in stored.items():
        model.user_defined_metadata[key] = json.dumps(value)
    model.input_description[INPUT_NAME] = (
        'float32 (1, 3, H, W) BGR 0..255 as cv2 reads it, resized; normalisation is inside'
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    work = tempfile.mkdtemp(
        dir=os.path.dirname(out),
        prefix=f'.{os.path.basename(out)}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-',
    )
    try:
        built = os.path.join(work, os.path.basename(out))
        model.save(built)
        _replace_folder(built, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [out]


# ------------------------------------------------------------------ structure checks
def read_program(path: str):
    """(the model's spec, its ML Program as coremltools' MIL ``Program``, const values
    loaded from the weights file)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(path, skip_model_load=True)
    spec = model.get_spec()
    program = load(
        spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir
    )
    return spec, program


def _operations(program):
    for function in program.functions.values():
        yield from function.operations


def _has_constant(program, values: np.ndarray, rtol: float) -> bool:
    """A const op of the program holds ``values`` (any shape of the same size)."""
    for op in _operations(program):
        if op.op_type == 'const' and op.val.val is not None:
            value = np.asarray(op.val.val)
            if (
                value.size == values.size
                and value.dtype.kind == 'f'
                and np.allclose(value.reshape(-1).astype(np.float64), values, rtol=rtol, atol=0)
            ):
                return True
    return False


def check_structure(
    path: str, fused_model: nn.Module, example: torch.Tensor, classes: Optional[List[str]] = None
) -> dict:
    """What can be checked of a Core ML artefact without Apple's runtime, against the
    fused model it was exported from at ``example``'s shape:

    * the input ``image`` (1, 3, H, W) float32, the outputs' names, shapes and kinds as
      the export wrapper gives them;
    * the normalisation inside: the mean and the std (or its reciprocal) of the model's
      data preprocessor are constants of the program (float16 ones within its rounding);
    * the compute precision: float16 convolution weights in an fp16 artefact, float32
      ones in an fp32 one;
    * the class names in the metadata: ``classes`` when given, and as many as the model
      has classes;
    * as many convolutions as the fused model runs (``count_conv_calls``): none lost,
      none left unfused.

    Returns ``passed`` and ``problems`` (one line each), and what was read."""
    from ..predict.metadata import num_classes_of

    spec, program = read_program(path)
    task = task_of(fused_model)
    wrapper = WRAPPERS[task](fused_model, tuple(example.shape[2:])).eval()
    with torch.no_grad():
        expected = wrapper(example)
    expected = expected if isinstance(expected, (tuple, list)) else [expected]
    problems = []

    inputs = [(i.name, list(i.type.multiArrayType.shape)) for i in spec.description.input]
    if inputs != [(INPUT_NAME, list(example.shape))]:
        problems.append(f'inputs are {inputs}, expected [({INPUT_NAME!r}, {list(example.shape)})]')
    outputs = [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output]
    wanted = [(name, list(t.shape)) for name, t in zip(wrapper.output_names, expected)]
    if outputs != wanted:
        problems.append(f'outputs are {outputs}, expected {wanted}')

    meta = {
        k: json.loads(v)
        for k, v in spec.description.metadata.userDefined.items()
        if not k.startswith('com.github.apple')
    }
    precision = meta.get('precision')
    rtol = 1e-3 if precision == 'fp16' else 1e-6
    normalize = wrapper.normalize
    mean = normalize.mean.double().reshape(-1).numpy()
    std = normalize.std.double().reshape(-1).numpy()
    if not _has_constant(program, mean, rtol):
        problems.append(f'the normalisation mean {mean.tolist()} is not in the program')
    if not (_has_constant(program, std, rtol) or _has_constant(program, 1 / std, rtol)):
        problems.append(f'the normalisation std {std.tolist()} is not in the program')

    stored = meta.get('classes')
    count = num_classes_of(fused_model)
    if classes is not None and stored != list(classes):
        problems.append(f'class names {stored} in the metadata, expected {list(classes)}')
    if stored and len(stored) != count:
        problems.append(f'{len(stored)} class names in the metadata for a model of {count} classes')
    if meta.get('task') not in (None, task):
        problems.append(f'metadata task {meta.get("task")!r}, the model is a {task} model')

    weights = {
        str(op.weight.val.dtype)
        for op in _operations(program)
        if op.op_type == 'conv' and op.weight.val is not None
    }
    wanted_weights = {dict(fp16='float16', fp32='float32').get(precision)}
    if weights != wanted_weights:
        problems.append(
            f'convolution weights are {sorted(weights)} in a {precision!r} '
            f'artefact, expected {sorted(map(str, wanted_weights))}'
        )
    ops = Counter(op.op_type for op in _operations(program))
    torch_convs = count_conv_calls(wrapper, example)
    if ops['conv'] != torch_convs:
        problems.append(
            f'{ops["conv"]} convolutions in the program, the fused model runs {torch_convs}'
        )
    return dict(
        passed=not problems,
        problems=problems,
        task=task,
        inputs=inputs,
        outputs=outputs,
        metadata=meta,
        convs=ops['conv'],
        torch_convs=torch_convs,
        ops=dict(ops),
    )
