"""The report: JSON, markdown tables (how it was measured, a table for each section, the
targets) and a PNG plot."""

import io
import json
import os
from typing import Dict, Iterable, Optional, Sequence

from mobileone_mm.checkpoints.io import atomic_file

from .machine import describe_isa, describe_load
from .runtimes import runtime_table
from .targets import best_peer, lookup, target_size

BUSY_LOAD = 0.5  # load average above which the report says the timings are not clean

# name in the results -> column title
BACKBONE_FORMS = dict(
    ours_train='ours train',
    ours_fused='ours fused',
    ours_optimized='ours optimized',
    timm_fused='timm fused',
    mmpretrain_fused='mmpretrain fused',
)


def _ms(row: Optional[dict]) -> str:
    return '–' if row is None else f'{row["median_ms"]:.1f}'


def _ms_spread(row: dict) -> str:
    return f'{row["median_ms"]:.1f} ({row["p10_ms"]:.0f}-{row["p90_ms"]:.0f})'


def _row(cells: Sequence) -> str:
    return '| ' + ' | '.join(map(str, cells)) + ' |'


def _table(title: str, header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table under a ``### title`` heading."""
    return '\n'.join(
        [f'### {title}', '', _row(header), '|---' * len(header) + '|']
        + [_row(cells) for cells in rows]
    )


def _peak_text(peak: dict) -> str:
    others = sorted(peak['kernels'].items(), key=lambda kv: -kv[1])[1:4]
    text = f'{peak["best"]}; next: ' + ', '.join(f'{k} {v:.0f}' for k, v in others)
    if peak['flop_per_cycle']:
        text += (
            f'; {peak["flop_per_cycle"]:.0f} FLOP per thread and cycle at the '
            f'{peak["mhz"]:.0f} MHz /proc/cpuinfo reports'
        )
    return text


def _summary(result: dict) -> str:
    """How it was measured: machine, threads, load, fp32 peak, runs per median."""
    m, peak = result['machine'], result['peak_gflops']
    runs = sorted({r['runs'] for r in result['rows'] if r['section'] in ('backbone', 'dilated')})
    text = (
        f'Measured on {m["cpu"]} ({m["cores"]} cores), **{result["threads"]} thread(s)**, '
        f'torch {m["torch"]}, onnxruntime {m["onnxruntime"]}; load average '
        f'{describe_load(result["load_average_start"])} at the start, '
        f'{describe_load(result["load_average_end"])} at the end; '
        f'{result["duration_s"] / 60:.1f} minutes. int8 / bf16 instructions: '
        f'{describe_isa(m["isa"])}. fp32 peak, same threads: **{peak:.0f} GFLOP/s** '
        f'({_peak_text(result["peak"])}). Batch 1, '
        f'milliseconds: median of {"-".join(map(str, dict.fromkeys((runs[0], runs[-1]))))} '
        f'interleaved runs after warm-up (10th / 90th percentiles in the JSON). Random '
        f"weights, same weights for ours and mmpretrain's."
    )
    # At the end the load average counts the benchmark's own threads: only the start tells.
    busiest = result['load_average_start'] or 0
    if busiest > BUSY_LOAD:
        text += (
            f'\n\n**Other jobs shared the CPU (load average {busiest:.1f}): these '
            f'timings are not representative; rerun on an idle machine.**'
        )
    return text


def _backbones_table(result: dict) -> str:
    rows, peak = result['rows'], result['peak_gflops']
    keys = sorted(
        {(r['arch'], r['size']) for r in rows if r['section'] == 'backbone'},
        key=lambda k: (k[1], k[0]),
    )
    cells = []
    for arch, size in keys:
        g = lookup(rows, 'backbone', arch=arch, size=size)
        fused, opt = g['ours_fused'], g['ours_optimized']
        timm, mmpretrain = g['timm_fused']['median_ms'], g['mmpretrain_fused']['median_ms']
        best = min(timm, mmpretrain)
        bound = 2 * fused['gmacs'] / peak * 1e3  # ms at the fp32 peak
        cells.append(
            [
                arch.upper(),
                size,
                f'{fused["params"] / 1e6:.2f}',
                f'{fused["gmacs"]:.2f}',
                *(_ms(g.get(k)) for k in BACKBONE_FORMS),
                f'{fused["median_ms"] / timm:.2f}',
                f'{fused["median_ms"] / mmpretrain:.2f}',
                f'{opt["median_ms"] / best:.2f}',
                f'{bound / best:.2f}',
                f'{opt["gflops"]:.0f} ({opt["peak_pct"]:.0f} %)',
            ]
        )
    return _table(
        'Backbones (stage-4 output)',
        [
            'arch',
            'input',
            'params (M)',
            'GMACs',
            *BACKBONE_FORMS.values(),
            'fused / timm',
            'fused / mmpretrain',
            'optimized / best peer',
            'fp32 bound / best peer',
            'optimized GFLOP/s (% peak)',
        ],
        cells,
    )


def _int8_table(result: dict) -> Optional[str]:
    rows, peak = result['rows'], result['peak_gflops']
    int8 = [r for r in rows if r['section'] == 'backbone' and r['form'] == 'ours_int8']
    if not int8:
        return None
    cells = []
    for r in int8:
        g = lookup(rows, 'backbone', arch=r['arch'], size=r['size'])
        peer, best = best_peer(g)
        optimized = g['ours_optimized']['median_ms']
        bound = 2 * r['gmacs'] / peak * 1e3  # ms at the fp32 peak
        cells.append(
            [
                r['arch'].upper(),
                r['size'],
                f'{best:.1f} ({peer.split("_")[0]})',
                f'{optimized:.1f}',
                _ms(r),
                f'{r["median_ms"] / best:.2f}',
                f'{r["median_ms"] / optimized:.2f}',
                f'{r["median_ms"] / bound:.2f}',
                f'{r["cosine"]:.4f}',
            ]
        )
    return _table(
        "int8 backbones (optimize_for_inference precision='int8', onnxruntime "
        'static QDQ; random weights and calibration: timing only)',
        [
            'arch',
            'input',
            'best peer fused fp32',
            'ours optimized fp32',
            'ours int8',
            'int8 / best peer',
            'int8 / optimized fp32',
            'int8 / fp32 bound',
            'cosine to fp32',
        ],
        cells,
    )


def _mobilenet_table(result: dict) -> Optional[str]:
    rows = result['rows']
    mobilenet = [r for r in rows if r['form'].startswith('mobilenetv2')]
    if not mobilenet:
        return None
    arch = mobilenet[0]['arch']
    ours = [
        r
        for r in rows
        if r['section'] == 'backbone'
        and r['arch'] == arch
        and r['form'] in ('ours_fused', 'ours_optimized')
    ]
    labels = dict(
        mobilenetv2='MobileNetV2 (as mmdet builds it)',
        mobilenetv2_folded='MobileNetV2, BN folded',
        ours_fused=f'MobileOne-{arch.upper()} fused',
        ours_optimized=f'MobileOne-{arch.upper()} optimized',
    )
    cells = []
    for r in mobilenet + ours:
        fused = lookup(rows, 'backbone', arch=arch, size=r['size'])['ours_fused']
        cells.append(
            [
                labels[r['form']],
                r['size'],
                f'{r["params"] / 1e6:.2f}',
                f'{r["gmacs"]:.2f}',
                f'{r["median_ms"]:.1f}',
                f'{r["gflops"]:.0f} ({r["peak_pct"]:.0f} %)',
                f'{r["median_ms"] / fused["median_ms"]:.2f}',
            ]
        )
    return _table(
        f'mmdet MobileNetV2 (out_indices=(7,)) against MobileOne-{arch.upper()}',
        ['model', 'input', 'params (M)', 'GMACs', 'ms', 'GFLOP/s (% peak)', '/ ours fused'],
        cells,
    )


def _dilated_table(result: dict) -> Optional[str]:
    rows = result['rows']
    dilated = [r for r in rows if r['section'] == 'dilated']
    if not dilated:
        return None
    forms = [
        'ours_fused_os32',
        'ours_fused_os16',
        'ours_fused_os8',
        'ours_optimized_os16',
        'ours_optimized_os8',
    ]
    cells = []
    for arch in dict.fromkeys(r['arch'] for r in dilated):
        g = lookup(rows, 'dilated', arch=arch)
        cells.append(
            [
                arch.upper(),
                ' / '.join(f'{g[f"ours_fused_os{s}"]["gmacs"]:.1f}' for s in (32, 16, 8)),
                *(_ms(g.get(f)) for f in forms),
            ]
        )
    size = dilated[0]['size']
    return _table(
        f'Dilated backbones (DeepLabV3 output strides), {size}x{size}',
        [
            'arch',
            'GMACs OS32 / OS16 / OS8',
            *(f.replace('ours_', '').replace('_os', ' OS') for f in forms),
        ],
        cells,
    )


def _whole_models_table(result: dict) -> Optional[str]:
    rows = result['rows']
    models = dict.fromkeys((r['model'], r['size']) for r in rows if r['section'] == 'whole_model')
    if not models:
        return None
    cells = []
    for name, size in models:
        g = lookup(rows, 'whole_model', model=name, size=size)
        pt, opt, ort, int8 = (
            g[form] for form in ('pytorch_fused', 'optimized', 'onnxruntime_export', 'int8')
        )
        cells.append(
            [
                dict(ssdlite='SSDLite', rtmdet='RTMDet', deeplabv3='DeepLabV3 (OS8)')[name],
                size,
                f'{pt["gmacs"]:.1f}',
                _ms(pt),
                f'{_ms(opt)} ({opt["backend"]})',
                _ms(ort),
                _ms(int8),
                f'{opt["median_ms"] / pt["median_ms"]:.2f}',
                f'{int8["median_ms"] / ort["median_ms"]:.2f}',
                f'{int8["median_ms"] / pt["median_ms"]:.2f}',
                f'{int8["cosine"]:.4f}',
            ]
        )
    return _table(
        'Whole models, MobileOne-S0, fused (int8: random weights and calibration, timing only)',
        [
            'model',
            'input',
            'GMACs',
            'PyTorch (tensor forward)',
            'optimize_for_inference',
            'onnxruntime (export_onnx graph)',
            'int8 (optimize_for_inference)',
            'optimized / PyTorch',
            'int8 / onnxruntime fp32',
            'int8 / PyTorch',
            'int8 cosine to fp32',
        ],
        cells,
    )


def _photo_to_boxes_table(result: dict) -> Optional[str]:
    g = lookup(result['rows'], 'photo_to_boxes')
    if not g:
        return None
    eager = g['mmdet_eager']
    names = dict(
        mmdet_eager="mmdet's inference_detector, fused model (eager PyTorch)",
        onnxruntime_fp32='onnx_infer path, export_onnx graph, fp32',
        onnxruntime_int8='onnx_infer path, int8 graph (tools/quantize.py)',
    )
    cells = [
        [names[form], _ms_spread(row), f'{row["median_ms"] / eager["median_ms"]:.2f}']
        for form, row in g.items()
    ]
    return _table(
        f'Photo to boxes, SSDLite-S0 ({eager["photo"]} photo, network input '
        f'{eager["size"]}x{eager["size"]}; per image: pre-processing, network, '
        f"post-processing, boxes in the photo's pixels), ms",
        ['path', 'ms (10th-90th percentile)', '/ eager'],
        cells,
    )


def _train_step_table(result: dict) -> Optional[str]:
    rows = result['rows']
    train = [r for r in rows if r['section'] == 'train_step']
    if not train:
        return None
    cells = []
    for arch in dict.fromkeys(r['arch'] for r in train):
        g = lookup(rows, 'train_step', arch=arch)
        ours, stacked, peer = (
            g[f'{form}_train_step'] for form in ('ours', 'ours_stacked', 'mmpretrain')
        )
        cells.append(
            [
                arch.upper(),
                *map(_ms_spread, (ours, stacked, peer)),
                f'{ours["median_ms"] / peer["median_ms"]:.2f}',
                f'{stacked["median_ms"] / peer["median_ms"]:.2f}',
            ]
        )
    size, batch = train[0]['size'], train[0]['batch']
    return _table(
        f'One training step (forward + backward, train form, batch {batch}, '
        f'{size}x{size}), ms (10th-90th percentile)',
        [
            'arch',
            'ours',
            'ours, branches stacked',
            'mmpretrain',
            'ours / mmpretrain',
            'stacked / mmpretrain',
        ],
        cells,
    )


def _runtimes_table(result: dict) -> Optional[str]:
    table = runtime_table(result)
    return None if table is None else _table(*table)


TABLES = (
    _backbones_table,
    _int8_table,
    _mobilenet_table,
    _dilated_table,
    _whole_models_table,
    _photo_to_boxes_table,
    _runtimes_table,
    _train_step_table,
)


def to_markdown(result: dict) -> str:
    """docs/speed.md's benchmark section: how it was measured, a table for each part
    measured, the targets."""
    tables = [table(result) for table in TABLES]
    targets = _table(
        'Targets',
        ['target', 'measured', 'result'],
        (
            [
                t['target'],
                ', '.join(f'{k} {v:.2f}' for k, v in t['values'].items()),
                'PASS' if t['passed'] else 'FAIL',
            ]
            for t in result['targets']
        ),
    )
    return '\n\n'.join([_summary(result), *filter(None, tables), targets]) + '\n'


def plot(result: dict, path: str):
    """Latency at the target size against parameters (fused), one line per form."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, size = result['rows'], target_size(result)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    archs = [a for a in result['settings']['archs'] if lookup(rows, 'backbone', arch=a, size=size)]
    for form, label in BACKBONE_FORMS.items():
        points = []
        for arch in archs:
            g = lookup(rows, 'backbone', arch=arch, size=size)
            points.append((g['ours_fused']['params'] / 1e6, g[form]['median_ms']))
        ax.plot(*zip(*points), marker='o', label=label)
        if form == 'ours_fused':
            for arch, (x, y) in zip(archs, points):
                ax.annotate(arch.upper(), (x, y), textcoords='offset points', xytext=(4, -10))
    for r in rows:
        if r['section'] == 'backbone' and r['size'] == size and r['form'].startswith('mobilenetv2'):
            ax.plot(
                r['params'] / 1e6,
                r['median_ms'],
                marker='s',
                linestyle='none',
                label='mmdet MobileNetV2' + (', BN folded' if 'folded' in r['form'] else ''),
            )
    ax.set_xlabel('parameters (M, fused backbone)')
    ax.set_ylabel(f'latency (ms), batch 1, {size}x{size}')
    ax.set_title(
        f'{result["machine"]["cpu"]}, {result["threads"]} thread(s), load average '
        f'{describe_load(result["load_average_start"])} at the start',
        fontsize=9,
    )
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
