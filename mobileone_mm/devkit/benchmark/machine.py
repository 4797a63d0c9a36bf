"""The machine the benchmark runs on: CPU model, clock and int8 / bf16 instruction sets,
versions, load average, and the fp32 peak of the best GEMM / convolution kernels."""

import os
import platform
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn


def _best_seconds(fn: Callable, runs: int) -> float:
    for _ in range(2):
        fn()
    best = float('inf')
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _torch_kernels() -> Dict[str, tuple]:
    """name -> (fn, FLOP): MKL's sgemm (torch.mm) and oneDNN's convolutions."""
    kernels = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        kernels[f'torch.mm {n}^3 (MKL)'] = (lambda a=a, b=b: torch.mm(a, b), 2 * n**3)
    for channels, size, k in ((256, 64, 3), (512, 32, 3), (1024, 32, 1)):
        conv = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False).eval()
        x = torch.randn(1, channels, size, size)
        kernels[f'torch conv{k}x{k} {channels}ch {size}x{size} (oneDNN)'] = (
            lambda conv=conv, x=x: conv(x),
            2 * x.numel() * channels * k * k,
        )
    return kernels


def _onnxruntime_kernels(threads: int) -> Dict[str, tuple]:
    """name -> (fn, FLOP): onnxruntime's MLAS sgemm (MatMul) and convolutions (the
    kernels an exported graph runs with)."""
    from onnx import TensorProto, helper, numpy_helper

    from ...runtimes.onnx_graphs import make_session

    def session(node, x_shape, weight, y_shape):
        graph = helper.make_graph(
            [node],
            'peak',
            [helper.make_tensor_value_info('x', TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info('y', TensorProto.FLOAT, y_shape)],
            [numpy_helper.from_array(weight, 'w')],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
        return make_session(model.SerializeToString(), threads)

    rng = np.random.default_rng(0)
    kernels = {}
    for n in (1024, 2048):
        run = session(
            helper.make_node('MatMul', ['x', 'w'], ['y']),
            [n, n],
            rng.standard_normal((n, n), dtype=np.float32),
            [n, n],
        )
        x = rng.standard_normal((n, n), dtype=np.float32)
        kernels[f'onnxruntime MatMul {n}^3 (MLAS)'] = (
            lambda run=run, x=x: run.run(None, {'x': x}),
            2 * n**3,
        )
    for channels, size, k in ((256, 64, 3), (1024, 32, 1)):
        shape = [1, channels, size, size]
        run = session(
            helper.make_node('Conv', ['x', 'w'], ['y'], pads=[k // 2] * 4),
            shape,
            rng.standard_normal((channels, channels, k, k), dtype=np.float32),
            shape,
        )
        x = rng.standard_normal(shape, dtype=np.float32)
        kernels[f'onnxruntime conv{k}x{k} {channels}ch {size}x{size} (MLAS)'] = (
            lambda run=run, x=x: run.run(None, {'x': x}),
            2 * x.size * channels * k * k,
        )
    return kernels


def peak_gflops(threads: int, runs: int = 5) -> Dict[str, object]:
    """The fp32 peak the best kernels reach on this CPU with ``threads`` threads: the
    best GFLOP/s (best of ``runs``) over large GEMMs and convolutions of MKL, oneDNN and
    onnxruntime's MLAS, at a few sizes (no one library is the fastest on every CPU: on
    one AMD machine MKL's sgemm reached 82 % of oneDNN's conv). Returns dict(kernels=
    {name: GFLOP/s}, peak, best, mhz, flop_per_cycle): the last is the peak per thread
    and clock cycle at the clock /proc/cpuinfo reports, to hold against the core's
    documented FMA throughput (64 with two 512-bit FMA units, 32 with two 256-bit)."""
    kernels = dict(_torch_kernels(), **_onnxruntime_kernels(threads))
    with torch.no_grad():
        measured = {
            name: flop / _best_seconds(fn, runs) / 1e9 for name, (fn, flop) in kernels.items()
        }
    best = max(measured, key=measured.get)
    mhz = cpu_info().get('mhz')
    return dict(
        kernels=measured,
        peak=measured[best],
        best=best,
        mhz=mhz,
        flop_per_cycle=measured[best] * 1e3 / (threads * mhz) if mhz else None,
    )


ISA_FLAGS = (
    'avx2',
    'fma',
    'avx512f',
    'avx512_vnni',
    'avx_vnni',
    'avx512_bf16',
    'amx_tile',
    'amx_int8',
    'amx_bf16',
)
INT8_BF16_FLAGS = ('avx512_vnni', 'avx512_bf16', 'amx_int8', 'amx_bf16')


def cpu_info(path: str = '/proc/cpuinfo') -> dict:
    """Model name, clock (MHz, as the kernel reports it), and which of ``ISA_FLAGS`` the
    CPU has (int8: VNNI dot products, AMX tiles; bf16: AVX512_BF16, AMX)."""
    info = dict(
        cpu=platform.processor() or platform.machine(), mhz=None, isa=dict.fromkeys(ISA_FLAGS)
    )
    try:
        with open(path) as f:
            fields = dict(
                line.split(':', 1) for line in f.read().split('\n\n')[0].splitlines() if ':' in line
            )
    except OSError:
        return info
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get('flags', '').split())
    info.update(
        cpu=fields.get('model name', info['cpu']), isa={flag: flag in flags for flag in ISA_FLAGS}
    )
    if fields.get('cpu MHz'):
        info['mhz'] = float(fields['cpu MHz'])
    return info


def describe_isa(isa: dict, flags: Sequence[str] = INT8_BF16_FLAGS) -> str:
    """'avx512_vnni yes, ...' ('unknown' where /proc/cpuinfo could not be read)."""
    words = {True: 'yes', False: 'no', None: 'unknown'}
    return ', '.join(f'{flag} {words[isa.get(flag)]}' for flag in flags)


def machine_info() -> dict:
    info = dict(
        cpu_info(), cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__
    )
    try:
        import onnxruntime

        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        info['onnxruntime'] = None
    return info


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def describe_load(load: Optional[float]) -> str:
    return 'unknown' if load is None else f'{load:.2f}'
