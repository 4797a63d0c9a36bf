"""OpenVINO (CPU plugin): the ONNX graph of the onnxruntime route read by OpenVINO's ONNX
front end and saved as IR (``.xml`` + ``.bin``, weights kept float32); the metadata in
the IR's ``rt_info`` (``mobileone_mm`` / ``metadata``, JSON).

int8 is OpenVINO reading onnxruntime's QDQ int8 graph (``runtimes/onnxruntime_int8.py``): its CPU
plugin turns the QuantizeLinear / DequantizeLinear pairs into int8 kernels. Chosen over
NNCF's post-training quantization because it is one calibration and one int8 check for
both runtimes, NNCF is not a dependency, and it was the fastest int8 form measured
(issue 22: 0.21x timm's fused fp32 at S0 320 on 2 AMD EPYC threads, against 0.28x for the
same graph in onnxruntime)."""

import functools
import io
import json
import re
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoints.paths import check_input_file
from ..predict.photos import PredictError
from ..predict.prediction import TASK_OUTPUTS
from .common import operator_error, write_staged

NAME = 'openvino'
EXTRA = 'openvino'
PACKAGES = ('openvino', 'onnx')
PRECISIONS = ('fp32', 'int8')
SUFFIX = '.xml'
RUNS_HERE = True
RT_INFO = ['mobileone_mm', 'metadata']


def convert(graph: bytes):
    """An ONNX graph (bytes) as an OpenVINO model; an operator OpenVINO's ONNX front end
    cannot take raises ExportError naming it."""
    import openvino as ov

    try:
        return ov.convert_model(io.BytesIO(graph))
    except Exception as error:  # noqa: BLE001 (OpenVINO's conversion errors)
        raise operator_error(
            NAME, _failed_operator(error), detail=str(error).strip().splitlines()[0][:200]
        ) from None


def _failed_operator(error: Exception) -> str:
    found = re.search(
        r"(?:operation|op|node)[^\n]*?['\"\[]?([A-Z][A-Za-z0-9_]+)['\"\]]?", str(error)
    )
    return found.group(1) if found else 'unknown'


def export(
    wrapper: torch.nn.Module,
    example: torch.Tensor,
    out: str,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
) -> List[str]:
    import openvino as ov

    from .onnxruntime import serialized_graph

    model = convert(
        serialized_graph(wrapper, example, metadata, precision, calibration, runtime=NAME)
    )
    model.set_rt_info(json.dumps(metadata), RT_INFO)
    return write_staged(out, lambda path: ov.save_model(model, path, compress_to_fp16=False))


class Runner:
    """An IR compiled for this CPU (``runtimes.openvino.compile_openvino``: float32 inference
    precision, latency mode, ``threads`` inference threads)."""

    def __init__(self, model, metadata: dict, threads: Optional[int] = None):
        self.run = openvino_runner(compile_openvino(model, threads))
        self.metadata = metadata
        shape = model.inputs[0].get_partial_shape()
        self.input_shape: Optional[Tuple[int, int]] = (
            (shape[2].get_length(), shape[3].get_length())
            if shape.rank.get_length() == 4 and shape[2].is_static and shape[3].is_static
            else None
        )

    def __call__(self, image: np.ndarray) -> List[np.ndarray]:
        return self.run(image)


def load(path: str, threads: Optional[int] = None) -> Runner:
    """The IR ready to run; a missing, unreadable or foreign IR is refused with
    PathError / PredictError naming the file."""

    path = check_input_file(path, 'OpenVINO IR')
    try:
        model = openvino_core().read_model(path)
    except Exception as error:  # noqa: BLE001 (OpenVINO's own exception types)
        raise PredictError(
            f'{path!r} is not a readable OpenVINO IR ({type(error).__name__}: '
            f'{str(error).strip()[:200]}): export it again with '
            f'tools/export.py --runtime openvino.'
        ) from None
    fix = 'Export it with tools/export.py --runtime openvino.'
    if not model.has_rt_info(RT_INFO):
        raise PredictError(f'The OpenVINO IR {path!r} has no mobileone-mm metadata. {fix}')
    metadata = json.loads(model.get_rt_info(RT_INFO).astype(str))
    task = metadata.get('task')
    names = [output.get_any_name() for output in model.outputs]
    if task not in TASK_OUTPUTS or names != TASK_OUTPUTS[task]:
        raise PredictError(
            f'The OpenVINO IR {path!r} has outputs {names} for task {task!r}, not ours. {fix}'
        )
    return Runner(model, metadata, threads)


@functools.cache
def openvino_core():
    """The process's one ``openvino.Core``: made on first use, kept to the end.

    OpenVINO's CPU plugin (since 2022.2, for AMX's larger signal frames; seen in 2026.4.1 on
    AMD CPUs too) gives the thread that first compiles a model a new alternate signal stack,
    and when freed unmaps it, putting back the one it replaced only if its own is still the
    thread's. Each ``Core`` has its own plugin, so two Cores freed in the order they were made
    leave the thread's alternate signal stack on unmapped memory: the next signal handled on
    it (SIGCHLD when a subprocess or a DataLoader worker ends: Python's handlers run on the
    alternate stack) kills the process with SIGSEGV, or writes its frame over whatever was
    mapped there since. One Core that is never freed makes one plugin, whose stack stays."""
    import openvino as ov

    return ov.Core()


def compile_openvino(model, threads: Optional[int] = None):
    """An OpenVINO model (``openvino.Model``) or ONNX graph (bytes) compiled for this CPU:
    float32 inference precision (not the bf16 some CPUs default to; a QDQ int8 graph still
    runs int8 kernels), latency mode, ``threads`` inference threads (default: OpenVINO's
    choice)."""
    import openvino as ov

    if isinstance(model, bytes):
        model = ov.convert_model(io.BytesIO(model))
    config = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = int(threads)
    return openvino_core().compile_model(model, 'CPU', config)


def openvino_runner(compiled) -> Callable[[np.ndarray], List[np.ndarray]]:
    """``run(array)`` -> the outputs (numpy arrays, in the model's output order) of a
    compiled OpenVINO model with one input."""
    request = compiled.create_infer_request()

    def run(x):
        results = request.infer({0: np.ascontiguousarray(x, np.float32)})
        return [np.array(results[output]) for output in compiled.outputs]

    return run
