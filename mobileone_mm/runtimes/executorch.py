"""ExecuTorch with the XNNPACK delegate (Android / iOS ARM CPUs; XNNPACK's x86 kernels
stand in for them here): the export wrapper captured by ``torch.export``, lowered with
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and written as
one ``.pte`` program, run by ``executorch.runtime``.

The metadata lives in the program itself: a constant method ``METADATA_METHOD`` returns
it as JSON (ExecuTorch's own slot for model facts: constant methods are how its LLM
exports carry vocabulary size and the like), read back by ``load`` with the Python
runtime, so the artefact is one file. ``build_program`` also says what the lowering gave
XNNPACK (``delegation``): the operators it delegated and those left to ExecuTorch's
portable kernels (the input's BGR->RGB index: XNNPACK has no gather; in a detector, the
anchors' repeat and slices of the box decoding; a segmentor's argmax).

int8: PT2E static quantization with torchao's ``prepare_pt2e`` / ``convert_pt2e`` and
ExecuTorch's ``XNNPACKQuantizer`` (weights int8 symmetric per output channel, activations
int8 per tensor, ranges = min / max over the calibration images), then the same lowering:
XNNPACK runs the quantized convolutions as integer kernels. As in the onnxruntime int8
graph (``runtimes/onnxruntime_int8.py``), only the network's layers are quantized: the input
normalisation and the wrapper's decoding stay float, and so do the heads' last layers
(``output_layers``: their outputs are the model's answers) and layers XNNPACK refuses in
int8 (``refused_layers``).

Two ways a model can be refused, both ExportError naming the runtime, the operator and
the layer: an operator outside the Core ATen set ExecuTorch programs are made of (edge
verification), or one this runtime has no kernel for (checked at export against the
runtime's operator registry, instead of failing when the program is loaded).
"""

import json
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoints.io import atomic_file
from ..checkpoints.marks import EXECUTORCH_METADATA_METHOD
from ..checkpoints.paths import check_input_file
from ..loading.config import ExportError
from ..predict.photos import PredictError
from ..predict.prediction import TASK_OUTPUTS

NAME = 'executorch'
EXTRA = 'executorch'
PACKAGES = ('executorch', 'torchao')
PRECISIONS = ('fp32', 'int8')
SUFFIX = '.pte'
RUNS_HERE = True
METADATA_METHOD = EXECUTORCH_METADATA_METHOD.decode()  # the mark reader finds it by name
MAX_REQUANTIZATION = 256.0  # XNNPACK's limit for int8 convolutions / linear layers
COMPUTE_OPS = (
    'aten.convolution.default',
    'aten.conv2d.default',
    'aten.linear.default',
    'aten.addmm.default',
    'aten.mm.default',
)


def export(
    wrapper: torch.nn.Module,
    example: torch.Tensor,
    out: str,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
) -> List[str]:
    """The ``.pte`` program of ``wrapper`` at ``example``'s shape, written atomically to
    ``out`` (metadata inside it, module docstring); returns ``[out]``."""
    program, _ = build_program(wrapper, example, metadata, precision, calibration)
    with atomic_file(out) as f:
        f.write(program)
    return [out]


def build_program(
    wrapper: torch.nn.Module,
    example: torch.Tensor,
    metadata: dict,
    precision: str = 'fp32',
    calibration: Optional[List[np.ndarray]] = None,
) -> Tuple[bytes, dict]:
    """``export`` without writing: the serialized program and what XNNPACK runs of it
    (``delegation``)."""
    if precision not in PRECISIONS:
        raise ExportError(
            f'The {NAME} runtime takes precision {" or ".join(PRECISIONS)}, not {precision!r}.'
        )
    with torch.no_grad():
        exported = torch.export.export(wrapper.eval(), (example,))
        if precision == 'int8':
            exported = quantize(exported, example, calibration)
    edge = lower(exported, metadata)
    delegated = delegation(edge)  # before to_executorch, which adds memory planning nodes
    program = edge.to_executorch()
    check_kernels(program)
    return program.buffer, delegated


def quantize(exported, example: torch.Tensor, calibration: Optional[Sequence[np.ndarray]]):
    """``exported`` (a torch.export program) statically quantized for XNNPACK (module
    docstring), calibrated on ``calibration`` (arrays of the example's shape). Layers
    whose int8 form XNNPACK refuses (``refused_layers``) are calibrated again in float."""
    from .onnxruntime_int8 import check_calibration

    images = [
        torch.from_numpy(image)
        for image in check_calibration(calibration or [], tuple(example.shape))
    ]
    float_layers = set(output_layers(exported.graph))
    converted = _calibrated(exported, float_layers, images)
    refused = refused_layers(converted)
    if refused:
        converted = _calibrated(exported, float_layers | set(refused), images)
    return torch.export.export(converted, (example,))


def _calibrated(exported, float_layers, images):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = (
        XNNPACKQuantizer()
        .set_global(get_symmetric_quantization_config(is_per_channel=True))
        .set_filter_function(lambda node: _in_network(node) and _layer(node) not in float_layers)
    )
    prepared = prepare_pt2e(exported.module(), quantizer)
    for image in images:
        prepared(image)
    return convert_pt2e(prepared)


def refused_layers(converted) -> List[str]:
    """The quantized convolutions / linear layers of a converted PT2E model whose
    requantization scale (input scale x weight scale / output scale, largest over the
    channels) is at least ``MAX_REQUANTIZATION``: XNNPACK refuses them when the program
    is loaded (xnn_status_unsupported_parameter; in a large graph a heap corruption
    instead). It happens when a layer's outputs are (nearly) constant on the calibration
    images, so that their int8 scale is tiny: a dead layer of a randomly initialised
    detector (the neck's first extra depthwise conv of the tiny SSDLite: 1.2e8)."""

    def scale(node):
        value = node.args[1]
        return getattr(converted, value.target) if isinstance(value, torch.fx.Node) else value

    def is_dequantize(node):
        return isinstance(node, torch.fx.Node) and 'dequantize' in str(node.target)

    found = []
    for node in converted.graph.nodes:
        if not (
            node.op == 'call_function'
            and str(node.target) in COMPUTE_OPS
            and is_dequantize(node.args[0])
            and is_dequantize(node.args[1])
        ):
            continue
        after, output = node, None
        for _ in range(3):  # through a fused activation (ReLU, ReLU6) to the quantize
            if len(after.users) != 1:
                break
            after = next(iter(after.users))
            if 'quantize_per_tensor' in str(after.target) and not is_dequantize(after):
                output = after
                break
        if output is None:
            continue
        weight_scale = float(torch.as_tensor(scale(node.args[1])).max())
        requantization = float(scale(node.args[0])) * weight_scale / float(scale(output))
        if requantization >= MAX_REQUANTIZATION:
            found.append(_layer(node))
    return found


def _in_network(node) -> bool:
    """Whether ``node`` runs inside a layer of the wrapped network: not in the wrapper's
    own forward (box decoding, score softmax, output reshapes) nor in its input
    normalisation, which stay float as in the onnxruntime int8 graph."""
    layers = [
        (path, kind) for path, kind in (node.meta.get('nn_module_stack') or {}).values() if path
    ]  # the wrapper itself is the entry with an empty path
    return bool(layers) and not any(str(kind).endswith('Normalize') for _, kind in layers)


def _layer(node) -> Optional[str]:
    """The qualified name of the innermost module that ran ``node``, None at top level."""
    stack = node.meta.get('nn_module_stack') or {}
    return next(reversed(stack.values()))[0] if stack else None


def output_layers(graph) -> List[str]:
    """The layers (module names) of the convolutions and linear layers whose results
    reach a graph output without passing through another one: the heads' last layers.
    The torch.export counterpart of ``runtimes.onnxruntime_int8.output_layers``."""
    outputs = next(node for node in graph.nodes if node.op == 'output')
    found, stack, seen = [], list(outputs.all_input_nodes), set()
    while stack:  # backwards from the outputs, stopping at each compute node
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == 'call_function' and str(node.target) in COMPUTE_OPS:
            layer = _layer(node)
            if layer and layer not in found:
                found.append(layer)
        else:
            stack.extend(node.all_input_nodes)
    return found


def lower(exported, metadata: dict):
    """The edge program with XNNPACK's partitions delegated and the metadata as a
    constant method; an operator outside Core ATen raises ExportError."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch._export.verifier import SpecViolationError

    try:
        return to_edge_transform_and_lower(
            exported,
            partitioner=[XnnpackPartitioner()],
            constant_methods={METADATA_METHOD: json.dumps(metadata)},
        )
    except SpecViolationError as error:
        found = re.search(r'torch\.ops\.([\w.]+)\]', str(error))
        raise operator_error(
            found.group(1) if found else 'unknown',
            exported.graph,
            'not in the Core ATen operator set ExecuTorch programs are made of',
        ) from None


def delegation(edge) -> dict:
    """What the lowering gave XNNPACK: ``delegated`` (operators inside its partitions),
    ``partitions``, and ``portable`` (operator -> count of those left to ExecuTorch's
    portable kernels; view / getitem bookkeeping not counted)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    portable = {
        name: int(entry.non_delegated)
        for name, entry in sorted(info.delegation_by_operator.items())
        if entry.non_delegated and name != 'getitem'
    }
    return dict(
        delegated=int(info.num_delegated_nodes),
        partitions=int(info.num_delegated_subgraphs),
        portable=portable,
    )


def operator_error(operator: str, graph, reason: str) -> ExportError:
    """The ExportError of an operator this runtime cannot take, naming the layer of the
    first node of ``graph`` that runs it."""
    key = operator.replace('::', '.')
    layers = [
        _layer(node)
        for node in graph.nodes
        if node.op == 'call_function'
        and (str(node.target) == key or _op_name(node.target) == operator)
    ]
    where = f' in layer {layers[0]!r}' if layers and layers[0] else ''
    return ExportError(
        f'The {NAME} runtime cannot take the operator {operator}{where} '
        f'({reason}): replace that layer, or export to another runtime.'
    )


def _op_name(target) -> str:
    schema = getattr(target, '_schema', None)
    if schema is None:
        return ''
    return f'{schema.name}.{schema.overload_name}' if schema.overload_name else schema.name


def check_kernels(program):
    """ExportError for an operator left outside XNNPACK that this ExecuTorch runtime has
    no kernel for (loading the program would fail with 'Missing operator')."""
    from executorch.runtime import Runtime

    registered = Runtime.get().operator_registry.operator_names
    for plan in program.executorch_program.execution_plan:
        for op in plan.operators:
            name = f'{op.name}.{op.overload}' if op.overload else op.name
            if name not in registered:
                raise operator_error(
                    name,
                    program.exported_program().graph,
                    'no kernel for it in this ExecuTorch runtime',
                )


class Runner:
    """A ``.pte`` program's forward method on this CPU."""

    def __init__(self, program, path: str):
        self.path = path
        self.metadata = _metadata(program, path)
        task = self.metadata.get('task')
        self.forward = program.load_method('forward')
        meta = self.forward.metadata
        if task not in TASK_OUTPUTS or meta.num_outputs() != len(TASK_OUTPUTS[task]):
            raise PredictError(
                f'The ExecuTorch program {path!r} has {meta.num_outputs()} '
                f'outputs for task {task!r}, not ours: export it again with '
                f'tools/export.py --runtime executorch.'
            )
        sizes = tuple(meta.input_tensor_meta(0).sizes())
        self.input_size = sizes
        self.input_shape: Optional[Tuple[int, int]] = (int(sizes[2]), int(sizes[3]))

    def __call__(self, image: np.ndarray) -> List[np.ndarray]:
        """(1, 3, H, W) float32 BGR 0..255 at the program's shape -> the raw outputs."""
        image = np.asarray(image)
        if image.dtype != np.float32 or tuple(image.shape) != self.input_size:
            raise PredictError(
                f'The ExecuTorch program {self.path!r} takes a float32 image '
                f'{self.input_size} (fixed at export); got {image.dtype} '
                f'{tuple(image.shape)}: resize the photo to it first.'
            )
        outputs = self.forward.execute([torch.from_numpy(np.ascontiguousarray(image))])
        return [output.numpy() for output in outputs]


def _metadata(program, path: str) -> dict:
    if METADATA_METHOD not in program.method_names:
        raise PredictError(
            f'The ExecuTorch program {path!r} has no mobileone-mm metadata '
            f'(no method {METADATA_METHOD!r}): export it with '
            f'tools/export.py --runtime executorch.'
        )
    return json.loads(program.load_method(METADATA_METHOD).execute([])[0])


def load(path: str, threads: Optional[int] = None) -> Runner:
    """The ``.pte`` program ready to run; a missing file or one that is not such a program
    is refused with PathError / PredictError naming it."""
    from executorch.runtime import Runtime

    path = check_input_file(path, 'ExecuTorch program')
    set_threads(threads)
    try:
        program = Runtime.get().load_program(path)
    except RuntimeError as error:
        raise PredictError(
            f'{path!r} is not a readable ExecuTorch program ({error}): export '
            f'it again with tools/export.py --runtime executorch.'
        ) from None
    runner = Runner(program, path)
    _LOADED.append(path)
    return runner


_LOADED: List[str] = []  # the programs loaded in this process


def set_threads(threads: Optional[int]):
    """XNNPACK's thread pool to ``threads`` threads. ExecuTorch has one pool per process,
    and the programs loaded with one pool fail (xnn_status_invalid_state, or worse) once
    it is replaced: so it is set before the first program is loaded, and a later load
    asking for another count is refused."""
    from executorch.extension.pybindings import portable_lib

    if not threads or threads == portable_lib._threadpool_get_thread_count():
        return
    if _LOADED:
        raise PredictError(
            f'ExecuTorch runs every program of a process on one thread pool, '
            f'of {portable_lib._threadpool_get_thread_count()} threads since '
            f'{_LOADED[0]!r} was loaded; {threads} threads were asked for: '
            f'load every program with the same threads.'
        )
    portable_lib._unsafe_reset_threadpool(threads)
