"""Any model with nested outputs (tensor / tuple / list / dict), as a flat tuple of tensors
and back: what the output check, tracing and every runtime's export take.
"""

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.utils._pytree as pytree


def flatten(output) -> Tuple[List[torch.Tensor], pytree.TreeSpec]:
    """The tensors of a nested output (tensor / tuple / list / dict) and its structure
    (torch's pytree); ``unflatten(leaves, spec)`` rebuilds it."""
    leaves, spec = pytree.tree_flatten(output)
    other = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)})
    if other:
        raise TypeError(
            f'Model outputs must be tensors, or tuples / lists / dicts of them; '
            f'got {", ".join(other)}.'
        )
    return leaves, spec


unflatten = pytree.tree_unflatten


class FlatOutputs(nn.Module):
    """``model(x)`` as a flat tuple of tensors (what tracing and ONNX export take)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(flatten(self.model(x))[0])
