"""Measuring: each section's models timed interleaved, their rows, ``run_benchmark``
over a preset, and ``run_and_report`` (tools/benchmark.py: the run and its report)."""

import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mobileone_mm import MobileOne

from ...fusion.reparameterize import count_params
from ..analysis import count_macs, measure_interleaved
from .machine import describe_isa, describe_load, load_average, machine_info, peak_gflops
from .models import (
    build_backbones,
    build_dilated,
    build_photo_to_boxes,
    build_whole_model,
    synthetic_photo,
    train_step,
)
from .report import write_report
from .runtimes import MODEL_ARCHS, build_runtime_models, runtime_plan
from .stacked import with_stacked_branches
from .targets import evaluate_targets

ARCHS = ('s0', 's1', 's2', 's3', 's4')

# How long each takes on one machine: docs/speed.md.
PRESETS = dict(
    full=dict(
        archs=ARCHS,
        sizes=(224, 320, 512),
        dilated_size=512,
        runs=40,
        warmup=3,
        int8_archs=('s0', 's1'),
        int8_sizes=(320,),
        group_budget_s=8.0,
        min_runs=10,
        whole_models=(('ssdlite', 320), ('rtmdet', 320), ('rtmdet', 640), ('deeplabv3', 512)),
        whole_runs=8,
        photo_size=(480, 640),
        train_archs=('s0', 's1'),
        train_batch=4,
        train_size=224,
        train_runs=6,
        peak_runs=5,
        runtime_models=(('classifier_s0', 320), ('classifier_s1', 320), ('ssdlite', 320)),
    ),
    quick=dict(
        archs=('s0', 's1'),
        sizes=(320,),
        dilated_size=None,
        runs=10,
        warmup=2,
        photo_size=(480, 640),
        int8_archs=('s0', 's1'),
        int8_sizes=(320,),
        group_budget_s=3.0,
        min_runs=5,
        whole_models=(('ssdlite', 320), ('rtmdet', 320), ('deeplabv3', 256)),
        whole_runs=3,
        train_archs=('s0',),
        train_batch=2,
        train_size=224,
        train_runs=3,
        peak_runs=3,
        runtime_models=(),
    ),  # ExecuTorch's lowering alone takes minutes
)


def _measure(
    section: str,
    models: Dict[str, dict],
    example: torch.Tensor,
    peak: float,
    timing: dict,
    log: Callable[[str], None],
    what: str,
    **common,
) -> List[dict]:
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
        row = dict(
            section=section,
            form=name,
            **common,
            params=count_params(module),
            gmacs=macs / 1e9,
            **stats[name],
        )
        row['gflops'] = 2 * macs / (row['median_ms'] / 1e3) / 1e9
        row['peak_pct'] = 100 * row['gflops'] / peak
        for key in ('backend', 'rel_diff', 'cosine', 'runtime', 'precision'):
            if key in model:
                row[key] = model[key]
        rows.append(row)
    log(f'{what}: ' + ', '.join(f'{k} {v["median_ms"]:.1f} ms' for k, v in stats.items()))
    return rows


def run_benchmark(
    preset: str = 'full',
    threads: Optional[int] = None,
    log: Callable[[str], None] = print,
    **overrides,
) -> dict:
    """Measure everything ``preset`` ('full' or 'quick', see PRESETS) lists; keyword
    arguments override its settings. Returns dict(machine, settings, rows, targets)."""
    settings = dict(PRESETS[preset], **overrides)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    started = time.time()
    try:
        result = dict(
            machine=machine_info(),
            settings=dict(settings, preset=preset),
            threads=threads,
            load_average_start=load_average(),
        )
        machine = result['machine']
        log(
            f'{machine["cpu"]}, {machine["cores"]} cores; int8 / bf16 instructions: '
            f'{describe_isa(machine["isa"])}'
        )
        result['peak'] = peak_gflops(threads, settings['peak_runs'])
        peak = result['peak_gflops'] = result['peak']['peak']
        log(
            f'fp32 peak: {peak:.0f} GFLOP/s with {threads} thread(s) '
            f'({result["peak"]["best"]}); load average '
            f'{describe_load(result["load_average_start"])}'
        )
        rows = (
            _measure_backbones(settings, peak, log)
            + _measure_whole_models(settings, threads, peak, log)
            + _measure_photo_to_boxes(settings, threads, log)
        )
        runtime_rows, result['runtimes'] = _measure_runtimes(settings, threads, peak, log)
        result['rows'] = rows + runtime_rows + _measure_train_steps(settings, peak, log)
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
    timing = dict(
        warmup=settings['warmup'],
        runs=settings['runs'],
        budget_s=settings['group_budget_s'],
        min_runs=settings['min_runs'],
    )
    rows = []
    archs = list(settings['archs'])
    for arch in archs:
        for size in settings['sizes']:
            example = torch.randn(1, 3, size, size)
            models = build_backbones(
                arch,
                example,
                with_mobilenetv2=arch == archs[0],
                int8=arch in settings['int8_archs'] and size in settings['int8_sizes'],
            )
            rows += _measure(
                'backbone',
                models,
                example,
                peak,
                timing,
                log,
                f'{arch} {size}',
                arch=arch,
                size=size,
            )
        if settings.get('dilated_size'):
            size = settings['dilated_size']
            example = torch.randn(1, 3, size, size)
            heavy = dict(timing, warmup=1, min_runs=min(5, timing['min_runs']))  # OS8
            rows += _measure(
                'dilated',
                build_dilated(arch, example),
                example,
                peak,
                heavy,
                log,
                f'{arch} {size} dilated',
                arch=arch,
                size=size,
            )
    return rows


def _measure_whole_models(settings: dict, threads: int, peak: float, log) -> List[dict]:
    """SSDLite / RTMDet / DeepLabV3 with MobileOne-S0 (``whole_models``: (name, input
    size) pairs, a name may come at several sizes)."""
    timing = dict(warmup=1, runs=settings['whole_runs'], min_runs=settings['whole_runs'])
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, size in settings['whole_models']:
            models = build_whole_model(name, size, threads, workdir)
            rows += _measure(
                'whole_model',
                models,
                torch.randn(1, 3, size, size),
                peak,
                timing,
                log,
                f'{name} {size}',
                arch='s0',
                size=size,
                model=name,
            )
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
    common = dict(
        section='photo_to_boxes',
        arch='s0',
        model='ssdlite',
        size=shape[0],
        photo=f'{width}x{height}',
        params=count_params(model),
        gmacs=count_macs(model, torch.randn(1, 3, *shape)) / 1e9,
    )
    log(
        f'ssdlite photo {width}x{height} -> boxes: '
        + ', '.join(f'{k} {v["median_ms"]:.1f} ms' for k, v in stats.items())
    )
    return [dict(common, form=name, **stats[name]) for name in paths]


def _measure_runtimes(settings: dict, threads: int, peak: float, log) -> tuple:
    """Each of ``runtime_models`` ((name, input size) pairs) exported to every runtime
    that runs here at each precision (``runtimes.build_runtime_models``), timed
    interleaved with PyTorch and the peers. Returns (rows, dict(table: the runtimes and
    their precisions, skipped: {'runtime precision': why not timed}, failed: {'model
    size form': why its export failed})), ([], None) when ``runtime_models`` is empty."""
    if not settings.get('runtime_models'):
        return [], None
    plan, table, skipped = runtime_plan()
    log('runtimes not timed: ' + '; '.join(f'{k}: {v}' for k, v in skipped.items()))
    timing = dict(
        warmup=2,
        runs=settings['runs'],
        budget_s=settings['group_budget_s'],
        min_runs=settings['min_runs'],
    )
    rows, failed = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, size in settings['runtime_models']:
            models, errors, example = build_runtime_models(name, size, plan, threads, workdir)
            failed.update({f'{name} {size} {form}': error for form, error in errors.items()})
            rows += _measure(
                'runtime',
                models,
                example,
                peak,
                timing,
                log,
                f'{name} {size} runtimes',
                arch=MODEL_ARCHS[name],
                size=size,
                model=name,
            )
    return rows, dict(table=table, skipped=skipped, failed=failed)


def _measure_train_steps(settings: dict, peak: float, log) -> List[dict]:
    """One training step of ours (branch by branch, as shipped), of ours with the
    branches stacked (``with_stacked_branches``) and of mmpretrain's MobileOne, same
    weights, each of ``train_archs``."""
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne

    size, batch = settings['train_size'], settings['train_batch']
    timing = dict(
        warmup=1, runs=settings['train_runs'], min_runs=settings['train_runs'], inference=False
    )
    rows = []
    for arch in settings['train_archs']:
        example = torch.randn(batch, 3, size, size)
        peer = MMPretrainMobileOne(arch, out_indices=(3,))
        peer.train()
        ours = MobileOne(arch, out_indices=(3,)).train()
        ours.load_state_dict(peer.state_dict(), strict=True)
        stacked = with_stacked_branches(ours)
        models = dict(
            ours_train_step=dict(fn=train_step(ours), module=ours),
            # F.conv2d: no Conv2d hooks count its MACs, the plain form's do
            ours_stacked_train_step=dict(fn=train_step(stacked), module=ours),
            mmpretrain_train_step=dict(fn=train_step(peer), module=peer),
        )
        for row in _measure(
            'train_step',
            models,
            example,
            peak,
            timing,
            log,
            f'{arch} {size} train step x{batch}',
            arch=arch,
            size=size,
            batch=batch,
        ):
            row['gflops'] *= 3  # forward + backward ~ 3 x the forward's work
            row['peak_pct'] *= 3
            rows.append(row)
    return rows


LOAD_WARNING = 0.5  # load average above which the timings are said to be noisy


def run_and_report(
    out_dir: str,
    preset: str = 'full',
    threads: Optional[int] = None,
    archs: Optional[Sequence[str]] = None,
    sizes: Optional[Sequence[int]] = None,
    runs: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Tuple[dict, Dict[str, str]]:
    """tools/benchmark.py: ``run_benchmark`` of ``preset``, with ``archs``, ``sizes`` and
    ``runs`` overriding its settings where given (``sizes`` without the preset's dilated
    size leave the dilated model out), and its report written to ``out_dir``
    (``write_report``). A machine already loaded (load average above LOAD_WARNING) is
    logged as a warning first. Returns (the result, the report's paths by extension)."""
    overrides = {k: v for k, v in dict(archs=archs, sizes=sizes, runs=runs).items() if v}
    if sizes and PRESETS[preset]['dilated_size'] not in sizes:
        overrides['dilated_size'] = None
    load = load_average()
    if load is not None and load > LOAD_WARNING:
        log(
            f'warning: load average {load:.2f}: other jobs share the CPU and the '
            f"timings will be noisy and slow (with --threads equal to the cores, PyTorch's "
            f'OpenMP pool slows down far more than onnxruntime; --threads 1 suffers less).'
        )
    result = run_benchmark(preset, threads=threads, log=log, **overrides)
    return result, write_report(result, out_dir)
