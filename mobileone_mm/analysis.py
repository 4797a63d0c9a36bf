"""Model size, compute and latency, measured the same way for every model we compare."""
import copy
import statistics
import time
from typing import Dict

import torch
import torch.nn as nn

from .reparam import reparameterize_model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure_latency(fn, example: torch.Tensor, warmup: int = 5, runs: int = 20
                    ) -> Dict[str, float]:
    """Median and spread (10th / 90th percentile) of wall time in ms, after warm-up."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            fn(example)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(times, n=10)
    return dict(median_ms=statistics.median(times), p10_ms=deciles[0], p90_ms=deciles[-1],
                runs=runs, threads=torch.get_num_threads())


def compare_forms(backbone: nn.Module, size=(224, 224), runs: int = 20) -> dict:
    """Train form vs fused form of a backbone (eval mode): size, compute, latency, and
    the largest output difference relative to the output scale."""
    train_form = backbone.eval()
    fused = reparameterize_model(copy.deepcopy(backbone))
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        diff = max(((a - e).abs().max() / e.abs().max()).item()
                   for a, e in zip(fused(x), train_form(x)))
    row = dict(max_rel_diff=diff)
    for name, model in (('train', train_form), ('fused', fused)):
        row[f'{name}_params'] = count_params(model)
        row[f'{name}_gmacs'] = count_macs(model, x) / 1e9
        row[f'{name}_ms'] = measure_latency(model, x, runs=runs)['median_ms']
    return row
