"""CPU benchmark: our MobileOne against timm's, mmpretrain's and mmdet's MobileNetV2,
whole SSDLite / RTMDet / DeepLabV3 models, SSDLite from a photo to boxes, a training
step, and the machine's fp32 peak.

Everything runs in one process, on the same inputs, interleaved (``measure_interleaved``:
each round calls every model of a group once), with the thread count stated. Latency is
the median of the rounds after warm-up, with the 10th / 90th percentiles; compute is
``count_macs`` (multiply-adds of convs and linears), achieved GFLOP/s = 2 x MACs / time,
shown against the measured fp32 peak (``peak_gflops``: the best of large GEMMs and
convolutions of MKL, oneDNN and onnxruntime). The CPU model and its int8 / bf16
instruction sets head the report. ``run_benchmark`` returns a JSON-able dict;
``write_report`` writes it as JSON, a markdown table and a PNG plot.
Used by tools/benchmark.py. Weights are random (nothing is downloaded): latency does not
depend on them; the output checks use realistic BN statistics.
"""
import copy
import functools
import io
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

from mobileone_mm import (MobileOne, atrous_settings, optimize_for_inference,
                          reparameterize_model)
from mobileone_mm.checkpoints.io import atomic_file
from mobileone_mm.deploy.reparameterize import count_params
from mobileone_mm.models.mobileone import MobileOneBlock
from mobileone_mm.models.reparam import pad_to

from .analysis import count_macs, measure_interleaved, randomize_bn

ARCHS = ('s0', 's1', 's2', 's3', 's4')
REPO = Path(__file__).resolve().parents[2]  # tools/devkit/ -> the checkout
WHOLE_MODEL_CONFIGS = dict(
    ssdlite='configs/detection/ssdlite_mobileone-s0_8xb24-600e_coco.py',
    rtmdet='configs/detection/rtmdet_mobileone-s0_8xb32-300e_coco.py',
    deeplabv3='configs/segmentation/deeplabv3_mobileone-s0-d8_4xb4-160k_ade20k-512x512.py')
BUSY_LOAD = 0.5  # load average above which the report says the timings are not clean

# How long each takes on one machine: the README's "Speed on a CPU".
PRESETS = dict(
    full=dict(archs=ARCHS, sizes=(224, 320, 512), dilated_size=512, runs=40, warmup=3,
              int8_archs=('s0', 's1'), int8_sizes=(320, ),
              group_budget_s=8.0, min_runs=10,
              whole_models=(('ssdlite', 320), ('rtmdet', 320), ('rtmdet', 640),
                            ('deeplabv3', 512)), whole_runs=8, photo_size=(480, 640),
              train_archs=('s0', 's1'), train_batch=4, train_size=224, train_runs=6,
              peak_runs=5),
    quick=dict(archs=('s0', 's1'), sizes=(320, ), dilated_size=None, runs=10, warmup=2,
               photo_size=(480, 640),
               int8_archs=('s0', 's1'), int8_sizes=(320, ),
               group_budget_s=3.0, min_runs=5,
               whole_models=(('ssdlite', 320), ('rtmdet', 320), ('deeplabv3', 256)),
               whole_runs=3,
               train_archs=('s0', ), train_batch=2, train_size=224, train_runs=3,
               peak_runs=3),
)

# name in the results -> column title
BACKBONE_FORMS = dict(ours_train='ours train', ours_fused='ours fused',
                      ours_optimized='ours optimized', timm_fused='timm fused',
                      mmpretrain_fused='mmpretrain fused')
TARGETS_TEXT = dict(
    fused_vs_timm='ours fused / timm fused <= 1.0 (every arch, {size})',
    fused_vs_mmpretrain='ours fused / mmpretrain fused <= 1.0 (every arch, {size})',
    mobilenetv2_vs_s0='MobileNetV2 (BN folded) / ours fused S0 >= 2.5 ({size})',
    train_vs_fused_s0='ours train / ours fused, S0 >= 4 ({size})',
    optimized_vs_peers='ours optimized / timm and mmpretrain fused <= 0.6 (S0, S1, {size})',
    train_step_vs_mmpretrain='ours / mmpretrain, one training step of S0 <= 0.75 ({train})',
    int8_vs_peers='ours int8 / faster of timm and mmpretrain fused (fp32) <= 0.30 (S0, S1, '
                  '{size})',
)
INT8_CALIBRATION = 4  # random inputs: latency does not depend on them


# ---------------------------------------------------------------------- machine
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
        kernels[f'torch.mm {n}^3 (MKL)'] = (lambda a=a, b=b: torch.mm(a, b), 2 * n ** 3)
    for channels, size, k in ((256, 64, 3), (512, 32, 3), (1024, 32, 1)):
        conv = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False).eval()
        x = torch.randn(1, channels, size, size)
        kernels[f'torch conv{k}x{k} {channels}ch {size}x{size} (oneDNN)'] = (
            lambda conv=conv, x=x: conv(x), 2 * x.numel() * channels * k * k)
    return kernels


def _onnxruntime_kernels(threads: int) -> Dict[str, tuple]:
    """name -> (fn, FLOP): onnxruntime's MLAS sgemm (MatMul) and convolutions (the
    kernels an exported graph runs with)."""
    from onnx import TensorProto, helper, numpy_helper

    from mobileone_mm.deploy.export import make_session

    def session(node, x_shape, weight, y_shape):
        graph = helper.make_graph(
            [node], 'peak', [helper.make_tensor_value_info('x', TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info('y', TensorProto.FLOAT, y_shape)],
            [numpy_helper.from_array(weight, 'w')])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
        return make_session(model.SerializeToString(), threads)

    rng = np.random.default_rng(0)
    kernels = {}
    for n in (1024, 2048):
        run = session(helper.make_node('MatMul', ['x', 'w'], ['y']), [n, n],
                      rng.standard_normal((n, n), dtype=np.float32), [n, n])
        x = rng.standard_normal((n, n), dtype=np.float32)
        kernels[f'onnxruntime MatMul {n}^3 (MLAS)'] = (
            lambda run=run, x=x: run.run(None, {'x': x}), 2 * n ** 3)
    for channels, size, k in ((256, 64, 3), (1024, 32, 1)):
        shape = [1, channels, size, size]
        run = session(helper.make_node('Conv', ['x', 'w'], ['y'], pads=[k // 2] * 4),
                      shape, rng.standard_normal((channels, channels, k, k),
                                                 dtype=np.float32), shape)
        x = rng.standard_normal(shape, dtype=np.float32)
        kernels[f'onnxruntime conv{k}x{k} {channels}ch {size}x{size} (MLAS)'] = (
            lambda run=run, x=x: run.run(None, {'x': x}), 2 * x.size * channels * k * k)
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
        measured = {name: flop / _best_seconds(fn, runs) / 1e9
                    for name, (fn, flop) in kernels.items()}
    best = max(measured, key=measured.get)
    mhz = cpu_info().get('mhz')
    return dict(kernels=measured, peak=measured[best], best=best, mhz=mhz,
                flop_per_cycle=measured[best] * 1e3 / (threads * mhz) if mhz else None)


ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_tile',
             'amx_int8', 'amx_bf16')
INT8_BF16_FLAGS = ('avx512_vnni', 'avx512_bf16', 'amx_int8', 'amx_bf16')


def cpu_info(path: str = '/proc/cpuinfo') -> dict:
    """Model name, clock (MHz, as the kernel reports it), and which of ``ISA_FLAGS`` the
    CPU has (int8: VNNI dot products, AMX tiles; bf16: AVX512_BF16, AMX)."""
    info = dict(cpu=platform.processor() or platform.machine(), mhz=None,
                isa=dict.fromkeys(ISA_FLAGS))
    try:
        with open(path) as f:
            fields = dict(line.split(':', 1) for line in f.read().split('\n\n')[0]
                          .splitlines() if ':' in line)
    except OSError:
        return info
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get('flags', '').split())
    info.update(cpu=fields.get('model name', info['cpu']),
                isa={flag: flag in flags for flag in ISA_FLAGS})
    if fields.get('cpu MHz'):
        info['mhz'] = float(fields['cpu MHz'])
    return info


def describe_isa(isa: dict, flags: Sequence[str] = INT8_BF16_FLAGS) -> str:
    """'avx512_vnni yes, ...' ('unknown' where /proc/cpuinfo could not be read)."""
    words = {True: 'yes', False: 'no', None: 'unknown'}
    return ', '.join(f'{flag} {words[isa.get(flag)]}' for flag in flags)


def machine_info() -> dict:
    info = dict(cpu_info(), cores=os.cpu_count(), python=platform.python_version(),
                torch=torch.__version__)
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


# ------------------------------------------------------------------------ models
def realistic_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine values of a trained model's order of magnitude, so that
    activations neither vanish nor blow up through 20+ random blocks."""
    return randomize_bn(model, seed, mean_std=0.1, var_range=(1.0, 3.0),
                        gamma_range=(0.25, 0.75), beta_std=0.1)


def build_backbones(arch: str, example: torch.Tensor, with_mobilenetv2: bool = False,
                    int8: bool = False) -> Dict[str, dict]:
    """name -> dict(fn, module) for one arch: our train / fused / optimized forms and
    mmpretrain's fused MobileOne on the same weights, timm's fused MobileOne,
    (``with_mobilenetv2``) mmdet's MobileNetV2 as mmdet builds it and with BN folded, and
    (``int8``) ours in int8 (``build_int8``)."""
    import timm
    import timm.utils
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne
    peer = realistic_bn(MMPretrainMobileOne(arch, out_indices=(3, )))
    peer.eval()  # mmpretrain's train() returns None
    ours = MobileOne(arch, out_indices=(3, )).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    peer.switch_to_deploy()
    fused = reparameterize_model(copy.deepcopy(ours))
    optimized = optimize_for_inference(fused, example)
    timm_model = timm.create_model(f'mobileone_{arch}', pretrained=False, num_classes=0,
                                   global_pool='')
    timm_model = timm.utils.reparameterize_model(realistic_bn(timm_model).eval())
    models = dict(
        ours_train=dict(fn=ours, module=ours),
        ours_fused=dict(fn=fused, module=fused),
        ours_optimized=dict(fn=optimized, module=fused, backend=optimized.backend,
                            rel_diff=optimized.check.get('rel_diff')),
        timm_fused=dict(fn=timm_model.forward_features, module=timm_model),
        mmpretrain_fused=dict(fn=peer, module=peer))
    if int8:
        models['ours_int8'] = build_int8(fused, example)
    if with_mobilenetv2:
        from mmcv.cnn import fuse_conv_bn
        from mmdet.models.backbones import MobileNetV2
        mobilenet = realistic_bn(MobileNetV2(out_indices=(7, )))
        mobilenet.eval()
        folded = fuse_conv_bn(copy.deepcopy(mobilenet))
        models.update(mobilenetv2=dict(fn=mobilenet, module=mobilenet),
                      mobilenetv2_folded=dict(fn=folded, module=folded))
    return models


def build_dilated(arch: str, example: torch.Tensor) -> Dict[str, dict]:
    """Our fused backbone at output strides 32 / 16 / 8, and the optimized OS16 / OS8."""
    models = {}
    for os_ in (32, 16, 8):
        backbone = realistic_bn(MobileOne(arch, out_indices=(3, ),
                                          **atrous_settings(os_))).eval()
        fused = reparameterize_model(backbone)
        models[f'ours_fused_os{os_}'] = dict(fn=fused, module=fused)
        if os_ != 32:
            optimized = optimize_for_inference(fused, example)
            models[f'ours_optimized_os{os_}'] = dict(
                fn=optimized, module=fused, backend=optimized.backend,
                rel_diff=optimized.check.get('rel_diff'))
    return models


def build_int8(fused: nn.Module, example: torch.Tensor) -> dict:
    """``optimize_for_inference(precision='int8')`` of a fused model (onnxruntime, static
    QDQ), calibrated on random inputs of the example's shape (latency does not depend on
    them; int8 accuracy on real data: README "int8"), with the cosine similarity of its
    outputs to float32 on the example."""
    from mobileone_mm.deploy.quantize import judge_int8
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(example.shape, generator=generator)
                   for _ in range(INT8_CALIBRATION)]
    int8 = optimize_for_inference(fused, example, precision='int8', calibration=calibration,
                                  verify=False)
    with torch.no_grad():
        expected = [t.numpy() for t in pytree.tree_flatten(fused(example))[0]]
    check = judge_int8([expected], [int8.run(example)])
    return dict(fn=int8, module=fused, backend='onnxruntime int8', cosine=check['cosine'])


def random_fused_model(name: str) -> tuple:
    """(config, model): the WHOLE_MODEL_CONFIGS model with a fused MobileOne-S0, random
    weights (the config's init_cfg removed) and realistic BN statistics, in eval mode."""
    from mmengine.logging import MMLogger
    from mobileone_mm.deploy.reparameterize import build_model, load_config
    cfg = load_config(str(REPO / WHOLE_MODEL_CONFIGS[name]))
    cfg.model.backbone.init_cfg = None  # nothing can be downloaded
    model, _ = build_model(cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return cfg, reparameterize_model(realistic_bn(model).eval())


def build_whole_model(name: str, size: int, threads: int, workdir: str) -> Dict[str, dict]:
    """``random_fused_model(name)``: its tensor forward in PyTorch, optimize_for_inference
    of it in fp32 and in int8, and onnxruntime on the graph ``export_onnx`` writes
    (normalisation and, for the detectors, box decoding included)."""
    from mobileone_mm.deploy.export import export_onnx, load_session
    _, model = random_fused_model(name)
    example = torch.randn(1, 3, size, size)
    optimized = optimize_for_inference(model, example)
    path = os.path.join(workdir, f'{name}_{size}.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of shape checks
        export_onnx(model, path, (size, size))
    session, _ = load_session(path, threads)
    return dict(
        pytorch_fused=dict(fn=model, module=model),
        optimized=dict(fn=optimized, module=model, backend=optimized.backend,
                       rel_diff=optimized.check.get('rel_diff')),
        onnxruntime_export=dict(fn=lambda x: session.run(None, {'image': x.numpy()}),
                                module=model),
        int8=build_int8(model, example))


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth H x W x 3 uint8 BGR picture (blurred noise): what the timing sees is a
    photo's size, not its content."""
    import cv2
    noise = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3))
    return cv2.resize(noise.astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)


def build_photo_to_boxes(threads: int, workdir: str) -> tuple:
    """SSDLite-S0 (``random_fused_model``) from a photo as mmcv reads it to boxes in the
    photo's pixels, per image, pre- and post-processing included: mmdet's
    ``inference_detector`` on the fused model (eager PyTorch, mmdet's pipeline and
    post-process), and onnx_infer's path (``deploy.predict``: the test pipeline in numpy,
    onnxruntime, the numpy post-process) on the ``export_onnx`` graph in fp32 and
    quantized to int8 (``quantize_graph``, random calibration: timing only). Returns
    (the fused model, its input (H, W), path name -> photo -> detections)."""
    from mmdet.apis import inference_detector
    from mobileone_mm.deploy.export import export_onnx
    from mobileone_mm.deploy.metadata import export_metadata, fixed_input_shape
    from mobileone_mm.deploy.predict import load_onnx, predict
    from mobileone_mm.deploy.quantize import quantize_graph
    cfg, model = random_fused_model('ssdlite')
    model.cfg = cfg  # inference_detector builds the test pipeline from it
    metadata = export_metadata(cfg, {}, model)
    shape = fixed_input_shape(metadata['preprocess'])
    fp32_path, int8_path = (os.path.join(workdir, f'ssdlite_{p}.onnx') for p in ('fp32', 'int8'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of shape checks
        export_onnx(model, fp32_path, shape, metadata=metadata)
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(0, 255, (1, 3, *shape)).astype(np.float32)
                   for _ in range(INT8_CALIBRATION)]
    with open(fp32_path, 'rb') as f:
        int8_graph = quantize_graph(f.read(), calibration)
    with open(int8_path, 'wb') as f:  # a temporary folder: nobody else reads it
        f.write(int8_graph)
    fp32, int8 = (load_onnx(path, threads) for path in (fp32_path, int8_path))
    return model, shape, dict(mmdet_eager=lambda photo: inference_detector(model, photo),
                              onnxruntime_fp32=lambda photo: predict(*fp32, photo),
                              onnxruntime_int8=lambda photo: predict(*int8, photo))


def train_step(model: nn.Module) -> Callable:
    """One forward + backward of a train-mode model (gradients reset first)."""
    def step(x):
        model.zero_grad(set_to_none=True)
        outputs = model(x)
        sum(o.mean() for o in outputs).backward()
    return step


# Issue 12's "training at the same math, faster": a block's conv + BN branches (the 1 x 1
# kernel zero-padded to k x k) as one convolution with len(branches) x out_channels outputs
# and one F.batch_norm over them, each branch's running statistics updated as its own BN
# would. Measured slower than branch by branch on this CPU (README "Speed on a CPU"), so
# the library keeps the plain sum; the benchmark times it for other CPUs to tell.
def _stack_by_group(tensors, groups: int) -> torch.Tensor:
    """Per-output-channel tensors of several branches as one, in (group, branch, channel
    in the group) order: how a grouped convolution lays out its outputs."""
    return torch.stack([t.unflatten(0, (groups, -1)) for t in tensors], 1).flatten(0, 2)


def stacked_sum(block, x):
    """``MobileOneBlock.sum_branches`` of a train-form block with BN layers, computed with
    one convolution and one batch norm for all its conv + BN branches. Not for with_cp:
    recomputation in backward stops once the tensors backward needs exist, before the
    statistics are copied back."""
    out = block.branch_norm(x) if block.branch_norm is not None else 0
    branches = list(block.branch_conv_list)
    if block.branch_scale is not None:
        branches.append(block.branch_scale)
    norms, groups = [b.norm for b in branches], block.groups
    weight = _stack_by_group([pad_to(b.conv.weight, block.kernel_size) for b in branches],
                             groups)
    y = F.conv2d(x, weight, None, block.stride, block.padding, block.dilation, groups)
    mean, var = (_stack_by_group([getattr(n, k) for n in norms], groups)
                 for k in ('running_mean', 'running_var'))
    training = norms[0].training
    y = F.batch_norm(y, mean, var, _stack_by_group([n.weight for n in norms], groups),
                     _stack_by_group([n.bias for n in norms], groups), training,
                     norms[0].momentum, norms[0].eps)
    if training:  # F.batch_norm updated the stacked copies: back to each branch's BN
        with torch.no_grad():
            means, variances = (t.unflatten(0, (groups, len(norms), -1)).unbind(1)
                                for t in (mean, var))
            for norm, norm_mean, norm_var in zip(norms, means, variances):
                norm.running_mean.view(groups, -1).copy_(norm_mean)
                norm.running_var.view(groups, -1).copy_(norm_var)
                norm.num_batches_tracked.add_(1)
    return out + y.unflatten(1, (groups, len(branches), -1)).sum(2).flatten(1, 2)


def with_stacked_branches(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose train-form MobileOne blocks with two or more conv + BN
    branches sum them with ``stacked_sum``; same parameters and state dict."""
    model = copy.deepcopy(model)
    for block in model.modules():
        if isinstance(block, MobileOneBlock) and not block.deploy and \
                len(block.branch_conv_list) + (block.branch_scale is not None) > 1:
            block.sum_branches = functools.partial(stacked_sum, block)
    return model


# --------------------------------------------------------------------- measuring
def _measure(section: str, models: Dict[str, dict], example: torch.Tensor, peak: float,
             timing: dict, log: Callable[[str], None], what: str, **common) -> List[dict]:
    """Time ``models`` interleaved on ``example`` (``timing``: measure_interleaved's
    settings), log their medians and return their rows: ``common`` keys, params, GMACs,
    latency, achieved GFLOP/s and % of ``peak``, and backend / rel_diff / cosine where
    given."""
    stats = measure_interleaved({k: m['fn'] for k, m in models.items()}, example, **timing)
    rows = []
    macs_cache = {}
    for name, model in models.items():
        module = model['module']
        if id(module) not in macs_cache:
            macs_cache[id(module)] = count_macs(module, example)
        macs = macs_cache[id(module)]
        row = dict(section=section, form=name, **common, params=count_params(module),
                   gmacs=macs / 1e9, **stats[name])
        row['gflops'] = 2 * macs / (row['median_ms'] / 1e3) / 1e9
        row['peak_pct'] = 100 * row['gflops'] / peak
        for key in ('backend', 'rel_diff', 'cosine'):
            if key in model:
                row[key] = model[key]
        rows.append(row)
    log(f'{what}: ' + ', '.join(f'{k} {v["median_ms"]:.1f} ms' for k, v in stats.items()))
    return rows


def run_benchmark(preset: str = 'full', threads: Optional[int] = None,
                  log: Callable[[str], None] = print, **overrides) -> dict:
    """Measure everything ``preset`` ('full' or 'quick', see PRESETS) lists; keyword
    arguments override its settings. Returns dict(machine, settings, rows, targets)."""
    settings = dict(PRESETS[preset], **overrides)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    started = time.time()
    try:
        result = dict(machine=machine_info(), settings=dict(settings, preset=preset),
                      threads=threads, load_average_start=load_average())
        machine = result['machine']
        log(f'{machine["cpu"]}, {machine["cores"]} cores; int8 / bf16 instructions: '
            f'{describe_isa(machine["isa"])}')
        result['peak'] = peak_gflops(threads, settings['peak_runs'])
        peak = result['peak_gflops'] = result['peak']['peak']
        log(f'fp32 peak: {peak:.0f} GFLOP/s with {threads} thread(s) '
            f'({result["peak"]["best"]}); load average '
            f'{_load(result["load_average_start"])}')
        result['rows'] = (_measure_backbones(settings, peak, log)
                          + _measure_whole_models(settings, threads, peak, log)
                          + _measure_photo_to_boxes(settings, threads, log)
                          + _measure_train_steps(settings, peak, log))
        result['load_average_end'] = load_average()
        result['duration_s'] = time.time() - started
        result['targets'] = evaluate_targets(result)
        return result
    finally:
        torch.set_num_threads(previous_threads)


def _measure_backbones(settings: dict, peak: float, log) -> List[dict]:
    """Each arch at each size (the first arch with mmdet's MobileNetV2 beside it, those of
    ``int8_archs`` at ``int8_sizes`` with their int8 form), then dilated at
    ``dilated_size`` if set."""
    timing = dict(warmup=settings['warmup'], runs=settings['runs'],
                  budget_s=settings['group_budget_s'], min_runs=settings['min_runs'])
    rows = []
    archs = list(settings['archs'])
    for arch in archs:
        for size in settings['sizes']:
            example = torch.randn(1, 3, size, size)
            models = build_backbones(arch, example, with_mobilenetv2=arch == archs[0],
                                     int8=arch in settings['int8_archs']
                                     and size in settings['int8_sizes'])
            rows += _measure('backbone', models, example, peak, timing, log, f'{arch} {size}',
                             arch=arch, size=size)
        if settings.get('dilated_size'):
            size = settings['dilated_size']
            example = torch.randn(1, 3, size, size)
            heavy = dict(timing, warmup=1, min_runs=min(5, timing['min_runs']))  # OS8
            rows += _measure('dilated', build_dilated(arch, example), example, peak, heavy,
                             log, f'{arch} {size} dilated', arch=arch, size=size)
    return rows


def _measure_whole_models(settings: dict, threads: int, peak: float, log) -> List[dict]:
    """SSDLite / RTMDet / DeepLabV3 with MobileOne-S0 (``whole_models``: (name, input
    size) pairs, a name may come at several sizes)."""
    timing = dict(warmup=1, runs=settings['whole_runs'], min_runs=settings['whole_runs'])
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, size in settings['whole_models']:
            models = build_whole_model(name, size, threads, workdir)
            rows += _measure('whole_model', models, torch.randn(1, 3, size, size), peak,
                             timing, log, f'{name} {size}', arch='s0', size=size, model=name)
    return rows


def _measure_photo_to_boxes(settings: dict, threads: int, log) -> List[dict]:
    """``build_photo_to_boxes`` on a ``photo_size`` (H, W) photo, interleaved."""
    if not settings.get('photo_size'):
        return []
    height, width = settings['photo_size']
    timing = dict(warmup=2, runs=settings['whole_runs'], min_runs=settings['whole_runs'])
    with tempfile.TemporaryDirectory() as workdir:
        model, shape, paths = build_photo_to_boxes(threads, workdir)
        stats = measure_interleaved(paths, synthetic_photo(height, width), **timing)
    common = dict(section='photo_to_boxes', arch='s0', model='ssdlite', size=shape[0],
                  photo=f'{width}x{height}', params=count_params(model),
                  gmacs=count_macs(model, torch.randn(1, 3, *shape)) / 1e9)
    log(f'ssdlite photo {width}x{height} -> boxes: '
        + ', '.join(f'{k} {v["median_ms"]:.1f} ms' for k, v in stats.items()))
    return [dict(common, form=name, **stats[name]) for name in paths]


def _measure_train_steps(settings: dict, peak: float, log) -> List[dict]:
    """One training step of ours (branch by branch, as shipped), of ours with the
    branches stacked (``with_stacked_branches``) and of mmpretrain's MobileOne, same
    weights, each of ``train_archs``."""
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne
    size, batch = settings['train_size'], settings['train_batch']
    timing = dict(warmup=1, runs=settings['train_runs'], min_runs=settings['train_runs'],
                  inference=False)
    rows = []
    for arch in settings['train_archs']:
        example = torch.randn(batch, 3, size, size)
        peer = MMPretrainMobileOne(arch, out_indices=(3, ))
        peer.train()
        ours = MobileOne(arch, out_indices=(3, )).train()
        ours.load_state_dict(peer.state_dict(), strict=True)
        stacked = with_stacked_branches(ours)
        models = dict(ours_train_step=dict(fn=train_step(ours), module=ours),
                      # F.conv2d: no Conv2d hooks count its MACs, the plain form's do
                      ours_stacked_train_step=dict(fn=train_step(stacked), module=ours),
                      mmpretrain_train_step=dict(fn=train_step(peer), module=peer))
        for row in _measure('train_step', models, example, peak, timing, log,
                            f'{arch} {size} train step x{batch}', arch=arch, size=size,
                            batch=batch):
            row['gflops'] *= 3  # forward + backward ~ 3 x the forward's work
            row['peak_pct'] *= 3
            rows.append(row)
    return rows


# ----------------------------------------------------------------------- targets
def _lookup(rows, section, **keys) -> Dict[str, dict]:
    return {r['form']: r for r in rows if r['section'] == section
            and all(r.get(k) == v for k, v in keys.items())}


def _best_peer(group: Dict[str, dict]) -> tuple:
    """(form, ms) of the faster of timm's and mmpretrain's fused MobileOne."""
    return min(((form, group[form]['median_ms']) for form in ('timm_fused',
                                                              'mmpretrain_fused')),
               key=lambda item: item[1])


def target_size(result: dict) -> int:
    sizes = list(result['settings']['sizes'])
    return 320 if 320 in sizes else sizes[len(sizes) // 2]


def evaluate_targets(result: dict) -> List[dict]:
    """The project's speed targets at 320x320 (or the middle size measured), each
    with the measured value(s) and pass / fail; a target whose models were not measured
    is left out."""
    rows, size = result['rows'], target_size(result)
    groups = {arch: _lookup(rows, 'backbone', arch=arch, size=size)
              for arch in result['settings']['archs']}
    ratio = lambda g, a, b: g[a]['median_ms'] / g[b]['median_ms']  # noqa: E731
    targets = []

    settings = result['settings']
    train = (f'batch {settings["train_batch"]}, '
             f'{settings["train_size"]}x{settings["train_size"]}')

    def add(key, values, passed):
        text = TARGETS_TEXT[key].format(size=f'{size}x{size}', train=train)
        targets.append(dict(key=key, target=text, values=values, passed=bool(passed)))

    for key, peer in (('fused_vs_timm', 'timm_fused'),
                      ('fused_vs_mmpretrain', 'mmpretrain_fused')):
        values = {a: ratio(g, 'ours_fused', peer) for a, g in groups.items()}
        add(key, values, all(v <= 1.0 for v in values.values()))
    if 's0' in groups and 'mobilenetv2_folded' in groups['s0']:
        g = groups['s0']
        value = ratio(g, 'mobilenetv2_folded', 'ours_fused')
        add('mobilenetv2_vs_s0', dict(s0=value, unfolded=ratio(g, 'mobilenetv2', 'ours_fused')),
            value >= 2.5)
    if 's0' in groups:
        value = ratio(groups['s0'], 'ours_train', 'ours_fused')
        add('train_vs_fused_s0', dict(s0=value), value >= 4)
    values = {}
    for arch in ('s0', 's1'):
        if arch in groups:
            for peer in ('timm_fused', 'mmpretrain_fused'):
                values[f'{arch} / {peer}'] = ratio(groups[arch], 'ours_optimized', peer)
    if values:
        add('optimized_vs_peers', values, all(v <= 0.6 for v in values.values()))
    values = {f'{a} / {_best_peer(g)[0]}': g['ours_int8']['median_ms'] / _best_peer(g)[1]
              for a, g in groups.items() if a in ('s0', 's1') and 'ours_int8' in g}
    if values:
        add('int8_vs_peers', values, all(v <= 0.30 for v in values.values()))
    train_s0 = _lookup(rows, 'train_step', arch='s0')
    if train_s0:
        value = ratio(train_s0, 'ours_train_step', 'mmpretrain_train_step')
        add('train_step_vs_mmpretrain', dict(s0=value), value <= 0.75)
    return targets


# ----------------------------------------------------------------------- reports
def _load(load: Optional[float]) -> str:
    return 'unknown' if load is None else f'{load:.2f}'


def _ms(row: Optional[dict]) -> str:
    return '–' if row is None else f'{row["median_ms"]:.1f}'


def _ms_spread(row: dict) -> str:
    return f'{row["median_ms"]:.1f} ({row["p10_ms"]:.0f}-{row["p90_ms"]:.0f})'


def _row(cells: Sequence) -> str:
    return '| ' + ' | '.join(map(str, cells)) + ' |'


def _table(title: str, header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table under a ``### title`` heading."""
    return '\n'.join([f'### {title}', '', _row(header), '|---' * len(header) + '|']
                     + [_row(cells) for cells in rows])


def _peak_text(peak: dict) -> str:
    others = sorted(peak['kernels'].items(), key=lambda kv: -kv[1])[1:4]
    text = (f'{peak["best"]}; next: ' + ', '.join(f'{k} {v:.0f}' for k, v in others))
    if peak['flop_per_cycle']:
        text += (f'; {peak["flop_per_cycle"]:.0f} FLOP per thread and cycle at the '
                 f'{peak["mhz"]:.0f} MHz /proc/cpuinfo reports')
    return text


def _summary(result: dict) -> str:
    """How it was measured: machine, threads, load, fp32 peak, runs per median."""
    m, peak = result['machine'], result['peak_gflops']
    runs = sorted({r['runs'] for r in result['rows'] if r['section'] in ('backbone', 'dilated')})
    text = (
        f'Measured on {m["cpu"]} ({m["cores"]} cores), **{result["threads"]} thread(s)**, '
        f'torch {m["torch"]}, onnxruntime {m["onnxruntime"]}; load average '
        f'{_load(result["load_average_start"])} at the start, '
        f'{_load(result["load_average_end"])} at the end; '
        f'{result["duration_s"] / 60:.1f} minutes. int8 / bf16 instructions: '
        f'{describe_isa(m["isa"])}. fp32 peak, same threads: **{peak:.0f} GFLOP/s** '
        f'({_peak_text(result["peak"])}). Batch 1, '
        f'milliseconds: median of {"-".join(map(str, dict.fromkeys((runs[0], runs[-1]))))} '
        f'interleaved runs after warm-up (10th / 90th percentiles in the JSON). Random '
        f'weights, same weights for ours and mmpretrain\'s.')
    # At the end the load average counts the benchmark's own threads: only the start tells.
    busiest = result['load_average_start'] or 0
    if busiest > BUSY_LOAD:
        text += (f'\n\n**Other jobs shared the CPU (load average {busiest:.1f}): these '
                 f'timings are not representative; rerun on an idle machine.**')
    return text


def _backbones_table(result: dict) -> str:
    rows, peak = result['rows'], result['peak_gflops']
    keys = sorted({(r['arch'], r['size']) for r in rows if r['section'] == 'backbone'},
                  key=lambda k: (k[1], k[0]))
    cells = []
    for arch, size in keys:
        g = _lookup(rows, 'backbone', arch=arch, size=size)
        fused, opt = g['ours_fused'], g['ours_optimized']
        timm, mmpretrain = g['timm_fused']['median_ms'], g['mmpretrain_fused']['median_ms']
        best = min(timm, mmpretrain)
        bound = 2 * fused['gmacs'] / peak * 1e3  # ms at the fp32 peak
        cells.append([arch.upper(), size, f'{fused["params"] / 1e6:.2f}',
                      f'{fused["gmacs"]:.2f}', *(_ms(g.get(k)) for k in BACKBONE_FORMS),
                      f'{fused["median_ms"] / timm:.2f}',
                      f'{fused["median_ms"] / mmpretrain:.2f}',
                      f'{opt["median_ms"] / best:.2f}', f'{bound / best:.2f}',
                      f'{opt["gflops"]:.0f} ({opt["peak_pct"]:.0f} %)'])
    return _table('Backbones (stage-4 output)',
                  ['arch', 'input', 'params (M)', 'GMACs', *BACKBONE_FORMS.values(),
                   'fused / timm', 'fused / mmpretrain', 'optimized / best peer',
                   'fp32 bound / best peer', 'optimized GFLOP/s (% peak)'], cells)


def _int8_table(result: dict) -> Optional[str]:
    rows, peak = result['rows'], result['peak_gflops']
    int8 = [r for r in rows if r['section'] == 'backbone' and r['form'] == 'ours_int8']
    if not int8:
        return None
    cells = []
    for r in int8:
        g = _lookup(rows, 'backbone', arch=r['arch'], size=r['size'])
        peer, best = _best_peer(g)
        optimized = g['ours_optimized']['median_ms']
        bound = 2 * r['gmacs'] / peak * 1e3  # ms at the fp32 peak
        cells.append([r['arch'].upper(), r['size'], f'{best:.1f} ({peer.split("_")[0]})',
                      f'{optimized:.1f}', _ms(r), f'{r["median_ms"] / best:.2f}',
                      f'{r["median_ms"] / optimized:.2f}', f'{r["median_ms"] / bound:.2f}',
                      f'{r["cosine"]:.4f}'])
    return _table('int8 backbones (optimize_for_inference precision=\'int8\', onnxruntime '
                  'static QDQ; random weights and calibration: timing only)',
                  ['arch', 'input', 'best peer fused fp32', 'ours optimized fp32', 'ours int8',
                   'int8 / best peer', 'int8 / optimized fp32', 'int8 / fp32 bound',
                   'cosine to fp32'], cells)


def _mobilenet_table(result: dict) -> Optional[str]:
    rows = result['rows']
    mobilenet = [r for r in rows if r['form'].startswith('mobilenetv2')]
    if not mobilenet:
        return None
    arch = mobilenet[0]['arch']
    ours = [r for r in rows if r['section'] == 'backbone' and r['arch'] == arch
            and r['form'] in ('ours_fused', 'ours_optimized')]
    labels = dict(mobilenetv2='MobileNetV2 (as mmdet builds it)',
                  mobilenetv2_folded='MobileNetV2, BN folded',
                  ours_fused=f'MobileOne-{arch.upper()} fused',
                  ours_optimized=f'MobileOne-{arch.upper()} optimized')
    cells = []
    for r in mobilenet + ours:
        fused = _lookup(rows, 'backbone', arch=arch, size=r['size'])['ours_fused']
        cells.append([labels[r['form']], r['size'], f'{r["params"] / 1e6:.2f}',
                      f'{r["gmacs"]:.2f}', f'{r["median_ms"]:.1f}',
                      f'{r["gflops"]:.0f} ({r["peak_pct"]:.0f} %)',
                      f'{r["median_ms"] / fused["median_ms"]:.2f}'])
    return _table(f'mmdet MobileNetV2 (out_indices=(7,)) against MobileOne-{arch.upper()}',
                  ['model', 'input', 'params (M)', 'GMACs', 'ms', 'GFLOP/s (% peak)',
                   '/ ours fused'], cells)


def _dilated_table(result: dict) -> Optional[str]:
    rows = result['rows']
    dilated = [r for r in rows if r['section'] == 'dilated']
    if not dilated:
        return None
    forms = ['ours_fused_os32', 'ours_fused_os16', 'ours_fused_os8',
             'ours_optimized_os16', 'ours_optimized_os8']
    cells = []
    for arch in dict.fromkeys(r['arch'] for r in dilated):
        g = _lookup(rows, 'dilated', arch=arch)
        cells.append([arch.upper(), ' / '.join(f'{g[f"ours_fused_os{s}"]["gmacs"]:.1f}'
                                               for s in (32, 16, 8)),
                      *(_ms(g.get(f)) for f in forms)])
    size = dilated[0]['size']
    return _table(f'Dilated backbones (DeepLabV3 output strides), {size}x{size}',
                  ['arch', 'GMACs OS32 / OS16 / OS8',
                   *(f.replace('ours_', '').replace('_os', ' OS') for f in forms)], cells)


def _whole_models_table(result: dict) -> Optional[str]:
    rows = result['rows']
    models = dict.fromkeys((r['model'], r['size']) for r in rows
                           if r['section'] == 'whole_model')
    if not models:
        return None
    cells = []
    for name, size in models:
        g = _lookup(rows, 'whole_model', model=name, size=size)
        pt, opt, ort, int8 = (g[form] for form in ('pytorch_fused', 'optimized',
                                                  'onnxruntime_export', 'int8'))
        cells.append([dict(ssdlite='SSDLite', rtmdet='RTMDet', deeplabv3='DeepLabV3 (OS8)')[name],
                      size,
                      f'{pt["gmacs"]:.1f}', _ms(pt), f'{_ms(opt)} ({opt["backend"]})',
                      _ms(ort), _ms(int8), f'{opt["median_ms"] / pt["median_ms"]:.2f}',
                      f'{int8["median_ms"] / ort["median_ms"]:.2f}',
                      f'{int8["median_ms"] / pt["median_ms"]:.2f}', f'{int8["cosine"]:.4f}'])
    return _table('Whole models, MobileOne-S0, fused (int8: random weights and calibration, '
                  'timing only)',
                  ['model', 'input', 'GMACs', 'PyTorch (tensor forward)',
                   'optimize_for_inference', 'onnxruntime (export_onnx graph)',
                   'int8 (optimize_for_inference)', 'optimized / PyTorch',
                   'int8 / onnxruntime fp32', 'int8 / PyTorch', 'int8 cosine to fp32'], cells)


def _photo_to_boxes_table(result: dict) -> Optional[str]:
    g = _lookup(result['rows'], 'photo_to_boxes')
    if not g:
        return None
    eager = g['mmdet_eager']
    names = dict(mmdet_eager="mmdet's inference_detector, fused model (eager PyTorch)",
                 onnxruntime_fp32='onnx_infer path, export_onnx graph, fp32',
                 onnxruntime_int8='onnx_infer path, int8 graph (tools/quantize.py)')
    cells = [[names[form], _ms_spread(row), f'{row["median_ms"] / eager["median_ms"]:.2f}']
             for form, row in g.items()]
    return _table(f'Photo to boxes, SSDLite-S0 ({eager["photo"]} photo, network input '
                  f'{eager["size"]}x{eager["size"]}; per image: pre-processing, network, '
                  f'post-processing, boxes in the photo\'s pixels), ms',
                  ['path', 'ms (10th-90th percentile)', '/ eager'], cells)


def _train_step_table(result: dict) -> Optional[str]:
    rows = result['rows']
    train = [r for r in rows if r['section'] == 'train_step']
    if not train:
        return None
    cells = []
    for arch in dict.fromkeys(r['arch'] for r in train):
        g = _lookup(rows, 'train_step', arch=arch)
        ours, stacked, peer = (g[f'{form}_train_step']
                               for form in ('ours', 'ours_stacked', 'mmpretrain'))
        cells.append([arch.upper(), *map(_ms_spread, (ours, stacked, peer)),
                      f'{ours["median_ms"] / peer["median_ms"]:.2f}',
                      f'{stacked["median_ms"] / peer["median_ms"]:.2f}'])
    size, batch = train[0]['size'], train[0]['batch']
    return _table(f'One training step (forward + backward, train form, batch {batch}, '
                  f'{size}x{size}), ms (10th-90th percentile)',
                  ['arch', 'ours', 'ours, branches stacked', 'mmpretrain',
                   'ours / mmpretrain', 'stacked / mmpretrain'], cells)


TABLES = (_backbones_table, _int8_table, _mobilenet_table, _dilated_table,
          _whole_models_table, _photo_to_boxes_table, _train_step_table)


def to_markdown(result: dict) -> str:
    """The README's benchmark section: how it was measured, a table for each part
    measured, the targets."""
    tables = [table(result) for table in TABLES]
    targets = _table('Targets', ['target', 'measured', 'result'], (
        [t['target'], ', '.join(f'{k} {v:.2f}' for k, v in t['values'].items()),
         'PASS' if t['passed'] else 'FAIL'] for t in result['targets']))
    return '\n\n'.join([_summary(result), *filter(None, tables), targets]) + '\n'


def plot(result: dict, path: str):
    """Latency at the target size against parameters (fused), one line per form."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows, size = result['rows'], target_size(result)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    archs = [a for a in result['settings']['archs']
             if _lookup(rows, 'backbone', arch=a, size=size)]
    for form, label in BACKBONE_FORMS.items():
        points = []
        for arch in archs:
            g = _lookup(rows, 'backbone', arch=arch, size=size)
            points.append((g['ours_fused']['params'] / 1e6, g[form]['median_ms']))
        ax.plot(*zip(*points), marker='o', label=label)
        if form == 'ours_fused':
            for arch, (x, y) in zip(archs, points):
                ax.annotate(arch.upper(), (x, y), textcoords='offset points', xytext=(4, -10))
    for r in rows:
        if r['section'] == 'backbone' and r['size'] == size and \
                r['form'].startswith('mobilenetv2'):
            ax.plot(r['params'] / 1e6, r['median_ms'], marker='s', linestyle='none',
                    label='mmdet MobileNetV2' + (', BN folded' if 'folded' in r['form'] else ''))
    ax.set_xlabel('parameters (M, fused backbone)')
    ax.set_ylabel(f'latency (ms), batch 1, {size}x{size}')
    ax.set_title(f'{result["machine"]["cpu"]}, {result["threads"]} thread(s), load average '
                 f'{_load(result["load_average_start"])} at the start', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    plt.close(fig)
    with atomic_file(path) as f:
        f.write(buffer.getvalue())


def write_report(result: dict, out_dir: str) -> Dict[str, str]:
    """benchmark.json, benchmark.md and benchmark.png in ``out_dir``, each atomically."""
    paths = {ext: os.path.join(out_dir, f'benchmark.{ext}') for ext in ('json', 'md', 'png')}
    with atomic_file(paths['json'], 'w') as f:
        json.dump(result, f, indent=1)
    with atomic_file(paths['md'], 'w') as f:
        f.write(to_markdown(result))
    plot(result, paths['png'])
    return paths
