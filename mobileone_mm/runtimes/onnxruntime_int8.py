"""int8 deployment: a fused model's ONNX graph, statically quantized by onnxruntime, and
an output check fit for int8.

    graph8 = quantize_graph(graph, calibration)        # bytes -> bytes, same inputs,
                                                       # outputs and metadata (+ 'int8')
    check = judge_int8(fp32_outputs, int8_outputs)     # cosine + task-level agreement

The quantization (each choice measured on the tiny-data models, README "int8"):

* QDQ format (QuantizeLinear / DequantizeLinear pairs that onnxruntime fuses into
  integer kernels), weights int8 symmetric **per output channel**, activations uint8 per
  tensor (the U8S8 form onnxruntime's x86 kernels run with VNNI). Per-channel weights are
  what a re-parameterized model needs: fusion sums 3-5 branches into one kernel whose
  output channels have very different ranges (tiny SSDLite-S0: per-tensor weights lost
  0.021 bbox mAP, per-channel 0.002).
* Calibration: min / max of every activation over the calibration images. Percentile
  (``METHODS``) clips and did worse (Flowers top-1 71.5 against 75.0); onnxruntime
  1.32's entropy calibration returned exactly the min / max ranges here, so it is not
  offered.
* Quantized operators: the network body (``QUANTIZED_OPS``: convolutions, linear layers
  and the ReLU / pooling / concat between them); the rest stays float: the head's
  decoding (softmax, box deltas to boxes), the segmentor's final resize and argmax, the
  SE gates, the input normalisation. The heads' last layers stay float too
  (``output_layers``: their outputs are the model's answers).
* ``keep_float``: more nodes left in float; ``layer_sensitivity`` ranks the layers by
  how far int8 in each alone moves the outputs (the remedy for an outlier activation
  channel; on the tiny models the stem and the first stride-2 blocks rank first, and
  keeping them float changed the metrics by less than their noise).

The check: int8 is not float32 to rounding, so the float32 equality check of the other
deploy paths cannot apply. Instead, per float output, the cosine similarity of the int8
and the float32 outputs (whole tensor per input, in float64) must be at least
``COSINE_MIN`` on every input, and where the task is known the decisions must agree:
top-1 labels (classification), pixel labels (segmentation), detections above the score
threshold (detection: same label, box IoU >= 0.5) on at least ``AGREEMENT_MIN`` of them.
Measured: int8 S0 / S1 backbones with random BN statistics 0.985-0.999, trained tiny
models 0.985-0.998 keeping 84-95 % of their decisions; quantizations with wrong ranges
0.0-0.42 (calibration inputs 255x too large) and 0.33-0.76 (activation scales x100).
"""

import contextlib
import json
import logging
import os
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import CheckFailed, UserError
from .int8_check import judge_int8
from .onnx_graphs import make_session

QUANTIZED_OPS = (
    'Conv',
    'Gemm',
    'MatMul',
    'Relu',
    'Clip',
    'MaxPool',
    'AveragePool',
    'GlobalAveragePool',
    'Concat',
)


METHODS = ('minmax', 'percentile')


METADATA_KEY = 'int8'


class QuantizeError(UserError, ValueError):
    """Calibration data or a graph that cannot be quantized, or an int8 graph whose
    outputs are too far from float32, with the reason and the fix."""


class Int8CheckFailed(CheckFailed, QuantizeError):
    """An int8 graph whose outputs are too far from float32 (cosine, task agreement)."""


def check_calibration(images: Sequence[np.ndarray], input_shape: Sequence) -> List[np.ndarray]:
    """The calibration images as float32 arrays of the graph's input shape (batch free),
    else QuantizeError naming what is wrong: none, another shape, NaN / inf, all alike."""
    images = [np.ascontiguousarray(np.asarray(image, dtype=np.float32)) for image in images]
    if not images:
        raise QuantizeError(
            'No calibration images: static int8 quantization needs a few '
            'real inputs (8-32) to measure the activation ranges.'
        )
    expected = tuple(input_shape)
    for i, image in enumerate(images):
        dims = image.shape
        fits = len(dims) == len(expected) and all(
            not isinstance(e, int) or e == d for e, d in zip(expected[1:], dims[1:])
        )
        if not fits:
            raise QuantizeError(
                f'Calibration image {i} has shape {dims}; the graph takes '
                f"{expected}: give images of the graph's input size."
            )
        if not np.isfinite(image).all():
            raise QuantizeError(f'Calibration image {i} holds NaN or inf: give real images.')
    if (
        all(np.array_equal(images[0], image) for image in images[1:])
        and float(images[0].std()) == 0.0
    ):
        raise QuantizeError(
            'The calibration images are all one constant value: the '
            'activation ranges would be those of a blank image. Give real '
            'images.'
        )
    return images


class _Reader:
    """onnxruntime's CalibrationDataReader over in-memory images."""

    def __init__(self, name: str, images: Sequence[np.ndarray]):
        self.name, self.images, self.index = name, list(images), 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.index >= len(self.images):
            return None
        self.index += 1
        return {self.name: self.images[self.index - 1]}

    def __len__(self):
        return len(self.images)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs advice on the root logger (pre-processing, progress
    of histogram calibration); silence it for the duration, then restore the level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def graph_input(model) -> tuple:
    """(name, shape) of the graph's only input; dims that are free are strings."""
    inputs = [
        i
        for i in model.graph.input
        if i.name not in {init.name for init in model.graph.initializer}
    ]
    if len(inputs) != 1:
        raise QuantizeError(
            f'The graph has {len(inputs)} inputs; int8 calibration here '
            f'feeds graphs with one image input.'
        )
    dims = tuple(
        d.dim_value if d.HasField('dim_value') else (d.dim_param or '?')
        for d in inputs[0].type.tensor_type.shape.dim
    )
    return inputs[0].name, dims


def quantizable_nodes(graph: bytes) -> List[str]:
    """Names of the nodes ``quantize_graph`` turns to int8 arithmetic (convolutions and
    linear layers), in graph order: the candidates for ``keep_float``."""
    import onnx

    model = onnx.load_from_string(graph)
    return [n.name for n in model.graph.node if n.op_type in ('Conv', 'Gemm', 'MatMul')]


def output_layers(graph: bytes) -> List[str]:
    """The quantizable nodes whose results reach a graph output without passing through
    another quantizable node: the heads' last layers (classifier, class / box
    predictors, segmentation logits). Kept float by default: their outputs are the
    model's answers, and int8 there costs the most accuracy per operation saved."""
    import onnx

    model = onnx.load_from_string(graph)
    compute = set(quantizable_nodes(graph))
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.name not in compute:
            continue
        stack, seen = list(node.output), set()
        while stack:
            tensor = stack.pop()
            if tensor in outputs:
                found.append(node.name)
                break
            for nxt in consumers.get(tensor, []):
                if nxt.name not in compute and nxt.name not in seen:
                    seen.add(nxt.name)
                    stack.extend(nxt.output)
    return found


def quantize_graph(
    graph: bytes,
    calibration: Sequence[np.ndarray],
    method: str = 'minmax',
    keep_float: Sequence[str] = (),
    cache: Optional[str] = None,
) -> bytes:
    """``graph`` (a serialized float32 ONNX model) statically quantized to int8 (QDQ,
    per-channel weights; module docstring), calibrated on ``calibration`` (arrays the
    graph takes, e.g. (1, 3, H, W) float32). ``keep_float``: node names left in float.
    ``cache``: a file for the activation ranges; when it exists they are read from it
    instead of calibrating again (``layer_sensitivity`` quantizes one graph many times).

    The int8 graph keeps the inputs, outputs and metadata of ``graph`` and adds the
    metadata entry ``int8`` (JSON: how it was quantized)."""
    import onnx

    model = onnx.load_from_string(graph)
    images = check_calibration(calibration, graph_input(model)[1])
    unknown = sorted(set(keep_float) - {n.name for n in model.graph.node})
    if unknown:
        raise QuantizeError(
            f'keep_float names nodes the graph does not have: '
            f'{", ".join(unknown[:3])}; see quantizable_nodes(graph).'
        )
    quantized = _quantize(model, images, method, cache, nodes_to_exclude=list(keep_float))
    used = {name for node in quantized.graph.node for name in node.input}
    unused = [init for init in quantized.graph.initializer if init.name not in used]
    for init in unused:  # the constants of the ReLU / Clip nodes the quantizer removed
        quantized.graph.initializer.remove(init)
    del quantized.metadata_props[:]
    for prop in model.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(
        key=METADATA_KEY,
        value=json.dumps(
            dict(
                format='QDQ',
                weights='int8 symmetric per output channel',
                activations='uint8 per tensor',
                calibration=method,
                calibration_images=sum(int(i.shape[0]) for i in images),
                float_nodes=list(keep_float),
            )
        ),
    )
    return quantized.SerializeToString()


def _quantize(model, images: Sequence[np.ndarray], method: str, cache: Optional[str], **nodes):
    """onnxruntime's ``quantize_static`` with our settings on an onnx ModelProto;
    ``nodes``: its ``nodes_to_exclude`` / ``nodes_to_quantize``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise QuantizeError(f'Unknown calibration method {method!r}: use one of {METHODS}.')
    calibrate_method = dict(
        minmax=CalibrationMethod.MinMax, percentile=CalibrationMethod.Percentile
    )[method]
    with tempfile.TemporaryDirectory(prefix='mobileone-int8-') as tmp, _quiet():
        source, target = os.path.join(tmp, 'fp32.onnx'), os.path.join(tmp, 'int8.onnx')
        onnx.save(model, source)
        quantize_static(
            source,
            target,
            _Reader(graph_input(model)[0], images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            calibrate_method=calibrate_method,
            calibration_cache_path=cache,
            **nodes,
        )
        return onnx.load(target)


def layer_sensitivity(
    graph: bytes,
    calibration: Sequence[np.ndarray],
    inputs: Sequence[np.ndarray],
    method: str = 'minmax',
) -> List[tuple]:
    """How much int8 in each layer alone moves the outputs: for every node of
    ``quantizable_nodes``, the graph with only that node in int8, run on ``inputs``;
    returns (node, 1 - cosine to float32 over all float outputs and inputs), worst
    first. The activation ranges are calibrated once."""
    import onnx

    model = onnx.load_from_string(graph)
    images = check_calibration(calibration, graph_input(model)[1])
    name = graph_input(model)[0]

    def outputs(serialized):
        session = make_session(serialized)
        return [session.run(None, {name: x}) for x in inputs]

    reference = outputs(graph)
    result = []
    with tempfile.TemporaryDirectory(prefix='mobileone-int8-') as tmp:
        cache = os.path.join(tmp, 'ranges.json')
        for node in quantizable_nodes(graph):
            one = _quantize(model, images, method, cache, nodes_to_quantize=[node])
            check = judge_int8(reference, outputs(one.SerializeToString()))
            result.append((node, 1 - check['cosine']))
    return sorted(result, key=lambda item: -item[1])
