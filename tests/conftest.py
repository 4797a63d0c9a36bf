import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN layer non-trivial statistics and affine values, so that fusion
    errors (wrong mean / var / eps / gamma handling) show up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def _rel_error(actual, expected) -> float:
    """max |a - e| / max |e|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture
def randomize_bn():
    return _randomize_bn


@pytest.fixture
def rel_error():
    return _rel_error


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

