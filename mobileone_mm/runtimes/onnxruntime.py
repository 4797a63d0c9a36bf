"""onnxruntime: the export wrapper as an ONNX graph (opset 17; tools/export_onnx.py's
graph), the metadata in the graph's ``metadata_props``; int8 is onnxruntime's static QDQ
quantization of that graph (``runtimes/onnxruntime_int8.py``: per-channel int8 weights, uint8
activations, the heads' last layers float).
"""

import re
from typing import List, Optional

import numpy as np
import torch

from ..checkpoints.io import atomic_file
from ..predict.prediction import SessionRunner
from .common import operator_error
from .onnx_graphs import load_onnx, onnx_graph

NAME = 'onnxruntime'


EXTRA = 'onnx'


PACKAGES = ('onnx', 'onnxruntime')


PRECISIONS = ('fp32', 'int8')


SUFFIX = '.onnx'


RUNS_HERE = True


def serialized_graph(
    wrapper: torch.nn.Module,
    example: torch.Tensor,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
    runtime: str = NAME,
) -> bytes:
    """The ONNX graph ``export`` writes, as bytes (also what OpenVINO reads). An operator
    the ONNX exporter cannot take raises ExportError naming ``runtime``, the operator and
    its layer."""
    from torch.onnx.errors import UnsupportedOperatorError

    try:
        graph = onnx_graph(wrapper, example, metadata).SerializeToString()
    except UnsupportedOperatorError as error:
        raise operator_error(
            runtime, _operator_of(error), wrapper, example, 'no ONNX opset 17 form'
        ) from None
    if precision == 'int8':
        from mobileone_mm.runtimes.onnxruntime_int8 import output_layers, quantize_graph

        graph = quantize_graph(graph, calibration or [], keep_float=output_layers(graph))
    return graph


def _operator_of(error: Exception) -> str:
    found = re.search(r"operator '([^']+)'", str(error))
    return found.group(1) if found else str(error).splitlines()[0][:80]


def export(
    wrapper: torch.nn.Module,
    example: torch.Tensor,
    out: str,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
) -> List[str]:
    graph = serialized_graph(wrapper, example, metadata, precision, calibration)
    with atomic_file(out) as f:
        f.write(graph)
    return [out]


def load(path: str, threads: Optional[int] = None) -> SessionRunner:
    """The graph in an onnxruntime CPU session (``runtimes.onnxruntime.load_onnx``: metadata
    checked against the graph)."""
    session, meta = load_onnx(path, threads)
    return SessionRunner(session, meta)
