"""mmdeploy 1.3.1's route to ONNX Runtime for the three codebases: the deploy configs in
configs/mmdeploy, mmdeploy's torch2onnx through mobileone_mm.runtimes.mmdeploy_route (the
torch >= 2.9 layer), and the backend model evaluated by mmdeploy's task processor on the
tiny data sets, against mmengine's own test loop (what `mim test` runs) on the same
checkpoint: the metric within 0.5 % absolute, and the graph's raw outputs within float32
noise of a float64 run of the PyTorch model, since random weights give small metrics
(a trained model is out of this file's time budget).

The checkpoints are random (BN affine values too), with BN statistics measured on the test
images, as training would leave them: O(1) activations, spread scores."""

import copy
import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import onnx
import pytest
import torch
from helpers import REPO
from mmengine.config import Config
from mmengine.runner import Runner
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_mm import reparameterize_model
from mobileone_mm.devkit.analysis import randomize_bn
from mobileone_mm.devkit.tiny_data import make_tiny_ade20k, make_tiny_coco, make_tiny_flowers
from mobileone_mm.loading.config import build_model
from mobileone_mm.runtimes.mmdeploy_route import (
    build_backend_model,
    evaluate_backend,
    export_end2end,
    torchscript_onnx_export,
)

DEPLOY = REPO / 'configs/mmdeploy'
MODELS = {
    'detection': REPO / 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
    'segmentation': REPO / 'configs/segmentation/'
    'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
    'classification': REPO / 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py',
}
# metric key, and 0.5 % absolute on its scale (COCO mAP is 0..1, mIoU and top-1 are %)
METRIC = {
    'detection': ('coco/bbox_mAP', 0.005),
    'segmentation': ('mIoU', 0.5),
    'classification': ('accuracy/top1', 0.5),
}
# The static configs at the tiny configs' network input (width, height): the shipped
# 320x320 / 512x512 ones are for the full-size recipes (checked below on the COCO one).
TINY_STATIC_SHAPE = {'detection': [128, 128], 'segmentation': [160, 128]}
FP32_NOISE_FACTOR = 4  # mobileone_mm.fusion.output_check.FACTOR


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """The three tiny data sets where the tiny configs look (relative paths)."""
    root = tmp_path_factory.mktemp('mmdeploy')
    previous = os.getcwd()
    os.chdir(root)
    make_tiny_coco('data/tiny_coco', num_train=1, num_val=4)
    make_tiny_ade20k('data/ade', num_train=1, num_val=2)
    make_tiny_flowers('data/tiny_flowers', num_train=4, num_val=8)
    yield root
    os.chdir(previous)


def random_checkpoint(config: Path, path: Path, size: int = 0) -> Path:
    """Random weights and BN affine values; BN statistics measured on the test images
    (random ones of ``size`` if given), as training would: activations stay O(1) and the
    scores are spread, not saturated."""
    cfg = Config.fromfile(str(config))
    model, _ = build_model(cfg)
    norms = [m for m in randomize_bn(model).modules() if isinstance(m, _BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    if size:
        images = torch.randn(8, 3, size, size)
    else:  # one batch (train-mode BN needs more than one value), cropped to a common size
        loader = Runner.build_dataloader(cfg.test_dataloader)
        images = [model.data_preprocessor(batch)['inputs'] for batch in loader]
        h, w = min(x.shape[2] for x in images), min(x.shape[3] for x in images)
        images = torch.cat([x[:, :, :h, :w] for x in images])
    with torch.no_grad():
        model.train()(images, mode='tensor')
        if hasattr(model, 'head'):  # the classifier: logits of std 2, a softmax to compare
            logits = model.eval()(images, mode='tensor')
            model.head.fc.weight /= logits.std() / 2
            model.head.fc.bias /= logits.std() / 2
    torch.save(dict(meta=dict(), state_dict=model.state_dict()), path)
    return path


def pytorch_test(config: Path, checkpoint: Path, work_dir: Path, batch_size) -> Runner:
    """mmengine's test loop on the config's test set; the runner keeps the model."""
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(dict(work_dir=str(work_dir), load_from=str(checkpoint)))
    if batch_size:
        cfg.test_dataloader.batch_size = batch_size
    runner = Runner.from_cfg(cfg)
    runner.metrics = runner.test()
    return runner


def nms_in_float64(boxes, scores, iou_threshold, **kwargs):
    """mmcv's NMS (float32 only) choosing the boxes; the values kept in float64."""
    _, keep = NMS(boxes.float(), scores.float(), iou_threshold, **kwargs)
    return torch.cat([boxes[keep], scores[keep, None]], 1), keep


MMCV_NMS = import_module('mmcv.ops.nms')  # the module (mmcv.ops.nms is the function)
NMS = MMCV_NMS.nms


def raw_outputs(model, task, inputs, samples, monkeypatch) -> list:
    """The PyTorch model's outputs in the graph's terms, per image, in the model's dtype:
    [class probabilities], [segmentation logits], or [boxes, scores, labels] in
    network-input pixels."""
    with torch.no_grad():
        if task == 'classification':
            return [[p] for p in model(inputs, mode='tensor').softmax(1)]
        if task == 'segmentation':
            return [[x] for x in model.encode_decode(inputs, [s.metainfo for s in samples])]
        with monkeypatch.context() as patch:
            if inputs.dtype == torch.float64:
                patch.setattr(MMCV_NMS, 'nms', nms_in_float64)  # batched_nms: eval('nms')
            results = model.predict(inputs, copy.deepcopy(samples), rescale=False)
    return [
        [r.pred_instances.bboxes, r.pred_instances.scores, r.pred_instances.labels] for r in results
    ]


def float32_runs(model, task, inputs, samples, monkeypatch) -> list:
    """Three float32 PyTorch runs of the train form: as mim test runs it, channels-last
    and without oneDNN. Other kernels, other roundings: in a deep random net their
    errors differ by 10x from image to image, so float32 noise is their spread."""
    runs = [
        raw_outputs(model, task, inputs, samples, monkeypatch),
        raw_outputs(
            model, task, inputs.contiguous(memory_format=torch.channels_last), samples, monkeypatch
        ),
    ]
    with torch.backends.mkldnn.flags(enabled=False):
        runs.append(raw_outputs(model, task, inputs, samples, monkeypatch))
    return runs


def typical_error(found, reference) -> float:
    """The 90th percentile of |found - reference| (mobileone_mm.fusion.output_check's measure:
    a few outputs of a deep float32 net jump under any rounding)."""
    diff = (found.double() - reference.double()).abs().flatten()
    return float(diff.kthvalue(max(1, math.ceil(0.9 * diff.numel()))).values)


def float32_noise(fp32s, fp64) -> float:
    """How far float32 PyTorch runs of the train form are from float64 (the largest
    of their typical errors), at least one float32 step of the largest value."""
    return max(
        [typical_error(fp32, fp64) for fp32 in fp32s]
        + [torch.finfo(torch.float32).eps * float(fp64.abs().max())]
    )


def assert_within_float32_noise(found, fp32s, fp64, what):
    """``found`` is no further from float64 than float32 PyTorch is, times FACTOR (the
    criterion of mobileone_mm.fusion.output_check), over all test images at once."""
    error, noise = typical_error(found, fp64), float32_noise(fp32s, fp64)
    assert error <= FP32_NOISE_FACTOR * noise, (
        f'{what}: {error:.3g} from float64, float32 PyTorch up to {noise:.3g}'
    )


def match(found, reference):
    """Per reference detection, the found one of the same label with the nearest box:
    (L-inf box distance, index into found)."""
    (boxes, _, labels), (ref_boxes, _, ref_labels) = found, reference
    distance = (ref_boxes[:, None].double() - boxes[None].double()).abs().amax(2)
    distance[ref_labels[:, None] != labels[None]] = float('inf')
    return distance.min(1)


def matched_detections(found, reference, image) -> list:
    """``found``'s boxes and scores in the order of the reference's detections (each
    matched by one of the same label; as many as the reference has)."""
    assert len(found[0]) == len(reference[0]) > 0, f'image {image}'
    distance, index = match(found, reference)
    assert torch.isfinite(distance).all(), f'image {image}: a label is missing'
    return [found[0][index], found[1][index]]


def compare(task, graph, fp32s, fp64):
    """The graph's outputs (per image, as raw_outputs gives them) against float64, over
    all test images; detections after matching, label maps where float64 is decided."""
    if task == 'detection':
        graph = [matched_detections(g, r, i) for i, (g, r) in enumerate(zip(graph, fp64))]
        fp32s = [
            [matched_detections(d, r, i) for i, (d, r) in enumerate(zip(run, fp64))]
            for run in fp32s
        ]
    names = {
        'classification': ['class scores'],
        'segmentation': ['logits'],
        'detection': ['boxes', 'scores'],
    }[task]
    for k, name in enumerate(names):
        joined = lambda outputs, k=k: torch.cat([o[k].flatten() for o in outputs])  # noqa: E731
        exact, runs = joined(fp64), [joined(run) for run in fp32s]
        if task != 'segmentation':
            assert_within_float32_noise(joined(graph), runs, exact, name)
            continue
        # the graph gives labels: they equal float64's argmax wherever its top two logits
        # are further apart than float32 noise (at least 90 % of the pixels)
        logits = torch.cat([o[0].flatten(1) for o in fp64], 1)
        labels = torch.cat([o[0].flatten() for o in graph])
        top2 = logits.topk(2, dim=0).values
        decided = top2[0] - top2[1] > 2 * FP32_NOISE_FACTOR * float32_noise(runs, exact)
        assert decided.float().mean() > 0.9
        assert torch.equal(labels[decided], logits.argmax(0)[decided])


def count_convs(path) -> int:
    return sum(node.op_type == 'Conv' for node in onnx.load(str(path)).graph.node)


def inference_convs(model) -> int:
    """Conv layers of the fused model that inference runs (not the auxiliary head)."""
    fused = reparameterize_model(copy.deepcopy(model))
    return sum(
        isinstance(m, torch.nn.Conv2d)
        for name, m in fused.named_modules()
        if not name.startswith('auxiliary_head')
    )


def deploy_config(name: str, tmp_path: Path, input_shape=None) -> str:
    path = DEPLOY / name
    if input_shape is None:
        return str(path)
    override = tmp_path / name
    override.write_text(f"_base_ = ['{path}']\nonnx_config = dict(input_shape={input_shape})\n")
    return str(override)


# The tiny ADE20K images keep their aspect ratio (no fixed input for a static graph); the
# static segmentation and dynamic classification configs only differ from these by their
# shape settings, checked in test_deploy_configs_say_what_their_names_say.
CASES = [
    ('detection', 'detection_onnxruntime_dynamic.py'),
    ('detection', 'detection_onnxruntime_static-320x320.py'),
    ('segmentation', 'segmentation_onnxruntime_dynamic.py'),
    ('classification', 'classification_onnxruntime_static.py'),
]


@pytest.mark.slow
@pytest.mark.parametrize('task,deploy_name', CASES)
def test_mmdeploy_onnxruntime_evaluates_like_pytorch(
    task, deploy_name, data_dir, tmp_path, monkeypatch
):
    config = MODELS[task]
    shape = TINY_STATIC_SHAPE.get(task) if 'static' in deploy_name else None
    deploy_cfg = deploy_config(deploy_name, tmp_path, shape)
    checkpoint = random_checkpoint(config, tmp_path / 'model.pth')

    onnx_file = export_end2end(
        deploy_cfg, str(config), str(checkpoint), str(tmp_path / 'end2end.onnx')
    )
    # A static graph takes one image at a time (mmdeploy's tools/test.py: --batch-size 1);
    # a dynamic one the config's batches.
    batch_size = 1 if 'static' in deploy_name else None
    torch_runner = pytorch_test(config, checkpoint, tmp_path / 'pytorch', batch_size)
    backend, backend_metrics = evaluate_backend(
        deploy_cfg, str(config), onnx_file, str(tmp_path / 'ort'), batch_size
    )

    # mmdeploy fused the backbone: one conv per block, as many as our fused model has
    assert count_convs(onnx_file) == inference_convs(torch_runner.model)

    key, tolerance = METRIC[task]
    assert abs(backend_metrics[key] - torch_runner.metrics[key]) <= tolerance

    # The graph's raw outputs on the same normalised test images, against float32 and
    # float64 runs of the train-form model that mim test evaluated.
    model32 = torch_runner.model.eval()
    model64 = copy.deepcopy(model32).double()
    graph, fp32s, fp64 = [], [[], [], []], []
    for batch in torch_runner.test_dataloader:
        data = model32.data_preprocessor(batch)
        inputs, samples = data['inputs'], data['data_samples']
        out = backend.wrapper({'input': inputs})
        if task == 'detection':
            graph += [
                [dets[keep, :4], dets[keep, 4], labels[keep]]  # drop padding rows
                for dets, labels in zip(out['dets'], out['labels'])
                for keep in [dets[:, 4] > 0]
            ]
        else:
            graph += [[x] for x in out['output']]
        for run, outputs in zip(fp32s, float32_runs(model32, task, inputs, samples, monkeypatch)):
            run += outputs
        fp64 += raw_outputs(model64, task, inputs.double(), samples, monkeypatch)
    compare(task, graph, fp32s, fp64)


@pytest.mark.slow
def test_mmdeploy_export_tool_tests_the_graph_it_wrote(data_dir, tmp_path, capsys):
    """tools/mmdeploy_export.py --test (one library call: export_and_test): the graph is
    written, then scored on the test set, and the metrics it prints as JSON are those of
    mmengine's test loop on the same checkpoint (the metric within 0.5 % absolute)."""
    config = MODELS['classification']
    checkpoint = random_checkpoint(config, tmp_path / 'model.pth')
    out = tmp_path / 'end2end.onnx'
    spec = importlib.util.spec_from_file_location('tool', REPO / 'tools/mmdeploy_export.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    deploy_cfg = str(DEPLOY / 'classification_onnxruntime_static.py')
    argv = [deploy_cfg, str(config), str(checkpoint), str(out), '--test']
    tool.main(argv + ['--work-dir', str(tmp_path / 'ort')])
    printed = capsys.readouterr().out.split(f'wrote {out}\n')
    assert len(printed) == 2 and out.is_file(), printed
    metrics = json.loads(printed[1])
    key, tolerance = METRIC['classification']
    torch_metrics = pytorch_test(config, checkpoint, tmp_path / 'pytorch', 1).metrics
    assert abs(metrics[key] - torch_metrics[key]) <= tolerance, (metrics, torch_metrics)


@pytest.mark.slow
def test_ssdlite_coco_static_320_graph(tmp_path):
    """The shipped static config on the full-size SSDLite-S0 COCO recipe: a fixed
    1x3x320x320 input, NMS in the graph, the fused backbone, and a run in ONNX Runtime."""
    config = tmp_path / 'ssdlite.py'
    config.write_text(  # random init instead of the ImageNet download
        f"_base_ = ['{REPO}/configs/detection/ssdlite_mobileone-s0_8xb24-600e_coco.py']\n"
        'model = dict(backbone=dict(init_cfg=None))\n'
    )
    checkpoint = random_checkpoint(config, tmp_path / 'model.pth', 320)
    deploy_cfg = str(DEPLOY / 'detection_onnxruntime_static-320x320.py')
    onnx_file = export_end2end(
        deploy_cfg, str(config), str(checkpoint), str(tmp_path / 'end2end.onnx')
    )
    graph = onnx.load(onnx_file).graph
    dims = lambda value: [d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa
    assert [(v.name, dims(v)) for v in graph.input] == [('input', [1, 3, 320, 320])]
    assert [v.name for v in graph.output] == ['dets', 'labels']
    assert any(node.op_type == 'NonMaxSuppression' for node in graph.node)
    model, _ = build_model(Config.fromfile(str(config)))
    assert count_convs(onnx_file) == inference_convs(model)

    _, backend = build_backend_model(deploy_cfg, str(config), onnx_file)
    out = backend.wrapper({'input': torch.rand(1, 3, 320, 320)})
    assert out['dets'].shape[0] == 1 and out['dets'].shape[2] == 5
    assert 0 < out['dets'].shape[1] <= 200 and out['labels'].shape == out['dets'].shape[:2]


def test_compat_layer_changes_torch_only_inside(monkeypatch):
    calls = []

    def spy(*args, dynamo=True, **kwargs):
        calls.append(dynamo)

    spy.__signature__ = inspect.signature(torch.onnx.export)
    monkeypatch.setattr(torch.onnx, 'export', spy)
    with torchscript_onnx_export():
        torch.onnx.export(None, ())
        torch.onnx.export(None, (), dynamo=True)  # an explicit choice is kept
    torch.onnx.export(None, ())
    assert calls == [False, True, True]
    assert torch.onnx.export is spy

    with pytest.raises(RuntimeError), torchscript_onnx_export():
        raise RuntimeError('export failed')
    assert torch.onnx.export is spy


@pytest.mark.slow
def test_importing_the_package_leaves_torch_onnx_alone():
    """`import mobileone_mm` and the compat module must not patch torch nor import
    mmdeploy (a fresh interpreter)."""
    code = (
        'import torch; e = torch.onnx.export; import mobileone_mm, '
        'mobileone_mm.runtimes.mmdeploy_route; assert torch.onnx.export is e; '
        'import sys; assert "mmdeploy" not in sys.modules'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


def test_deploy_configs_say_what_their_names_say():
    """Every config in configs/mmdeploy loads with mmdeploy's loader; a ``static-WxH``
    one fixes that input shape, a ``dynamic`` one has dynamic batch (and size) axes, and
    the codebase / backend are the ones the name gives."""
    from mmdeploy.utils import (
        get_backend,
        get_codebase,
        get_dynamic_axes,
        get_input_shape,
        load_config,
    )

    codebases = {'detection': 'mmdet', 'segmentation': 'mmseg', 'classification': 'mmpretrain'}
    names = sorted(p.name for p in DEPLOY.glob('*.py'))
    assert len(names) == 6
    for name in names:
        cfg = load_config(str(DEPLOY / name))[0]
        task, backend, shape = name[:-3].split('_')
        assert get_codebase(cfg).value == codebases[task] and get_backend(cfg).value == backend
        axes = get_dynamic_axes(cfg) or {}
        if shape.startswith('static'):
            size = shape.split('-')[1:]
            assert (
                get_input_shape(cfg) == ([int(v) for v in size[0].split('x')] if size else None)
                and not axes
            ), name
        else:
            assert shape == 'dynamic' and get_input_shape(cfg) is None, name
            assert axes['input'][0] == 'batch', name
