"""The ExecuTorch runtime (mobileone_mm/runtimes/executorch.py): ``.pte`` programs with the
XNNPACK delegate, run by ExecuTorch's own Python runtime and held to the float64 train
form by the project's one output check (fp32) or to float32 by the int8 check, on the
tiny detector / segmentor / classifier with random weights and realistic BN statistics.
"""

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip(
    'executorch',
    reason="the executorch extra is not installed: pip install 'mobileone-mm[executorch]'",
)
pytest.importorskip(
    'torchao',
    reason="the executorch extra is not installed: pip install 'mobileone-mm[executorch]'",
)

from helpers import REPO, TINY_CONFIGS
from photos import photo_paths  # noqa: E402  (tests/ on the path: conftest.py)

from mobileone_mm.fusion.output_check import Reference, describe
from mobileone_mm.loading.config import ExportError, build_model, load_config
from mobileone_mm.models.reparam import reparameterize_model  # noqa: E402
from mobileone_mm.predict.photos import PredictError, read_image
from mobileone_mm.runtimes import executorch as runtime  # noqa: E402
from mobileone_mm.runtimes.artefact_check import _float_outputs
from mobileone_mm.runtimes.int8_check import judge_int8
from mobileone_mm.runtimes.onnx_graphs import build_onnx
from mobileone_mm.runtimes.onnxruntime_int8 import QuantizeError
from mobileone_mm.runtimes.wrappers import WRAPPERS

CONFIGS = TINY_CONFIGS
SHAPE = (64, 96)  # (H, W): non-square, so that a swap of height and width shows


# ------------------------------------------------------------ a small model, fast
class Head(nn.Module):
    def __init__(self, op=None):
        super().__init__()
        self.conv_seg, self.op = nn.Conv2d(8, 5, 1), op

    def forward(self, x):
        return self.conv_seg(x if self.op is None else self.op(x))


class SmallSegmentor(nn.Module):
    """What an export wrapper looks like to the runtime: BGR 0..255 in, the
    normalisation inside, outputs ``logits`` and ``labels`` (runtimes/wrappers.py)."""

    output_names = ['logits', 'labels']

    def __init__(self, op=None):
        super().__init__()
        self.register_buffer('mean', torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = Head(op)

    def forward(self, img):
        logits = self.head(self.conv((img[:, [2, 1, 0]] - self.mean) / 58.0).relu())
        return logits, logits.argmax(1)


def small_metadata():
    return dict(
        task='segmentation',
        input_shape=list(SHAPE),
        dynamic=False,
        classes=['sky', 'road', 'tree', 'car', 'ünïcode'],
        align_corners=False,
        preprocess=[
            dict(
                op='resize',
                size=[96, 64],
                keep_ratio=False,
                interpolation='bilinear',
                backend='cv2',
            )
        ],
        config='configs/x.py',
        notes=[],
        score_thr=0.3,
    )


def test_program_keeps_metadata_outputs_and_input_shape(tmp_path):
    torch.manual_seed(0)
    model = SmallSegmentor().eval()
    example = torch.rand(1, 3, *SHAPE) * 255
    out = tmp_path / 'model.pte'
    assert runtime.export(model, example, str(out), small_metadata()) == [str(out)]
    assert sorted(os.listdir(tmp_path)) == ['model.pte']  # one file: metadata inside
    runner = runtime.load(str(out))
    assert runner.metadata == small_metadata()
    assert runner.input_shape == SHAPE
    image = np.random.RandomState(0).randint(0, 256, (1, 3, *SHAPE)).astype(np.float32)
    logits, labels = runner(image)
    with torch.no_grad():
        expected = model(torch.from_numpy(image))
    np.testing.assert_allclose(logits, expected[0].numpy(), rtol=1e-5, atol=1e-4)
    assert labels.dtype == np.int64 and (labels == expected[1].numpy()).mean() > 0.999
    with pytest.raises(
        PredictError,
        match=r'takes a float32 image \(1, 3, 64, 96\).*'
        r'\(1, 3, 96, 64\)',
    ):
        runner(image.transpose(0, 1, 3, 2))
    # one XNNPACK thread pool per process: programs loaded on it break when it is replaced
    from executorch.extension.pybindings import portable_lib

    threads = portable_lib._threadpool_get_thread_count()
    assert runtime.load(str(out), threads=threads)(image)[1].shape == (1, *SHAPE)
    with pytest.raises(
        PredictError,
        match=f'one thread pool, of {threads} threads.*{threads + 1} threads were asked for',
    ):
        runtime.load(str(out), threads=threads + 1)
    np.testing.assert_array_equal(runner(image)[0], logits)  # still runs


def test_foreign_and_broken_programs_are_refused(tmp_path):
    from executorch.exir import to_edge_transform_and_lower

    example = torch.rand(1, 3, *SHAPE)
    plain = tmp_path / 'plain.pte'  # an ExecuTorch program not exported by us
    plain.write_bytes(
        to_edge_transform_and_lower(torch.export.export(SmallSegmentor().eval(), (example,)))
        .to_executorch()
        .buffer
    )
    with pytest.raises(PredictError, match='no mobileone-mm metadata'):
        runtime.load(str(plain))
    junk = tmp_path / 'junk.pte'
    junk.write_bytes(b'not a program' * 10)
    with pytest.raises(PredictError, match='not a readable ExecuTorch program'):
        runtime.load(str(junk))
    classifier = tmp_path / 'cls.pte'  # a segmentor's two outputs, labelled otherwise
    runtime.export(
        SmallSegmentor().eval(),
        example,
        str(classifier),
        dict(small_metadata(), task='classification'),
    )
    with pytest.raises(PredictError, match="2 outputs for task 'classification'"):
        runtime.load(str(classifier))


@pytest.mark.parametrize(
    'op, operator, reason',
    [
        (lambda x: x.sort(1)[0], 'aten::sort.values', 'no kernel for it'),
        (lambda x: x.cumprod(1), 'aten.cumprod.default', 'not in the Core ATen operator set'),
    ],
)
def test_operator_the_runtime_cannot_take_names_it_and_its_layer(tmp_path, op, operator, reason):
    out = tmp_path / 'sub' / 'model.pte'
    with pytest.raises(
        ExportError,
        match=rf'^The executorch runtime cannot take the '
        rf"operator {operator} in layer 'head' \({reason}",
    ):
        runtime.export(
            SmallSegmentor(op).eval(), torch.rand(1, 3, *SHAPE), str(out), small_metadata()
        )
    assert not out.parent.exists() or os.listdir(out.parent) == []  # nothing left


def test_bad_precision_and_calibration_are_refused(tmp_path):
    model, example = SmallSegmentor().eval(), torch.rand(1, 3, *SHAPE)
    out = tmp_path / 'model.pte'
    with pytest.raises(ExportError, match="takes precision fp32 or int8, not 'fp16'"):
        runtime.export(model, example, str(out), small_metadata(), precision='fp16')
    with pytest.raises(QuantizeError, match='No calibration images'):
        runtime.export(model, example, str(out), small_metadata(), precision='int8')
    with pytest.raises(QuantizeError, match=r'shape \(1, 3, 32, 32\)'):
        runtime.export(
            model,
            example,
            str(out),
            small_metadata(),
            precision='int8',
            calibration=[np.zeros((1, 3, 32, 32), np.float32)],
        )
    assert os.listdir(tmp_path) == []


# ------------------------------------------- the tiny models of each codebase, slow
# Operators XNNPACK does not take, left to ExecuTorch's portable kernels: the input's
# BGR->RGB index (no gather in XNNPACK), the detector's anchor repeat and the slices of
# its box decoding, the segmentor's argmax.
PORTABLE = {
    'classification': {'aten_index_tensor', 'dim_order_ops__clone_dim_order_default'},
    'segmentation': {
        'aten_index_tensor',
        'dim_order_ops__clone_dim_order_default',
        'aten_argmax_default',
    },
    'detection': {
        'aten_index_tensor',
        'dim_order_ops__clone_dim_order_default',
        'aten_repeat_default',
        'aten_slice_copy_tensor',
        'aten_slice_scatter_default',
    },
}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """(1, 3, H, W) float32 BGR images as the programs take them: the real photos of
    tests/photos.py, and tiny-data scenes of the train split (calibration) and the val
    split, each read from a JPEG and resized as tools/onnx_infer.py does."""
    from PIL import Image

    from mobileone_mm.devkit.scenes import render_split

    folder = tmp_path_factory.mktemp('images')
    found = dict(photos=[read_image(p, SHAPE) for p in photo_paths(folder).values()])
    for split, count in [('train', 16), ('val', 4)]:
        found[split] = []
        for index in range(count):
            path = folder / f'{split}{index}.jpg'
            Image.fromarray(render_split(0, split, index, SHAPE).image).save(path)
            found[split].append(read_image(str(path), SHAPE))
    return found


def tiny_model(task, randomize_bn):
    """The train form of a tiny model of ``task``: random weights, realistic BN."""
    torch.manual_seed(0)
    model, _ = build_model(load_config(str(REPO / CONFIGS[task])))
    model.init_weights()
    return randomize_bn(model).eval()


def export_wrapper(model):
    """(the export wrapper of a fused copy of ``model``, the metadata tools/export_onnx.py
    stores for it: task, input shape, detection post-process settings)."""
    fused = reparameterize_model(copy.deepcopy(model))
    _, info = build_onnx(copy.deepcopy(fused), SHAPE, metadata=dict(classes=[]))
    task = info['task']
    return WRAPPERS[task](fused, SHAPE).eval(), info['metadata']


@pytest.mark.slow
@pytest.mark.parametrize('task', list(CONFIGS))
def test_fp32_program_matches_the_float64_train_form(task, images, tmp_path, randomize_bn):
    """The project's one output check (fusion/output_check.py) of the program's outputs in
    ExecuTorch against the float64 train form, on real photos and val images; every
    convolution runs in XNNPACK."""
    model = tiny_model(task, randomize_bn)
    wrapper, metadata = export_wrapper(model)
    program, delegation = runtime.build_program(wrapper, torch.zeros(1, 3, *SHAPE), metadata)
    (tmp_path / 'model.pte').write_bytes(program)
    runner = runtime.load(str(tmp_path / 'model.pte'))
    assert runner.metadata == metadata and runner.input_shape == SHAPE
    inputs = images['photos'][:3] + images['val'][:2]
    reference = Reference(
        WRAPPERS[task](model, SHAPE).eval(), [torch.from_numpy(x) for x in inputs], _float_outputs
    )
    outputs = [runner(x) for x in inputs]
    check = reference.judge(
        [[torch.from_numpy(a) for a in out if a.dtype.kind == 'f'] for out in outputs]
    )
    assert check['passed'], describe(check, 'the ExecuTorch program')
    if task == 'segmentation':
        assert all((out[1] == out[0].argmax(1)).all() for out in outputs)
    assert set(delegation['portable']) == PORTABLE[task], delegation
    assert delegation['delegated'] > 50 and delegation['partitions'] >= 1


@pytest.mark.slow
@pytest.mark.parametrize('task', list(CONFIGS))
def test_int8_program_keeps_float32_decisions_on_photos_and_val_images(
    task, images, tmp_path, randomize_bn
):
    """int8 (PT2E, XNNPACKQuantizer) calibrated on 16 train-split images, judged by the
    int8 check (runtimes/int8_check.py: cosine and task decisions) against the float32
    wrapper on the real photos and val images."""
    from mobileone_mm.fusion.flat_outputs import flatten
    from mobileone_mm.runtimes.evaluate import one_batch

    wrapper, metadata = export_wrapper(tiny_model(task, randomize_bn))
    out = str(tmp_path / 'int8.pte')
    assert runtime.export(
        wrapper, torch.zeros(1, 3, *SHAPE), out, metadata, 'int8', images['train']
    ) == [out]
    runner = runtime.load(out)
    inputs = images['photos'] + images['val']
    with torch.no_grad():
        fp32 = [[t.numpy() for t in flatten(wrapper(torch.from_numpy(x)))[0]] for x in inputs]
    check = judge_int8(one_batch(fp32), one_batch([runner(x) for x in inputs]), task, metadata)
    assert check['passed'], check
    assert check['agreement'] is not None
