"""What this machine can run, checked before the work: the device a tool is asked to use
(``check_device``) and the memory an input shape needs (``check_memory``)."""

import math
import os
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .errors import UserError


class MachineError(UserError, ValueError):
    """A device this machine does not have, or more memory than it has."""


def check_device(device) -> str:
    """``device`` ('cpu', 'cuda', 'cuda:1', ...) as a string, when this machine has it;
    else MachineError naming what it has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise MachineError(
            f'--device {device}: not a device name; use cpu, cuda or cuda:N (N counts from 0).'
        ) from None
    if parsed.type == 'cpu':
        return str(device)
    if parsed.type == 'cuda':
        if torch.version.cuda is None and torch.version.hip is None:
            raise MachineError(
                f'--device {device}: this torch {torch.__version__} is a '
                f'CPU-only build (no CUDA): use --device cpu.'
            )
        count = torch.cuda.device_count()
        if count == 0:
            visible = os.environ.get('CUDA_VISIBLE_DEVICES')
            hidden = '' if visible is None else f' (CUDA_VISIBLE_DEVICES={visible!r})'
            raise MachineError(
                f'--device {device}: torch sees no CUDA GPU on this '
                f'machine{hidden}: use --device cpu.'
            )
        if parsed.index is not None and parsed.index >= count:
            raise MachineError(
                f'--device {device}: this machine has {count} CUDA GPU(s), '
                f'cuda:0 .. cuda:{count - 1}.'
            )
        return str(device)
    try:  # other backends (mps, xpu, ...): does torch place a tensor there?
        torch.empty(0, device=parsed)
    except Exception as error:  # noqa: BLE001 - each backend words it differently
        raise MachineError(
            f'--device {device}: torch cannot use it here '
            f'({type(error).__name__}: {str(error).strip()}); use --device '
            f'cpu.'
        ) from None
    return str(device)


def available_memory() -> Optional[int]:
    """Bytes this process could still allocate: free RAM and swap (MemAvailable +
    SwapFree), within the cgroup's memory limit if it has one; None when unknown."""
    try:
        with open('/proc/meminfo') as f:
            info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f}
        free = info['MemAvailable'] + info.get('SwapFree', 0)
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        with open('/sys/fs/cgroup/memory.max') as f:
            limit = f.read().strip()
        with open('/sys/fs/cgroup/memory.current') as f:
            used = int(f.read())
        if limit != 'max':
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def _gib(nbytes: float) -> str:
    return f'{nbytes / 2**30:.1f} GiB'


def input_memory(model: nn.Module, shape: Sequence[int], batch: int = 1) -> int:
    """A lower bound of the bytes a forward pass of ``model`` on a (batch, 3, H, W) float32
    input needs: the input and the output of the first conv that takes 3 channels (the
    stem), which exist at the same time."""
    height, width = (int(v) for v in shape)
    nbytes = batch * 3 * height * width * 4
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            stride_h, stride_w = module.stride
            nbytes += (
                batch
                * module.out_channels
                * math.ceil(height / stride_h)
                * math.ceil(width / stride_w)
                * 4
            )
            break
    return nbytes


def check_memory(nbytes: int, what: str, fix: str):
    """MachineError when ``nbytes`` is more than this machine can allocate now, before
    anything is allocated: '``what`` needs at least N GiB ...; ``fix``'."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise MachineError(
            f'{what} needs at least {_gib(nbytes)} of memory and this machine '
            f'has {_gib(free)} free: {fix}.'
        )
