"""optimize_for_inference gives the model's outputs; the benchmark writes its reports.
No timing is asserted here: the speed targets are checked by tools/benchmark.py."""

import copy
import json

import pytest
import torch
import torch.nn as nn

from mobileone_mm import MobileOne, optimize_for_inference, reparameterize_model
from mobileone_mm.fusion.flat_outputs import flatten, unflatten
from mobileone_mm.runtimes.optimize import BACKENDS

TOLERANCE = 1e-5  # max |difference| / max |output|, all outputs together


def _max_rel(actual, expected) -> float:
    actual, expected = flatten(actual)[0], flatten(expected)[0]
    assert [a.shape for a in actual] == [e.shape for e in expected]
    scale = max(e.abs().max().item() for e in expected)
    return max((a - e).abs().max().item() for a, e in zip(actual, expected)) / scale


def _backbone(randomize_bn, **kwargs):
    return randomize_bn(MobileOne('s0', **kwargs)).eval()


@pytest.mark.parametrize('backend', BACKENDS)
def test_every_backend_gives_the_train_and_fused_outputs(backend, randomize_bn):
    train_form = _backbone(randomize_bn)
    fused = reparameterize_model(copy.deepcopy(train_form))
    x = torch.randn(2, 3, 96, 128)
    optimized = optimize_for_inference(train_form, x, backend=backend)
    assert optimized.backend == backend and optimized.check['passed']
    with torch.no_grad():
        out = optimized(x)
        assert isinstance(out, tuple) and len(out) == 1
        assert _max_rel(out, fused(x)) <= TOLERANCE
        assert _max_rel(out, train_form(x)) <= TOLERANCE


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(out_indices=(2, 3)),
        dict(out_indices=(0, 1, 2, 3), strides=(2, 2, 1, 1), dilations=(1, 1, 2, 4)),
        dict(out_indices=(2, 3), strides=(2, 2, 2, 1), dilations=(1, 1, 1, 2)),
    ],
    ids=['two-outputs', 'os8-four-outputs', 'os16'],
)
def test_multi_output_and_dilated_backbones(kwargs, randomize_bn):
    train_form = _backbone(randomize_bn, **kwargs)
    x = torch.randn(1, 3, 128, 96)
    optimized = optimize_for_inference(train_form, x)
    assert optimized.backend == 'onnxruntime', optimized.skipped
    with torch.no_grad():
        expected = train_form(x)
        out = optimized(x)
    assert len(out) == len(kwargs['out_indices'])
    assert _max_rel(out, expected) <= TOLERANCE


def test_caller_model_is_untouched_and_new_shapes_work(randomize_bn):
    model = _backbone(randomize_bn, out_indices=(2, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimized = optimize_for_inference(model, torch.randn(1, 3, 64, 64))
    assert model.training and not model.deploy
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert hasattr(model.stage0, 'branch_conv_list')
    x = torch.randn(3, 3, 80, 112)  # another batch and size: a second graph, checked too
    with torch.no_grad():
        assert _max_rel(optimized(x), model.eval()(x)) <= TOLERANCE
    assert len(optimized.runners) == 2


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return dict(maps=[y, y.relu()], pooled=(y.mean((2, 3)),))


def test_nested_outputs_keep_their_structure():
    model = Nested().eval()
    x = torch.randn(1, 3, 16, 16)
    out = optimize_for_inference(model, x)(x)
    assert isinstance(out, dict) and list(out) == ['maps', 'pooled']
    assert isinstance(out['maps'], list) and isinstance(out['pooled'], tuple)
    with torch.no_grad():
        assert _max_rel(out, model(x)) <= TOLERANCE
    leaves, spec = flatten(out)
    assert len(leaves) == 3 and flatten(unflatten(leaves, spec))[1] == spec


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='Unknown backend'):
        optimize_for_inference(Nested(), torch.randn(1, 3, 8, 8), backend='tensorrt')
    optimized = optimize_for_inference(Nested(), torch.randn(1, 3, 8, 8), backend='eager')
    with pytest.raises(TypeError, match='float32'):
        optimized(torch.randn(1, 3, 8, 8, dtype=torch.float64))


def test_a_failing_check_moves_on_to_the_next_backend(monkeypatch):
    from mobileone_mm.runtimes import optimize as inference

    real = inference.BUILDERS['onnxruntime']

    def wrong(*args):  # a backend that builds but computes something else
        run = real(*args)
        return lambda x: [t + 1 for t in run(x)]

    monkeypatch.setitem(inference.BUILDERS, 'onnxruntime', wrong)
    x = torch.randn(1, 3, 8, 8)
    optimized = optimize_for_inference(Nested(), x)
    assert optimized.backend == 'openvino'  # the next of BACKENDS
    assert 'OutputMismatch' in optimized.skipped['onnxruntime']
    with pytest.raises(inference.OutputMismatch):
        optimize_for_inference(Nested(), x, backend='onnxruntime')


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: another core
flags\t\t: fpu
"""


def test_cpu_info_reads_the_model_clock_and_int8_bf16_instructions(tmp_path):
    from mobileone_mm.devkit.benchmark import cpu_info, describe_isa

    path = tmp_path / 'cpuinfo'
    path.write_text(CPUINFO)
    info = cpu_info(str(path))
    assert info['cpu'] == 'Intel(R) Xeon(R) Platinum 8480+' and info['mhz'] == 2000.0
    assert (
        describe_isa(info['isa']) == 'avx512_vnni yes, avx512_bf16 yes, amx_int8 yes, amx_bf16 yes'
    )
    assert info['isa']['avx512f'] and not info['isa']['avx_vnni']
    path.write_text(CPUINFO.replace(' amx_bf16 amx_tile amx_int8', ''))
    assert describe_isa(cpu_info(str(path))['isa']).endswith('amx_int8 no, amx_bf16 no')
    missing = cpu_info(str(tmp_path / 'absent'))  # not Linux: the model only, flags unknown
    assert missing['mhz'] is None and set(missing['isa'].values()) == {None}
    assert describe_isa(missing['isa']).startswith('avx512_vnni unknown')


@pytest.mark.slow
def test_benchmark_writes_json_markdown_and_png(tmp_path):
    from mobileone_mm.devkit.benchmark import INT8_BF16_FLAGS, run_benchmark, write_report

    result = run_benchmark(
        'quick',
        threads=1,
        log=lambda _: None,
        archs=('s0',),
        sizes=(64,),
        int8_archs=('s0',),
        int8_sizes=(64,),
        dilated_size=64,
        runs=2,
        warmup=1,
        min_runs=2,
        group_budget_s=0.01,
        whole_models=(('ssdlite', 128), ('rtmdet', 64), ('rtmdet', 96), ('deeplabv3', 64)),
        whole_runs=2,
        photo_size=(72, 100),
        train_archs=('s0',),
        train_batch=2,
        train_size=64,
        train_runs=2,
        peak_runs=1,
    )
    paths = write_report(result, str(tmp_path / 'out'))
    data = json.loads(open(paths['json']).read())
    forms = {(r['section'], r['form']) for r in data['rows']}
    assert {
        ('backbone', f)
        for f in (
            'ours_train',
            'ours_fused',
            'ours_optimized',
            'timm_fused',
            'mmpretrain_fused',
            'mobilenetv2',
            'mobilenetv2_folded',
            'ours_int8',
        )
    } <= forms
    assert {('dilated', f'ours_fused_os{s}') for s in (32, 16, 8)} <= forms
    assert {
        ('whole_model', f) for f in ('pytorch_fused', 'optimized', 'onnxruntime_export', 'int8')
    } <= forms
    assert {
        ('photo_to_boxes', f) for f in ('mmdet_eager', 'onnxruntime_fp32', 'onnxruntime_int8')
    } <= forms
    assert {
        ('train_step', f'{form}_train_step') for form in ('ours', 'ours_stacked', 'mmpretrain')
    } <= forms
    assert {(r['model'], r['size']) for r in data['rows'] if r['section'] == 'whole_model'} == {
        ('ssdlite', 128),
        ('rtmdet', 64),
        ('rtmdet', 96),
        ('deeplabv3', 64),
    }
    for row in data['rows']:
        assert row['p10_ms'] <= row['median_ms'] <= row['p90_ms'] and row['threads'] == 1
        assert row['gmacs'] > 0 and row['params'] > 0
    optimized = [r for r in data['rows'] if 'optimized' in r['form']]
    assert all(r['rel_diff'] <= TOLERANCE for r in optimized)
    int8 = [r for r in data['rows'] if 'int8' in r['form'] and r['section'] != 'photo_to_boxes']
    assert len(int8) == 5 and all(0.9 < r['cosine'] <= 1 + 1e-6 for r in int8)
    kernels = data['peak']['kernels']
    assert data['peak_gflops'] == data['peak']['peak'] == max(kernels.values()) > 0
    assert {'MKL', 'oneDNN', 'MLAS'} <= {name.split('(')[-1][:-1] for name in kernels}
    assert set(INT8_BF16_FLAGS) <= set(data['machine']['isa'])
    assert {t['key'] for t in data['targets']} == {
        'fused_vs_timm',
        'fused_vs_mmpretrain',
        'mobilenetv2_vs_s0',
        'train_vs_fused_s0',
        'optimized_vs_peers',
        'train_step_vs_mmpretrain',
        'int8_vs_peers',
    }
    markdown = open(paths['md']).read()
    for heading in (
        '### Backbones',
        '### int8 backbones',
        '### mmdet MobileNetV2',
        '### Dilated backbones',
        '### Whole models',
        '### Photo to boxes, SSDLite-S0 (100x72 photo, network input 320x320',
        '### One training step',
        '### Targets',
    ):
        assert heading in markdown
    assert markdown.count('PASS') + markdown.count('FAIL') == 7
    for model, size in (('SSDLite', 128), ('RTMDet', 64), ('RTMDet', 96), ('DeepLabV3 (OS8)', 64)):
        assert f'| {model} | {size} |' in markdown
    assert all(f'{flag} ' in markdown for flag in INT8_BF16_FLAGS)
    with open(paths['png'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def _runtime_row(model, form, ms, **extra):
    return dict(section='runtime', model=model, size=320, form=form, median_ms=ms, **extra)


RUNTIMES_TABLE = dict(
    onnxruntime=dict(precisions=['fp32', 'int8'], platform='x86 / ARM CPUs'),
    executorch=dict(precisions=['fp32', 'int8'], platform='Android / iOS'),
    ncnn=dict(precisions=['fp32'], platform='Android / ARM boards'),
    coreml=dict(precisions=['fp32', 'fp16'], platform='iPhone / iPad / Mac'),
)


def test_runtime_table_rows_ratios_stand_ins_and_skipped_reasons():
    """Fed with rows as _measure_runtimes writes them: every runtime x precision of the
    runtimes' table is a row, timed ones as ms (time / base, cosine), the base being the
    faster peer (timm here) or ours in PyTorch for SSDLite; the x86 stand-ins for ARM
    runtimes and the reasons for what was not timed or could not export are said."""
    from mobileone_mm.devkit.benchmark.runtimes import runtime_table

    rows = [
        _runtime_row('classifier_s0', 'pytorch_fused', 11.0),
        _runtime_row('classifier_s0', 'timm_fused', 10.0),
        _runtime_row('classifier_s0', 'mmpretrain_fused', 12.0),
        _runtime_row('classifier_s0', 'onnxruntime_fp32', 5.0, cosine=1.0),
        _runtime_row('classifier_s0', 'onnxruntime_int8', 2.5, cosine=0.9997),
        _runtime_row('classifier_s0', 'executorch_fp32', 6.0, cosine=0.9999996),
        _runtime_row('classifier_s0', 'ncnn_fp32', 4.0, cosine=1.0),
        _runtime_row('ssdlite', 'pytorch_fused', 25.0),
        _runtime_row('ssdlite', 'onnxruntime_fp32', 20.0, cosine=0.99999),
        _runtime_row('ssdlite', 'executorch_fp32', 30.0, cosine=1.0),
    ]
    result = dict(
        rows=rows,
        runtimes=dict(
            table=RUNTIMES_TABLE,
            skipped={
                'executorch int8': 'The executorch runtime is not installed (no torchao): '
                "pip install 'mobileone-mm[executorch]'",
                'coreml fp32': 'runs only on iPhone / iPad / Mac: not timed here',
                'coreml fp16': 'runs only on iPhone / iPad / Mac: not timed here',
            },
            failed={'ssdlite 320 ncnn_fp32': 'The ncnn runtime cannot take the operator X'},
        ),
    )
    title, header, cells = runtime_table(result)
    assert title.startswith('Runtimes')
    assert header == [
        'runtime',
        'precision',
        'S0 classifier 320x320',
        'SSDLite-S0 320x320',
        'runs on / note',
    ]
    table = {(c[0], c[1]): c[2:] for c in cells}
    assert len(cells) == 7 + 3
    assert table['onnxruntime', 'fp32'] == [
        '5.0 (0.50x, cos 1.000000)',
        '20.0 (0.80x, cos 0.999990)',
        'x86 / ARM CPUs',
    ]
    assert table['onnxruntime', 'int8'][:2] == ['2.5 (0.25x, cos 0.999700)', '–']
    assert table['executorch', 'fp32'] == [
        '6.0 (0.60x, cos 1.000000)',
        '30.0 (1.20x, cos 1.000000)',
        "XNNPACK's x86 kernels, a stand-in for its ARM build",
    ]
    assert table['executorch', 'int8'] == [
        '–',
        '–',
        'not timed: The executorch runtime is not installed (no torchao): pip '
        "install 'mobileone-mm[executorch]'",
    ]
    assert table['ncnn', 'fp32'] == [
        '4.0 (0.40x, cos 1.000000)',
        '–',
        "ncnn's x86 build, a stand-in for its ARM build; "
        'SSDLite-S0 320x320: The ncnn runtime cannot take the operator X',
    ]
    for precision in ('fp32', 'fp16'):
        assert table['coreml', precision] == [
            '–',
            '–',
            'not timed: runs only on iPhone / iPad / Mac: not timed here',
        ]
    assert table['timm fused', 'fp32'] == ['10.0 (1.00x)', '–', 'ratio base: S0 classifier 320x320']
    assert table['mmpretrain fused', 'fp32'] == ['12.0 (1.20x)', '–', '']
    assert table['ours fused, PyTorch', 'fp32'] == [
        '11.0 (1.10x)',
        '25.0 (1.00x)',
        'ratio base: SSDLite-S0 320x320',
    ]
    assert runtime_table(dict(rows=[r for r in rows if r['section'] != 'runtime'])) is None


@pytest.mark.slow
def test_runtime_section_exports_each_runtime_and_peers_share_the_weights(tmp_path):
    """The runtime section on the S0 classifier at 64x64: Core ML listed as not runnable
    here; onnxruntime, OpenVINO and ncnn (ExecuTorch's lowering takes minutes on this
    CPU: left to the benchmark run) exported, loaded, near the PyTorch wrapper; and
    mmpretrain's peer is its own classifier with our weights: on the normalised image it
    gives the wrapper's logits."""
    from mobileone_mm.devkit.benchmark.runtimes import build_runtime_models, runtime_plan

    plan, table, skipped = runtime_plan()
    assert set(table) == {'onnxruntime', 'openvino', 'executorch', 'ncnn', 'coreml'}
    for precision in table['coreml']['precisions']:
        assert skipped[f'coreml {precision}'].startswith('runs only on iPhone')
    fast = [entry for entry in plan if entry[0] in ('onnxruntime', 'openvino', 'ncnn')]
    assert len(fast) == 5  # onnxruntime and OpenVINO fp32 / int8, ncnn fp32
    models, failed, example = build_runtime_models('classifier_s0', 64, fast, 1, str(tmp_path))
    assert failed == {}
    assert set(models) == {
        'pytorch_fused',
        'timm_fused',
        'mmpretrain_fused',
        *(f'{name}_{precision}' for name, precision, _ in fast),
    }
    with torch.no_grad():
        logits = models['pytorch_fused']['fn'](example)
        wrapper = models['pytorch_fused']['module']
        peer = models['mmpretrain_fused']['fn'](wrapper.normalize(example))
        assert _max_rel(peer, logits) <= TOLERANCE
        assert models['timm_fused']['fn'](example).shape == logits.shape == (1, 1000)
    for name, precision, _ in fast:
        model = models[f'{name}_{precision}']
        assert (model['runtime'], model['precision']) == (name, precision)
        assert model['cosine'] >= (0.999999 if precision == 'fp32' else 0.99)
        assert precision == 'fp32' or model['cosine'] < 0.999999  # int8: not float rounding
        (out,) = model['fn'](example)
        assert _max_rel(torch.from_numpy(out), logits) <= (1e-4 if precision == 'fp32' else 0.2)
