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
   (``quantize.INT8_BACKENDS``).
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
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from ..fusion.flat_outputs import FlatOutputs, flatten, unflatten
from ..fusion.output_check import Reference, check_input, describe
from ..models.reparam import reparameterize_model
from .onnxruntime import flat_onnx, make_session
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


BUILDERS = dict(onnxruntime=_onnxruntime, openvino=_openvino, torchscript=_torchscript,
                eager=_eager)


class OptimizedModel:
    """A callable with the outputs of ``model(x)`` (same nesting), run by ``backend``.

    Each input shape gets its own traced / exported graph, built on first use and
    checked like the example's against ``train`` (the train form, as flat outputs; None
    without the check). Attributes: ``backend``, ``check`` (the example's output check,
    see ``verify.Reference.judge``), ``skipped`` (backend -> why it was not used).
    """

    def __init__(self, flat: nn.Module, train: Optional[nn.Module], backend: str, spec,
                 threads: int):
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


def optimize_for_inference(model: nn.Module, example: torch.Tensor, backend: str = 'auto',
                           threads: Optional[int] = None,
                           verify: bool = True, precision: str = 'fp32',
                           calibration=None) -> OptimizedModel:
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
            or onnxruntime (``quantize.INT8_BACKENDS``), checked against float32
            by cosine and task agreement instead (``runtimes/onnxruntime_int8.py``, ``Int8Model``).

    Returns an ``OptimizedModel``: ``optimized(x)`` gives what ``model(x)`` gives.
    """
    if precision != 'fp32' or calibration is not None:
        from .onnxruntime_int8 import optimize_int8
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
    for name in (BACKENDS if backend == 'auto' else (backend, )):
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
