"""One output check for everything that claims to compute a trained model's function in
another form: the deploy (fused) form written by ``reparameterize_checkpoint`` and
``SaveDeployCheckpointHook``, an exported ONNX graph (``export_onnx.py --verify``) and
the backends of ``optimize_for_inference``.

The check judges the candidate, not float32. A fixed tolerance relative to the outputs
cannot: a model whose BN statistics amplify its activations (backbone activations ~1e7,
as a detector's can be early in training) is itself ill-conditioned, and its float32
train form lands 5e-4 (relative) away from the exact result, while another model's lands
1e-7 away. So the reference is exact and the tolerance is the model's own:

* exact: the train form run in float64 (a deep copy; fusion done in float64 agrees with
  it to ~1e-15);
* the distance of a run from it: the 90th percentile of |run - exact| over every output
  element of every input (``QUANTILE``), not the maximum. In an ill-conditioned model a
  few outputs jump under any rounding (a pre-activation near a clamp of ReLU6 flips
  sides), so the largest difference of one float32 run is a random draw. Measured on 41
  randomly initialised SSDLite-S0 / S1 detectors (backbone activations up to 1e8), the
  deploy form's largest difference was 0.1-6.6x the float32 train form's, its 90th
  percentile 0.97-1.7x;
* the candidate passes when its distance is at most ``FACTOR`` x the float32 train
  form's (and always when within ``FACTOR`` float32 steps of the largest output, for
  models float32 computes nearly exactly), and its largest difference is at most
  ``MAX_FACTOR`` x the float32 train form's largest: the percentile alone would not see
  an error confined to a few outputs (say, a wrong padding that reaches only the border
  of a feature map). MAX_FACTOR is wide (64, against the 6.6x measured above) because
  single differences are a random draw.

A wrong fusion moves (nearly) every output by far more than rounding does: a weight
scaled by 1 %, a misplaced identity tap, a dropped branch are refused by orders of
magnitude in well- and ill-conditioned models alike (tests/test_verification.py). The
largest differences are reported too.
"""

import copy
import math
from typing import Any, Callable, List, Sequence

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

FACTOR = 4.0


MAX_FACTOR = 64.0


QUANTILE = 0.9


FLOAT32_STEP = float(torch.finfo(torch.float32).eps)


SAMPLE = 1 << 22  # elements the percentile is taken over, at most (an even subsample)


# run(model, one input) -> the model's output tensors for it
Run = Callable[[nn.Module, Any], Sequence[torch.Tensor]]


Outputs = List[List[torch.Tensor]]  # per input, the output tensors


def check_input(
    x, what: str, finite: bool = False, runner: str = 'optimize_for_inference', batch: bool = False
):
    """TypeError unless ``x`` is a float32 CPU tensor (a 4-d (N, C, H, W) batch with
    ``batch``), naming ``runner`` and the fix; with ``finite``, ValueError when it holds NaN
    or inf (the output check compares outputs on it: NaN never compares)."""
    is_tensor = isinstance(x, torch.Tensor)
    if not (
        is_tensor
        and x.dtype == torch.float32
        and x.device.type == 'cpu'
        and (not batch or x.dim() == 4)
    ):
        kind = '4-d float32 CPU tensors (N, C, H, W)' if batch else 'float32 CPU tensors'
        if not is_tensor:
            found = type(x).__name__
        elif batch:
            found = f'a {x.dim()}-d {x.dtype} tensor on {x.device}'
        else:
            found = f'{x.dtype} on {x.device}'
        raise TypeError(f'{runner} runs {kind}; {what} is {found}: pass x.float().cpu().')
    if finite and not torch.isfinite(x).all():
        raise ValueError(
            f'{what.capitalize()} {tuple(int(s) for s in x.shape)} holds NaN '
            f'or inf: the graph built for a shape is checked against the eager '
            f'model on it, which needs finite values. Give a real image first '
            f'(or verify=False).'
        )
    return x


def as_float64(inputs):
    """The same (nested) inputs with every floating-point tensor in float64."""
    return pytree.tree_map(
        lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, inputs
    )


def differences(outputs: Outputs, exact: Outputs) -> dict:
    """``typical``: the QUANTILE-th percentile of |outputs - exact| over all elements
    (of an even subsample when there are more than SAMPLE); ``max``: the largest."""
    total = sum(t.numel() for out in outputs for t in out)
    step = max(1, math.ceil(total / SAMPLE))
    sampled, largest = [], 0.0
    for out, ref in zip(outputs, exact):
        for o, e in zip(out, ref):
            diff = (o.double() - e).abs().flatten()
            largest = max(largest, diff.max().item())
            sampled.append(diff[::step].float())
    sampled = torch.cat(sampled)
    k = max(1, math.ceil(QUANTILE * sampled.numel()))
    return dict(typical=sampled.kthvalue(k).values.item(), max=largest)


def _shapes(outputs) -> list:
    return [[tuple(t.shape) for t in out] for out in outputs]


class Reference:
    """The exact outputs of a model (float64) and its float32 train form's distance from
    them on ``inputs``, to judge candidates by (module docstring).

    Args:
        model: the train form, in eval mode; it is not changed.
        inputs: one entry per forward pass (a tensor, a dict, ... whatever ``run`` takes).
        run: ``run(model, entry)`` -> the output tensors (float ones only) of one pass.
    """

    def __init__(self, model: nn.Module, inputs: Sequence, run: Run):
        self.inputs, self.run = list(inputs), run
        self.float32 = self.outputs(model)
        exact_model = copy.deepcopy(model).double()
        with torch.no_grad():
            self.exact = [list(run(exact_model, as_float64(x))) for x in self.inputs]
        del exact_model
        self.float32_error = differences(self.float32, self.exact)
        self.scale = max(e.abs().max().item() for out in self.exact for e in out)

    def outputs(self, model: nn.Module) -> Outputs:
        """``run`` on every input, without autograd."""
        with torch.no_grad():
            return [list(self.run(model, x)) for x in self.inputs]

    def judge(self, outputs: Outputs) -> dict:
        """Judge a candidate's outputs (per input, as ``run`` gives them). Returns
        ``passed`` (both limits of the module docstring) and the numbers: ``error`` and
        ``float32_error`` (the candidate's and
        the float32 train form's typical distance from the exact outputs), ``ratio``
        (of the two), ``limit`` (FACTOR), ``max_error`` and ``float32_max_error`` (the
        largest differences), ``max_abs_diff`` and ``rel_diff`` (against the float32
        train form: largest, and relative to its largest output), ``output_scale``."""
        if _shapes(outputs) != _shapes(self.exact):
            return dict(
                passed=False,
                reason=f'output shapes differ: {_shapes(outputs)} instead of {_shapes(self.exact)}',
            )
        error = differences(outputs, self.exact)
        noise = max(self.float32_error['typical'], FLOAT32_STEP * self.scale)
        max_noise = max(self.float32_error['max'], FLOAT32_STEP * self.scale)
        scale32 = max(t.abs().max().item() for out in self.float32 for t in out)
        max_abs_diff = differences(outputs, self.float32)['max']
        passed = error['typical'] <= FACTOR * noise and error['max'] <= MAX_FACTOR * max_noise
        return dict(
            passed=bool(passed),
            error=error['typical'],
            float32_error=self.float32_error['typical'],
            ratio=error['typical'] / max(noise, 1e-300),
            limit=FACTOR,
            max_error=error['max'],
            float32_max_error=self.float32_error['max'],
            max_abs_diff=max_abs_diff,
            rel_diff=max_abs_diff / max(scale32, 1e-300),
            output_scale=scale32,
        )


def describe(check: dict, what: str = 'the candidate') -> str:
    """A judge() result in one line."""
    if 'reason' in check:
        return f'{what}: {check["reason"]}'
    return (
        f"{what} is {check['error']:.3g} from the exact (float64) train form's outputs "
        f'(90th percentile of |difference|), {check["ratio"]:.2g}x as far as the '
        f'float32 train form is ({check["float32_error"]:.3g}; limit {check["limit"]:g}x); '
        f'largest |difference| {check["max_error"]:.3g} (float32 train form '
        f'{check["float32_max_error"]:.3g}); against the float32 train form: max '
        f'|difference| {check["max_abs_diff"]:.3g}, relative {check["rel_diff"]:.2e}'
    )


def describe_values(check: dict) -> str:
    """Every number of a check report on one line, ``'key value, ...'``: floats to three
    significant digits, per-output lists left out. What the export tools print after
    --verify, for an fp32 check (``runtimes.artefact_check.verify_runner``) and an int8
    one (``runtimes.int8_check.judge_int8``) alike."""
    return ', '.join(
        f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}'
        for k, v in check.items()
        if not isinstance(v, list)
    )
