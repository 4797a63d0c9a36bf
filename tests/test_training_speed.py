"""The benchmark's stacked training form (devkit.benchmark.with_stacked_branches: a
block's conv + BN branches as one convolution and one batch norm, issue 12's "training
at the same math") computes what the plain sum of the branches does: outputs, the
gradient of every parameter and each branch's own running statistics, over several
optimiser steps. The reference is the sum written out here, branch by branch, in
float64, where both must agree to rounding. So its timing in tools/benchmark.py compares
the same math (it was slower there, and the library keeps the plain sum)."""

import copy

import pytest
import torch
import torch.nn as nn

from mobileone_mm import MobileOne
from mobileone_mm.models.mobileone_block import MobileOneBlock

# Three conv branches everywhere (S0 has four, S1-S4 one), SE on the last two stages.
TINY = dict(
    num_blocks=[1, 2, 2, 1],
    width_factor=[0.25, 0.25, 0.25, 0.5],
    num_conv_branches=[3, 3, 3, 3],
    num_se_blocks=[0, 0, 1, 1],
)
FLOAT64_TOL = 1e-7  # max |stacked - plain| / max |plain| per tensor: float64 rounding, which
# the chain of train-mode BNs amplifies (seen: 4e-9 on some gradients); a mix-up: > 1e-2


def plain_sum(block, x):
    """The train-form block as the paper writes it: every branch on its own, summed."""
    out = block.branch_norm(x) if block.branch_norm is not None else 0
    for branch in list(block.branch_conv_list) + [block.branch_scale]:
        if branch is not None:
            out = out + branch.norm(branch.conv(x))
    return out


def plain_form(model):
    """A copy of ``model`` whose blocks sum their branches one by one."""
    reference = copy.deepcopy(model)
    for block in reference.modules():
        if isinstance(block, MobileOneBlock):
            block.sum_branches = plain_sum.__get__(block)
    return reference


def count_stacked_calls(monkeypatch) -> list:
    """Calls of the stacked sum, one entry each (so a test sees that it ran)."""
    from mobileone_mm.devkit.benchmark import stacked

    calls = []
    original = stacked.stacked_sum

    def spy(block, x):
        calls.append(block)
        return original(block, x)

    monkeypatch.setattr(stacked, 'stacked_sum', spy)
    return calls


def rel(actual, expected) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


def train_both(stacked, plain, steps=3, size=(2, 3, 64, 48), lr=0.1):
    """``steps`` SGD steps of each on the same batches; after each step, the largest
    relative difference of outputs, of every parameter's gradient and of every buffer."""
    dtype = next(stacked.parameters()).dtype
    optimisers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr)
        for m in (stacked, plain)
    ]
    worst = dict(outputs=0.0, grads=0.0, buffers=0.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(*size, generator=generator, dtype=dtype)
        outputs = []
        for model, optimiser in zip((stacked, plain), optimisers):
            optimiser.zero_grad()
            out = model(x)
            sum(
                (o * torch.linspace(-1, 2, o.numel(), dtype=dtype).view_as(o)).sum() for o in out
            ).backward()
            outputs.append(out)
        worst['outputs'] = max(worst['outputs'], *(rel(a, e) for a, e in zip(*outputs)))
        grads = [
            {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
            for m in (stacked, plain)
        ]
        assert grads[0].keys() == grads[1].keys()
        worst['grads'] = max([worst['grads']] + [rel(grads[0][k], grads[1][k]) for k in grads[1]])
        buffers = [dict(m.named_buffers()) for m in (stacked, plain)]
        for key, expected in buffers[1].items():
            if expected.is_floating_point():
                worst['buffers'] = max(worst['buffers'], rel(buffers[0][key], expected))
            else:  # num_batches_tracked
                assert torch.equal(buffers[0][key], expected), key
        for optimiser in optimisers:
            optimiser.step()
    return worst


def build(randomize_bn, dtype=torch.float64, **kwargs):
    model = MobileOne(TINY, out_indices=(1, 2, 3), **kwargs)
    return randomize_bn(model).to(dtype).train()


CASES = dict(
    bn=dict(),
    syncbn=dict(norm_cfg=dict(type='SyncBN')),  # one process: torch's SyncBN is plain BN
    norm_eval=dict(norm_eval=True),
    frozen_stages=dict(frozen_stages=2),
    os8_dilated=dict(strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4)),
)


@pytest.mark.parametrize('case', CASES)
def test_stacked_branches_equal_the_plain_sum_over_training_steps(case, randomize_bn, monkeypatch):
    from mobileone_mm.devkit.benchmark import with_stacked_branches

    model = build(randomize_bn, **CASES[case])
    calls = count_stacked_calls(monkeypatch)
    stacked = with_stacked_branches(model).train()  # norm_eval / frozen_stages: in train()
    worst = train_both(stacked, plain_form(model).train())
    blocks = [m for m in stacked.modules() if isinstance(m, MobileOneBlock)]
    assert len(calls) == 3 * len(blocks)  # every block (all have 2+ branches), each step
    assert max(worst.values()) <= FLOAT64_TOL, worst
    if case in ('norm_eval', 'frozen_stages'):  # the statistics that must not move did not
        frozen = [m for m in stacked.modules() if isinstance(m, nn.BatchNorm2d) and not m.training]
        assert frozen and all(m.num_batches_tracked.item() == 0 for m in frozen)
    assert model.state_dict().keys() == stacked.state_dict().keys()


def test_float32_block_gradients_within_1e5_of_the_plain_sum(randomize_bn):
    """The issue's bound for float32: an S0 depthwise and pointwise block (four conv
    branches), stacked, judged against the float64 plain sum, and no worse than the plain
    float32 form. The plain form's own distance is float32 rounding through train-mode BN,
    not a result: it is measured, not bounded (2e-5 in a CI run at another thread count)."""
    from mobileone_mm.devkit.benchmark import stacked_sum

    for block in (
        MobileOneBlock(64, 64, 3, groups=64, num_branches=4),
        MobileOneBlock(64, 128, 1, num_branches=4),
    ):
        block = randomize_bn(block).train()
        x = torch.randn(4, 64, 28, 28)
        results = {}
        for name, forward, dtype in (
            ('stacked', stacked_sum, torch.float32),
            ('plain', plain_sum, torch.float32),
            ('reference', plain_sum, torch.float64),
        ):
            model = copy.deepcopy(block).to(dtype)
            out = forward(model, x.to(dtype))
            (out * torch.linspace(-1, 2, out.numel(), dtype=dtype).view_as(out)).sum().backward()
            results[name] = (
                out.double(),
                {k: p.grad.double() for k, p in model.named_parameters()},
            )
        reference = results['reference']
        errors = {}
        for name in ('stacked', 'plain'):
            out, grads = results[name]
            assert rel(out, reference[0]) <= 1e-5
            errors[name] = max(rel(g, reference[1][k]) for k, g in grads.items())
        assert errors['stacked'] <= 1e-5, errors
        assert errors['stacked'] <= 4 * errors['plain'] + 1e-7, errors  # no worse
