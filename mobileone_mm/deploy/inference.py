"""The fastest CPU form of a fused model that still gives the same outputs.

``optimize_for_inference(model, example)`` fuses a deep copy of ``model`` (every
MobileOne block becomes one conv; the caller's model is not touched), then builds the
first backend of this list that works and passes the output check:

1. ``onnxruntime``: the fused model exported to ONNX (opset 17) and run by onnxruntime's
   CPU provider with all graph optimisations (its NCHWc layout pass, conv + bias + ReLU
   fusion). The winner everywhere we measured.
2. ``torchscript``: ``torch.jit.trace`` + ``torch.jit.freeze`` with oneDNN Graph fusion
   (enabled only around our own calls, the global flag is restored). Used when
   onnxruntime is missing or cannot export the model. ``torch.jit.trace`` is deprecated
   (FutureWarning) in torch 2.14; its warnings are silenced here.
3. ``eager``: the fused model in channels_last memory format.

Measured on this project's machine (AMD EPYC Zen 4, 1 thread, the other core busy), the
MobileOne-S0 / S1 backbone at 1x3x320x320: time relative to the same fused model in eager
PyTorch or to the faster of timm's and mmpretrain's fused MobileOne (those three run
within a few % of each other); ranges are over several runs:

    form                                                   S0          S1
    onnxruntime 1.32, ORT_ENABLE_ALL (kept, 1st)           0.35-0.58   0.70-0.72
    onnxruntime, ORT_ENABLE_EXTENDED (no NCHWc layout)     0.78        1.05
    trace + freeze + oneDNN Graph fusion (kept, 2nd)       0.41-0.63   0.74
    torch.jit.optimize_for_inference (MKLDNN tensors)      0.57-0.76   0.84
    torch.utils.mkldnn.to_mkldnn                           0.57
    torch.compile (inductor; 25 s to compile S0)           0.57
    channels_last eager (kept, 3rd)                        0.77-0.87
    channels_last + trace + freeze                         0.76
    trace + freeze alone                                   1.08

Whole models (tensor forward, 1 thread): SSDLite-S0 at 320x320 0.43-0.50 (onnxruntime)
and 0.54 (oneDNN Graph), DeepLabV3-S0-D8 at 512x512 0.72 and 0.77. With 2 threads on 2
cores that other jobs also use, eager PyTorch's OpenMP pool degrades far more than
onnxruntime's (S0 at 320: ~300 ms against 57 ms): ratios measured that way mean little.

Why S1 stays near 0.7: at 320x320 it needs 1.68 GMACs = 3.4 GFLOP, and one core of this
machine peaks at about 100-110 GFLOP/s in fp32 (torch.mm ~100, a large oneDNN 3x3 conv
~108; see benchmark.peak_gflops), so no fp32 form can take much less than ~31 ms;
onnxruntime takes ~32 ms, the peers ~44 ms (already ~75 % of peak). S0 (0.56 GMACs) runs
at ~45 % of peak in eager PyTorch, held back by memory traffic and per-layer overhead,
which is what the backends remove (onnxruntime: ~11 ms, ~100 GFLOP/s).

The output check compares the optimized outputs with the eager float32 outputs of the
fused model on ``example``: max |difference| <= ``rtol`` x max |output| (all outputs
together), or, when float32 itself is that far from the exact result (randomly
initialised detectors: a reordering of float32 sums moves their box outputs by ~1e-4 of
the output scale), no further from a float64 run of the model than 4x the eager float32
error. A backend that fails it is skipped (``auto``) or raises (named backend).
"""
import copy
import io
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from ..models.reparam import reparameterize_model

BACKENDS = ('onnxruntime', 'torchscript', 'eager')
FLOAT32_NOISE_FACTOR = 4.0


# ------------------------------------------------------------ nested outputs, flat
def flatten(output) -> Tuple[List[torch.Tensor], pytree.TreeSpec]:
    """The tensors of a nested output (tensor / tuple / list / dict) and its structure
    (torch's pytree); ``unflatten(leaves, spec)`` rebuilds it."""
    leaves, spec = pytree.tree_flatten(output)
    other = sorted({type(leaf).__name__ for leaf in leaves
                    if not isinstance(leaf, torch.Tensor)})
    if other:
        raise TypeError(f'Model outputs must be tensors, or tuples / lists / dicts of them; '
                        f'got {", ".join(other)}.')
    return leaves, spec


unflatten = pytree.tree_unflatten


class FlatOutputs(nn.Module):
    """``model(x)`` as a flat tuple of tensors (what tracing and ONNX export take)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(flatten(self.model(x))[0])


# ------------------------------------------------------------------------ backends
def _onnxruntime(flat: nn.Module, example: torch.Tensor, threads: int) -> Callable:
    from .export import make_session
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of shape checks: shapes are fixed
        torch.onnx.export(flat, (example, ), buffer, dynamo=False, opset_version=17,
                          input_names=['input'])
    session = make_session(buffer.getvalue(), threads)

    def run(x):
        arrays = session.run(None, {'input': x.detach().contiguous().numpy()})
        return [torch.from_numpy(a) for a in arrays]
    return run


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


BUILDERS = dict(onnxruntime=_onnxruntime, torchscript=_torchscript, eager=_eager)


# ---------------------------------------------------------------------- the check
def _max_abs(tensors) -> float:
    return max(t.abs().max().item() for t in tensors)


def _max_diff(actual, expected) -> float:
    return max((a.double() - e.double()).abs().max().item() for a, e in zip(actual, expected))


def check_outputs(actual: List[torch.Tensor], expected: List[torch.Tensor],
                  exact: Optional[List[torch.Tensor]], rtol: float) -> dict:
    """Compare a backend's outputs with the eager float32 ones (and the float64 ones,
    when given; see the module docstring). Returns the numbers and ``passed``."""
    if [tuple(a.shape) for a in actual] != [tuple(e.shape) for e in expected]:
        return dict(passed=False, reason='output shapes differ')
    scale = _max_abs(expected)
    result = dict(max_abs_diff=_max_diff(actual, expected), output_scale=scale)
    result['rel_diff'] = result['max_abs_diff'] / max(scale, 1e-30)
    result['passed'] = bool(result['rel_diff'] <= rtol)
    if not result['passed'] and exact is not None:
        result['float32_error'] = _max_diff(expected, exact)
        result['backend_error'] = _max_diff(actual, exact)
        result['passed'] = bool(result['backend_error']
                                <= FLOAT32_NOISE_FACTOR * result['float32_error'])
    return result


def _float64_outputs(flat: nn.Module, example: torch.Tensor):
    try:
        with torch.no_grad():
            return list(copy.deepcopy(flat).double()(example.double()))
    except (RuntimeError, TypeError):  # an op without a float64 kernel
        return None


# ------------------------------------------------------------------------- the API
class OptimizedModel:
    """A callable with the outputs of ``model(x)`` (same nesting), run by ``backend``.

    Each input shape gets its own traced / exported graph, built on first use and
    checked like the example's. Attributes: ``backend``, ``check`` (the example's output
    check), ``skipped`` (backend -> why it was not used).
    """

    def __init__(self, flat: nn.Module, backend: str, spec, threads: int, rtol: float,
                 verify: bool):
        self.flat, self.backend, self.spec = flat, backend, spec
        self.threads, self.rtol, self.verify = threads, rtol, verify
        self.runners: Dict[tuple, Callable] = {}
        self.check: dict = {}
        self.skipped: Dict[str, str] = {}

    def build(self, example: torch.Tensor) -> dict:
        """Build (and check) the graph for ``example``'s shape; returns the check."""
        check_input(example, 'the first input of this shape', finite=self.verify)
        runner = BUILDERS[self.backend](self.flat, example, self.threads)
        check = dict(passed=True)
        if self.verify:
            with torch.inference_mode():
                expected = list(self.flat(example))
            actual = runner(example)
            exact = None
            if not check_outputs(actual, expected, None, self.rtol)['passed']:
                exact = _float64_outputs(self.flat, example)
            check = check_outputs(actual, expected, exact, self.rtol)
            if not check['passed']:
                raise OutputMismatch(f'{self.backend}: outputs differ from the eager '
                                     f'model: {check}')
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


def check_input(x, what: str, finite: bool):
    """TypeError unless ``x`` is a float32 CPU tensor; with ``finite``, ValueError when
    it holds NaN or inf (the output check compares outputs on it: NaN never compares)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != 'cpu':
        found = (f'{x.dtype} on {x.device}' if isinstance(x, torch.Tensor)
                 else type(x).__name__)
        raise TypeError(f'optimize_for_inference runs float32 CPU tensors; {what} is '
                        f'{found}: pass x.float().cpu().')
    if finite and not torch.isfinite(x).all():
        raise ValueError(f'{what.capitalize()} {tuple(int(s) for s in x.shape)} holds NaN '
                         f'or inf: the graph built for a shape is checked against the eager '
                         f'model on it, which needs finite values. Give a real image first '
                         f'(or verify=False).')


class OutputMismatch(RuntimeError):
    """A backend's outputs differ from the eager model's beyond the check's tolerance."""


def optimize_for_inference(model: nn.Module, example: torch.Tensor, backend: str = 'auto',
                           threads: Optional[int] = None, rtol: float = 1e-5,
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
        backend: 'auto' (the first of onnxruntime, torchscript, eager that builds and
            passes the check), or one of them by name (errors are raised).
        threads: intra-op threads of onnxruntime (default: ``torch.get_num_threads()``).
        rtol: output check tolerance relative to the largest output (module docstring).
        verify: run the output check (building costs one more eager forward).
        precision: 'fp32', or 'int8' with ``calibration`` (a few input batches like the
            example): a statically quantized onnxruntime graph, checked against float32
            by cosine and task agreement instead (``deploy/quantize.py``, ``Int8Model``).

    Returns an ``OptimizedModel``: ``optimized(x)`` gives what ``model(x)`` gives.
    """
    if precision != 'fp32' or calibration is not None:
        from .quantize import optimize_int8
        return optimize_int8(model, example, calibration, threads, verify, backend, precision)
    if backend != 'auto' and backend not in BACKENDS:
        raise ValueError(f'Unknown backend {backend!r}: use "auto" or one of {BACKENDS}.')
    check_input(example, 'the example', finite=verify)
    threads = threads or torch.get_num_threads()
    fused = reparameterize_model(copy.deepcopy(model).eval())
    fused.requires_grad_(False)
    with torch.inference_mode():
        _, spec = flatten(fused(example))
    flat = FlatOutputs(fused).eval()
    skipped = {}
    for name in (BACKENDS if backend == 'auto' else (backend, )):
        optimized = OptimizedModel(flat, name, spec, threads, rtol, verify)
        try:
            optimized.check = optimized.build(example)
        except Exception as error:  # noqa: BLE001 (any failure: try the next backend)
            if backend != 'auto':
                raise
            skipped[name] = f'{type(error).__name__}: {error}'[:300]
            continue
        optimized.skipped = skipped
        return optimized
    raise RuntimeError(f'No backend could run the model: {skipped}')
