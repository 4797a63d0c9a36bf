"""ncnn artefacts (pnnx) of the fused classifier, segmentor and SSDLite detector, judged by
the project's one output check against the float64 train form (fusion/output_check.py), as
verify_onnx judges an ONNX graph; the sidecar metadata; the refusals.

Tiny S0 configs, random weights and BN affine values, BN statistics measured on the
inputs as training would leave them (O(1) activations, as a trained model has), a
non-square input so that a swap of height and width shows."""

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

pytest.importorskip(
    'ncnn', reason="the ncnn extra is not installed (pip install 'mobileone-mm[ncnn]')"
)
pytest.importorskip(
    'pnnx', reason="the ncnn extra is not installed (pip install 'mobileone-mm[ncnn]')"
)

from helpers import REPO, TINY_CONFIGS

from mobileone_mm.devkit.analysis import randomize_bn  # noqa: E402
from mobileone_mm.fusion.output_check import Reference, describe
from mobileone_mm.loading.config import ExportError, build_model, load_config, task_of
from mobileone_mm.models.reparam import reparameterize_model  # noqa: E402
from mobileone_mm.runtimes import ncnn as runtime  # noqa: E402
from mobileone_mm.runtimes.artefact_check import _float_outputs
from mobileone_mm.runtimes.wrappers import WRAPPERS

CONFIGS = TINY_CONFIGS
SHAPE = (96, 128)  # (H, W)


def images(count=2, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (1, 3, *SHAPE)).astype(np.float32) for _ in range(count)]


def realistic_model(task: str) -> nn.Module:
    """A random tiny model (train form, eval mode) whose BN statistics are measured on
    random images, as training would leave them."""
    torch.manual_seed(0)
    model, _ = build_model(load_config(str(REPO / CONFIGS[task])))
    model.init_weights()
    norms = [m for m in randomize_bn(model).modules() if isinstance(m, _BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    wrapper = WRAPPERS[task](model.eval(), SHAPE)
    batch = torch.from_numpy(np.concatenate(images(4, seed=1)))
    with torch.no_grad():
        model.train()(wrapper.normalize(batch), mode='tensor')
    return model.eval()


def fused_wrapper(model: nn.Module) -> nn.Module:
    return WRAPPERS[task_of(model)](reparameterize_model(copy.deepcopy(model)), SHAPE).eval()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Per task: (train-form model, paths written, metadata given)."""
    folder = tmp_path_factory.mktemp('ncnn')
    done = {}
    for task in CONFIGS:
        model = realistic_model(task)
        metadata = dict(
            task=task,
            input_shape=list(SHAPE),
            classes=['a', 'b'],
            preprocess=[dict(op='resize', size=[SHAPE[1], SHAPE[0]])],
        )
        paths = runtime.export(
            fused_wrapper(model),
            torch.zeros(1, 3, *SHAPE),
            str(folder / f'{task}.ncnn.param'),
            metadata,
        )
        done[task] = model, paths, metadata
    return done


@pytest.mark.slow
@pytest.mark.parametrize('task', list(CONFIGS))
def test_fp32_matches_the_float64_train_form(exported, task):
    model, paths, _ = exported[task]
    wrapper = WRAPPERS[task](model, SHAPE).eval()
    inputs = images()
    reference = Reference(wrapper, [torch.from_numpy(x) for x in inputs], _float_outputs)
    runner = runtime.load(paths[0], threads=1)
    outputs = [runner(x) for x in inputs]
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(inputs[0]))
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert [(o.shape, o.dtype) for o in outputs[0]] == [
        (tuple(e.shape), e.numpy().dtype) for e in expected
    ]
    check = reference.judge(
        [[torch.from_numpy(a) for a in out if a.dtype.kind == 'f'] for out in outputs]
    )
    print(describe(check, f'ncnn {task}'))
    assert check['passed'], describe(check, f'ncnn {task}')
    if task == 'segmentation':  # the runner's labels: argmax of ncnn's logits
        for out, float32 in zip(outputs, reference.float32):
            assert (out[1] == float32[0].argmax(1).numpy()).mean() >= 0.999


@pytest.mark.slow
def test_metadata_round_trip_and_only_the_artefact_on_disk(exported):
    _, paths, metadata = exported['detection']
    folder = os.path.dirname(paths[0])
    assert sorted(os.listdir(folder)) == sorted(
        os.path.basename(p) for task in CONFIGS for p in exported[task][1]
    )
    assert [os.path.basename(p) for p in paths] == [
        'detection.ncnn.param',
        'detection.ncnn.bin',
        'detection.ncnn.param.json',
    ]
    runner = runtime.load(paths[0])
    assert {k: runner.metadata[k] for k in metadata} == metadata
    assert runner.metadata['outputs'] == ['boxes', 'scores']
    assert runner.input_shape == SHAPE
    with pytest.raises(
        ValueError,
        match=r'takes \(N, 3, 96, 128\) float32 BGR images; got '
        r'shape \(1, 3, 128, 96\)',
    ):
        runner(np.zeros((1, 3, 128, 96), np.float32))


class Erfinv(nn.Module):
    """An activation ncnn has no layer for."""

    def forward(self, x):
        return torch.erfinv(x.tanh() * 0.5)


def test_unsupported_operator_names_runtime_operator_and_layer(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model(load_config(str(REPO / CONFIGS['classification'])))
    wrapper = WRAPPERS['classification'](reparameterize_model(model.eval()), SHAPE).eval()
    wrapper.model.backbone.stage2[3].act = Erfinv()
    out = tmp_path / 'model.ncnn.param'
    with pytest.raises(ExportError) as error:
        runtime.export(wrapper, torch.zeros(1, 3, *SHAPE), str(out), dict(task='x'))
    message = str(error.value)
    assert message.startswith('ncnn cannot run operator aten::erfinv')
    assert 'module model.backbone.stage2.3.act' in message
    assert os.listdir(tmp_path) == []  # nothing left by the failed export


def test_refuses_int8_and_a_wrong_file_name(tmp_path):
    with pytest.raises(ValueError, match="ncnn exports precision fp32, not 'int8'"):
        runtime.export(
            nn.Identity(),
            torch.zeros(1, 3, 8, 8),
            str(tmp_path / 'm.ncnn.param'),
            {},
            precision='int8',
        )
    with pytest.raises(ValueError, match=r'use \.ncnn\.param'):
        runtime.export(nn.Identity(), torch.zeros(1, 3, 8, 8), str(tmp_path / 'm.param'), {})
    assert os.listdir(tmp_path) == []


def test_a_photo_transposed_as_predict_gives_it_matches_the_float64_train_form(tmp_path):
    """The input predict() hands a runner is the preprocessed photo transposed HWC -> CHW:
    a strided array, which the runner copies to a contiguous one for ncnn.Mat. ncnn.Mat
    borrows that copy's memory without a reference: freed before the outputs are
    extracted, ncnn read reused memory (random inputs, contiguous, never showed it)."""
    from photos import photo_paths

    from mobileone_mm.predict.photos import preprocess, read_photo

    model = realistic_model('classification')
    out = str(tmp_path / 'classification.ncnn.param')
    runtime.export(fused_wrapper(model), torch.zeros(1, 3, *SHAPE), out, {})
    photo = read_photo(photo_paths(tmp_path / 'photos')['landscape_rgb'])
    image, _ = preprocess(photo, None, SHAPE)  # resized to the export size
    image = image.transpose(2, 0, 1)[None].astype(np.float32)  # as predict() gives it
    assert image.shape == (1, 3, *SHAPE) and not image.flags['C_CONTIGUOUS']
    wrapper = WRAPPERS['classification'](model, SHAPE).eval()
    reference = Reference(wrapper, [torch.from_numpy(image)], _float_outputs)
    check = reference.judge([[torch.from_numpy(o) for o in runtime.load(out, threads=1)(image)]])
    assert check['passed'], describe(check, 'ncnn classification, photo input')
