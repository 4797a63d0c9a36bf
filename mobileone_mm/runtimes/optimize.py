"""The fastest CPU form of a fused model that still gives the same outputs.

``optimize_for_inference(model, example)`` fuses a deep copy of ``model`` (every
MobileOne block becomes one conv; the caller's model is not touched), then builds the
first backend of this list that works and passes the output check:

1. ``onnxruntime``: the fused model exported to ONNX (opset 17) and run by onnxruntime's
   CPU provider with all graph optimisations (its NCHWc layout pass, conv + bias + ReLU
   fusion). The winner everywhere we measured.
2. ``openvino``: the same ONNX graph compiled by OpenVINO's CPU plugin (float32
   inference precision; ``export.compile_openvino``), when OpenVINO is installed. In
   float32 slower than onnxruntime on this project's machine (S0 / S1 at 320, one
   thread: 1.3x / 1.1x onnxruntime's time), so second; in int8 the faster one
   (``INT8_BACKENDS``).
3. ``torchscript``: ``torch.jit.trace`` + ``torch.jit.freeze`` with oneDNN Graph fusion
   (enabled only around our own calls, the global flag is restored). Used when
   onnxruntime and OpenVINO are missing or cannot run the model. ``torch.jit.trace`` is
   deprecated (FutureWarning) in torch 2.14; its warnings are silenced here.
4. ``eager``: the fused model in channels_last memory format.

Measured speed-ups, and the forms tried and not kept, are in the README's "Speed on a
CPU" section (tools/benchmark.py; results of this project's machine in tools/results/).

The output check is ``verify.Reference``, the one every deploy path uses: on
``example``, the backend's outputs must be no further from a float64 run of the train
form (``model`` as given, not fused) than its float32 run is, times ``verify.FACTOR``;
so the check judges the fusion and the backend together, and not the model's float32
conditioning. A backend that fails it is skipped (``auto``) or raises (named backend).
"""

import copy
import warnings
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from ..fusion.flat_outputs import FlatOutputs, flatten, unflatten
from ..fusion.output_check import Reference, check_input, describe
from ..loading.config import task_of
from ..models.reparam import reparameterize_model
from .int8_check import describe_int8, judge_int8
from .onnx_graphs import flat_onnx, make_session
from .onnxruntime_int8 import QuantizeError, output_layers, quantize_graph
from .openvino import compile_openvino, openvino_runner

BACKENDS = ('onnxruntime', 'openvino', 'torchscript', 'eager')


def _onnxruntime(flat: nn.Module, example: torch.Tensor, threads: int) -> Callable:
    session = make_session(flat_onnx(flat, example), threads)

    def run(x):
        arrays = session.run(None, {'input': x.detach().contiguous().numpy()})
        return [torch.from_numpy(a) for a in arrays]

    return run


def _openvino(flat: nn.Module, example: torch.Tensor, threads: int) -> Callable:
    arrays = openvino_runner(compile_openvino(flat_onnx(flat, example), threads))
    return lambda x: [torch.from_numpy(a) for a in arrays(x.detach().contiguous().numpy())]


class _OneDNNFusion:
    """oneDNN Graph fusion on for the duration of a call, the global flag restored."""

    def __enter__(self):
        self.previous = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)

    def __exit__(self, *exc):
        torch.jit.enable_onednn_fusion(self.previous)


def _torchscript(flat: nn.Module, example: torch.Tensor, threads: int) -> Callable:
    with torch.no_grad(), warnings.catch_warnings(), _OneDNNFusion():
        warnings.simplefilter('ignore')  # deprecation of torch.jit, TracerWarnings
        frozen = torch.jit.freeze(torch.jit.trace(flat, example, strict=False))
        for _ in range(3):  # the profiling executor fuses after the first runs
            frozen(example)

    def run(x):
        with torch.inference_mode(), _OneDNNFusion():
            return list(frozen(x))

    return run


def _eager(flat: nn.Module, example: torch.Tensor, threads: int) -> Callable:
    flat = flat.to(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode():
            return [t.contiguous() for t in flat(x.contiguous(memory_format=torch.channels_last))]

    return run


BUILDERS = dict(
    onnxruntime=_onnxruntime, openvino=_openvino, torchscript=_torchscript, eager=_eager
)


class OptimizedModel:
    """A callable with the outputs of ``model(x)`` (same nesting), run by ``backend``.

    Each input shape gets its own traced / exported graph, built on first use and
    checked like the example's against ``train`` (the train form, as flat outputs; None
    without the check). Attributes: ``backend``, ``check`` (the example's output check,
    see ``verify.Reference.judge``), ``skipped`` (backend -> why it was not used).
    """

    def __init__(
        self, flat: nn.Module, train: Optional[nn.Module], backend: str, spec, threads: int
    ):
        self.flat, self.train, self.backend, self.spec = flat, train, backend, spec
        self.threads = threads
        self.runners: Dict[tuple, Callable] = {}
        self.check: dict = {}
        self.skipped: Dict[str, str] = {}

    def build(self, example: torch.Tensor, reference: Optional[Reference] = None) -> dict:
        """Build (and check) the graph for ``example``'s shape; returns the check.
        ``reference``: the train form's ``Reference`` on ``example``, when already made."""
        verify = self.train is not None
        check_input(example, 'the first input of this shape', finite=verify)
        runner = BUILDERS[self.backend](self.flat, example, self.threads)
        check = dict(passed=True)
        if verify:
            reference = reference or reference_on(self.train, example)
            check = reference.judge([runner(example)])
            if not check['passed']:
                raise OutputMismatch(describe(check, f'the {self.backend} form'))
        self.runners[self._key(example)] = runner
        return check

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return tuple(x.shape), x.dtype

    def __call__(self, x: torch.Tensor):
        check_input(x, 'the input', finite=False)
        runner = self.runners.get(self._key(x))
        if runner is None:
            self.build(x)
            runner = self.runners[self._key(x)]
        return unflatten(runner(x), self.spec)

    def __repr__(self):
        return f'OptimizedModel(backend={self.backend!r}, threads={self.threads})'


class OutputMismatch(RuntimeError):
    """A backend's outputs are further from the exact ones than float32 allows."""


def reference_on(train: nn.Module, example: torch.Tensor) -> Reference:
    """The output check's reference: ``train`` (flat outputs) on ``example``."""
    return Reference(train, [example], lambda module, x: module(x))


def optimize_for_inference(
    model: nn.Module,
    example: torch.Tensor,
    backend: str = 'auto',
    threads: Optional[int] = None,
    verify: bool = True,
    precision: str = 'fp32',
    calibration=None,
) -> OptimizedModel:
    """The fastest CPU callable with the same outputs as ``model(example)``.

    Args:
        model: a MobileOne backbone, or any module whose ``forward(x)`` returns tensors
            (nested in tuples / lists / dicts): mmdet detectors and mmseg segmentors in
            their default ``mode='tensor'``, mmpretrain classifiers. A deep copy is put in
            eval mode and fused (``reparameterize_model``); ``model`` is not changed.
        example: a float32 CPU input, e.g. ``torch.randn(1, 3, 320, 320)``. The graph is
            built for its shape; other shapes get their own graph on first use.
        backend: 'auto' (the first of ``BACKENDS`` that builds and
            passes the check), or one of them by name (errors are raised).
        threads: intra-op threads of onnxruntime / OpenVINO (default:
            ``torch.get_num_threads()``).
        verify: run the output check (module docstring; building a graph then costs a
            float64 and a float32 forward pass of the train form, and a copy of the train
            form is kept for the graphs of other shapes).
        precision: 'fp32', or 'int8' with ``calibration`` (a few input batches like the
            example): a statically quantized ONNX graph run by OpenVINO (when installed)
            or onnxruntime (``INT8_BACKENDS``), checked against float32
            by cosine and task agreement instead (``runtimes/onnxruntime_int8.py``, ``Int8Model``).

    Returns an ``OptimizedModel``: ``optimized(x)`` gives what ``model(x)`` gives.
    """
    if precision != 'fp32' or calibration is not None:
        return optimize_int8(model, example, calibration, threads, verify, backend, precision)
    if backend != 'auto' and backend not in BACKENDS:
        raise ValueError(f'Unknown backend {backend!r}: use "auto" or one of {BACKENDS}.')
    check_input(example, 'the example', finite=verify)
    threads = threads or torch.get_num_threads()
    train = FlatOutputs(copy.deepcopy(model)).eval().requires_grad_(False) if verify else None
    fused = reparameterize_model(copy.deepcopy(model).eval())
    fused.requires_grad_(False)
    with torch.inference_mode():
        _, spec = flatten(fused(example))
    flat = FlatOutputs(fused).eval()
    reference = reference_on(train, example) if verify else None
    skipped = {}
    for name in BACKENDS if backend == 'auto' else (backend,):
        optimized = OptimizedModel(flat, train, name, spec, threads)
        try:
            optimized.check = optimized.build(example, reference)
        except Exception as error:  # noqa: BLE001 (any failure: try the next backend)
            if backend != 'auto':
                raise
            skipped[name] = f'{type(error).__name__}: {error}'[:300]
            continue
        optimized.skipped = skipped
        return optimized
    raise RuntimeError(f'No backend could run the model: {skipped}')


INT8_RUNNER = 'The int8 form'  # check_input's messages: 'The int8 form runs 4-d ...'


# auto: the first that builds and passes. OpenVINO first: the same QDQ graph ran in 0.76x /
# 0.65x onnxruntime's time here (S0 / S1 at 320, one thread; issue 22: 0.21x against 0.28x
# timm's fp32 on 2 AMD EPYC threads).
INT8_BACKENDS = ('openvino', 'onnxruntime')


class Int8Model:
    """A callable with the outputs of ``model(x)`` (same nesting), run by ``backend``
    (onnxruntime, or OpenVINO reading the same QDQ graph) from a statically quantized
    graph; inputs of the example's channels and size, any batch. Attributes:
    ``backend``, ``precision`` ('int8'), ``check`` (``judge_int8`` on the example and the
    calibration batches), ``graph`` (the int8 ONNX model, bytes), ``keep_float`` (the
    nodes left in float), ``skipped`` (backend -> why it was not used)."""

    precision = 'int8'

    def __init__(
        self,
        graph: bytes,
        spec,
        input_shape,
        threads: int,
        keep_float,
        backend: str = 'onnxruntime',
    ):
        self.graph, self.spec, self.input_shape = graph, spec, tuple(input_shape)
        self.keep_float, self.check, self.backend, self.skipped = list(keep_float), {}, backend, {}
        if backend == 'openvino':
            self.arrays = openvino_runner(compile_openvino(graph, threads))
        else:
            session = make_session(graph, threads)
            self.arrays = lambda x: session.run(None, {'input': x})

    def run(self, x) -> list:
        """The flat outputs (numpy arrays) of one input tensor."""
        x = check_input(x, 'the input', runner=INT8_RUNNER, batch=True)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f'The int8 graph was calibrated and checked for inputs '
                f'{self.input_shape} (C, H, W); got {tuple(x.shape[1:])}. Call '
                f'optimize_for_inference again with an example of this size.'
            )
        return self.arrays(x.detach().contiguous().numpy())

    def __call__(self, x):
        return pytree.tree_unflatten([torch.from_numpy(a) for a in self.run(x)], self.spec)

    def __repr__(self):
        return f'Int8Model(backend={self.backend!r}, float nodes={len(self.keep_float)})'


def _model_task(model) -> Optional[str]:
    """'classification' / 'segmentation' (outputs whose argmax over dim 1 decides) or
    None (backbones; detectors' raw maps: cosine only)."""
    try:
        task = task_of(model)
    except TypeError:
        return None
    return None if task == 'detection' else task


def optimize_int8(
    model,
    example,
    calibration,
    threads: Optional[int] = None,
    verify: bool = True,
    backend: str = 'auto',
    precision: str = 'int8',
    method: str = 'minmax',
    keep_float: Optional[Sequence[str]] = None,
) -> Int8Model:
    """``optimize_for_inference(..., precision='int8', calibration=batches)``: a fused
    copy of ``model`` (eval mode; ``model`` is not changed) exported to ONNX (batch
    free), statically quantized (``quantize_graph``, calibrated on ``calibration``: an
    iterable of float32 (N, C, H, W) batches the model takes, at the example's size) and
    run by onnxruntime. ``keep_float``: nodes left float (default ``output_layers``).

    With ``verify``, the int8 outputs on the example and the calibration batches are
    judged against the fused model's float32 outputs (``judge_int8``); a failed check
    raises ``QuantizeError``."""
    if precision not in ('fp32', 'int8'):
        raise ValueError(
            f'Unknown precision {precision!r}: use "fp32" (the default) or '
            f'"int8" (with calibration=batches).'
        )
    if precision == 'fp32':
        raise ValueError('calibration= is for precision="int8"; a float32 model needs none.')
    if backend != 'auto' and backend not in INT8_BACKENDS:
        raise ValueError(
            f'precision="int8" runs on {" or ".join(sorted(INT8_BACKENDS))}; got '
            f'backend={backend!r}: use "auto" or one of them.'
        )
    example = check_input(example, 'the example', runner=INT8_RUNNER, batch=True)
    batches = [
        check_input(b, f'calibration batch {i}', runner=INT8_RUNNER, batch=True)
        for i, b in enumerate(calibration or [])
    ]
    if not batches:
        raise QuantizeError(
            'precision="int8" needs calibration=batches: a few real input '
            'batches (8-32 images in all), preprocessed like the example.'
        )
    fused = reparameterize_model(copy.deepcopy(model).eval()).requires_grad_(False)
    flat = FlatOutputs(fused).eval()
    with torch.no_grad():
        _, spec = flatten(fused(example))
    graph = flat_onnx(flat, example, dynamic_batch=True)
    keep = output_layers(graph) if keep_float is None else list(keep_float)
    int8 = quantize_graph(graph, [b.numpy() for b in batches], method=method, keep_float=keep)
    threads = threads or torch.get_num_threads()
    if verify:
        inputs = [example] + batches
        with torch.no_grad():
            reference = [[t.numpy() for t in flat(x)] for x in inputs]
    skipped = {}
    for name in INT8_BACKENDS if backend == 'auto' else (backend,):
        try:
            optimized = Int8Model(int8, spec, example.shape[1:], threads, keep, name)
            if verify:
                optimized.check = judge_int8(
                    reference, [optimized.run(x) for x in inputs], _model_task(model)
                )
                if not optimized.check['passed']:
                    raise QuantizeError(
                        describe_int8(optimized.check) + '. Calibrate on '
                        'real inputs preprocessed as the example is.'
                    )
        except Exception as error:  # noqa: BLE001 (any failure: try the next backend)
            if backend != 'auto' or name == INT8_BACKENDS[-1]:
                raise
            skipped[name] = f'{type(error).__name__}: {error}'[:300]
            continue
        optimized.skipped = skipped
        return optimized
