"""Model size, compute and latency, measured the same way for every model we compare."""

import contextlib
import copy
import math
import random
import statistics
import time
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_mm import reparameterize_model

from ..fusion.reparameterize import count_params
from ..loading.checkpoint import load_model
from ..predict.prediction import graph_input_shape
from ..runtimes.artefact_check import torch_reference
from ..runtimes.export import check_images
from ..runtimes.onnx_graphs import load_session


def randomize_bn(
    model: nn.Module,
    seed: int = 0,
    mean_std: float = 0.5,
    var_range=(0.25, 1.75),
    gamma_range=(0.5, 1.5),
    beta_std: float = 0.2,
) -> nn.Module:
    """Give every BN layer random running statistics and affine values, in place, so that
    fusion errors (wrong mean / var / eps / gamma handling) show in the outputs: means
    ~ N(0, mean_std), variances log-uniform over var_range, gammas uniform over
    gamma_range (a negative lower end gives either sign), betas ~ N(0, beta_std)."""
    generator = torch.Generator().manual_seed(seed)
    log_lo, log_hi = math.log(var_range[0]), math.log(var_range[1])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.running_var is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * mean_std)
                m.running_var.copy_(
                    torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, generator=generator))
                )
                if m.affine:
                    lo, hi = gamma_range
                    m.weight.copy_(lo + (hi - lo) * torch.rand(n, generator=generator))
                    m.bias.copy_(torch.randn(n, generator=generator) * beta_std)
    return model


def spread_class_logits(classifier: nn.Module, images) -> nn.Module:
    """Make a random mmpretrain classifier's logits vary from image to image, in place:
    the linear head loses the direction of the mean feature over ``images`` (uint8 CHW
    tensors, as the codebase's pipeline packs them; a random head otherwise gives every
    image nearly the same logits) and is scaled to logits of spread 2 over them (softmax
    not saturated)."""
    with torch.no_grad():
        inputs = classifier.data_preprocessor(dict(inputs=list(images)))['inputs']
        features = classifier.extract_feat(inputs)[-1]
        mean, fc = features.mean(0), classifier.head.fc
        fc.weight.sub_(torch.outer(fc.weight @ mean, mean) / mean.dot(mean))
        fc.bias.zero_()
        fc.weight.div_(fc(features).std() / 2)
    return classifier


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one forward pass
    (what papers report as "FLOPs", e.g. MobileOne-S0: 0.27 G at 224x224)."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kernel = module.weight[0].numel()  # (in / groups) * kh * kw
        total += output.numel() * kernel

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return total


def latency_stats(times_ms: Sequence[float]) -> Dict[str, float]:
    """Median and spread (10th / 90th percentile) of wall times in ms."""
    if len(times_ms) < 2:
        deciles = [times_ms[0]] * 9
    else:
        deciles = statistics.quantiles(times_ms, n=10, method='inclusive')
    return dict(
        median_ms=statistics.median(times_ms),
        p10_ms=deciles[0],
        p90_ms=deciles[-1],
        runs=len(times_ms),
        threads=torch.get_num_threads(),
    )


def measure_interleaved(
    fns: Dict[str, Callable],
    example,
    warmup: int = 5,
    runs: int = 20,
    budget_s: Optional[float] = None,
    min_runs: int = 5,
    inference: bool = True,
) -> Dict[str, Dict[str, float]]:
    """Wall time of several callables on the same input, interleaved: each round runs
    every one of them, in a new (seeded) random order, so that drifts of the machine
    (another job, clock changes) hit them all alike. Each timed call follows an untimed
    call of the same callable: what the previous one left behind (PyTorch's OpenMP workers
    still spinning, which took the cores from an onnxruntime run next) is not charged to
    it; how much that mattered is in docs/speed.md.

    ``budget_s`` caps the timed rounds: after warm-up, as many rounds as fit in it (at
    least ``min_runs``, at most ``runs``). ``inference=False`` keeps autograd on (a
    training step). Returns name -> latency_stats.
    """
    names = list(fns)
    times = {name: [] for name in names}
    context = torch.inference_mode if inference else contextlib.nullcontext
    with context():
        round_s = 0.0
        for _ in range(warmup):
            start = time.perf_counter()
            for name in names:
                fns[name](example)
            round_s = 2 * (time.perf_counter() - start)  # timed rounds call each twice
        if budget_s is not None and round_s > 0:
            runs = max(min(runs, int(budget_s / round_s)), min(min_runs, runs))
        order = random.Random(0)
        for _ in range(runs):
            for name in order.sample(names, len(names)):
                fns[name](example)
                start = time.perf_counter()
                fns[name](example)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: latency_stats(times[name]) for name in names}


def measure_latency(fn, example: torch.Tensor, warmup: int = 5, runs: int = 20) -> Dict[str, float]:
    """Median and spread (10th / 90th percentile) of wall time in ms, after warm-up."""
    return measure_interleaved(dict(fn=fn), example, warmup, runs)['fn']


def compare_forms(backbone: nn.Module, size=(224, 224), runs: int = 20) -> dict:
    """Train form vs fused form of a backbone (eval mode): size, compute, latency, and
    the largest output difference relative to the output scale."""
    train_form = backbone.eval()
    fused = reparameterize_model(copy.deepcopy(backbone))
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        diff = max(
            ((a - e).abs().max() / e.abs().max()).item() for a, e in zip(fused(x), train_form(x))
        )
    row = dict(max_rel_diff=diff)
    for name, model in (('train', train_form), ('fused', fused)):
        row[f'{name}_params'] = count_params(model)
        row[f'{name}_gmacs'] = count_macs(model, x) / 1e9
        row[f'{name}_ms'] = measure_latency(model, x, runs=runs)['median_ms']
    return row


def graph_latency(config, checkpoint: str, onnx_file: str, runs: int = 10) -> Dict[str, float]:
    """Per-image latency (median ms) of a trained model, fused, in PyTorch (its own
    inference path, ``runtimes.artefact_check.torch_reference``) and of its exported ONNX
    graph in onnxruntime, on the first val image at the graph's input size (a random
    image when the val set is not on disk): the PyTorch / onnxruntime columns of
    tools/demo.py's summary."""
    model, cfg, _ = load_model(config, checkpoint)
    model = reparameterize_model(model)
    session, meta = load_session(onnx_file)
    shape = graph_input_shape(session) or tuple(meta['input_shape'])
    example = torch.from_numpy(check_images(cfg, shape, 1)[0][0])
    return dict(
        torch_ms=measure_latency(
            lambda x: torch_reference(model, meta['task'], x), example, warmup=2, runs=runs
        )['median_ms'],
        onnx_ms=measure_latency(
            lambda x: session.run(None, {'image': x.numpy()}), example, warmup=2, runs=runs
        )['median_ms'],
    )
