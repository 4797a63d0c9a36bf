"""Core ML artefacts (.mlpackage, ML Program) of the fused classifier, segmentor and SSDLite
detector, checked by their structure (Core ML runs only on Apple systems): input and
output names and shapes, the normalisation constants, the class names, the convolutions
against the fused model's. Broken artefacts (a convolution lost, no normalisation,
wrong class names) must fail the check."""

import os

import pytest
import torch
import torch.nn as nn

pytest.importorskip(
    'coremltools', reason="the coreml extra is not installed (pip install 'mobileone-mm[coreml]')"
)

from helpers import REPO, TINY_CONFIGS

from mobileone_mm.devkit.analysis import randomize_bn  # noqa: E402
from mobileone_mm.loading.config import ExportError, build_model, load_config
from mobileone_mm.models.reparam import reparameterize_model  # noqa: E402
from mobileone_mm.runtimes import coreml as runtime  # noqa: E402
from mobileone_mm.runtimes.wrappers import WRAPPERS

CONFIGS = TINY_CONFIGS
SHAPE = (96, 128)  # (H, W)
EXAMPLE = torch.zeros(1, 3, *SHAPE)
CLASSES = ['disk', 'square', 'triangle', 'star']


def fused_model(task: str) -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model(load_config(str(REPO / CONFIGS[task])))
    randomize_bn(model)
    return reparameterize_model(model.eval())


def export(model, task, path, precision='fp16', **metadata):
    wrapper = WRAPPERS[task](model, SHAPE).eval()
    return runtime.export(
        wrapper, EXAMPLE, str(path), dict(task=task, **metadata), precision=precision
    )


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    model = fused_model('classification')
    path = tmp_path_factory.mktemp('coreml') / 'classifier.mlpackage'
    export(model, 'classification', path, classes=CLASSES)
    return model, str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    'task,precision', [('classification', 'fp32'), ('segmentation', 'fp16'), ('detection', 'fp16')]
)
def test_structure_of_each_task(task, precision, tmp_path):
    model = fused_model(task)
    classes = CLASSES if task != 'segmentation' else None
    path = tmp_path / 'model.mlpackage'
    assert export(model, task, path, classes=classes, precision=precision) == [str(path)]
    assert os.listdir(tmp_path) == ['model.mlpackage']  # no temp folder left
    report = runtime.check_structure(str(path), model, EXAMPLE, classes=classes)
    assert report['passed'], report['problems']
    names = WRAPPERS[task].output_names
    assert [name for name, _ in report['outputs']] == names
    assert report['convs'] == report['torch_convs'] > 40
    assert report['metadata']['precision'] == precision
    assert report['metadata']['task'] == task
    assert report['metadata']['input_shape'] == list(SHAPE)
    assert report['metadata']['classes'] == classes


@pytest.mark.slow
def test_fp16_classifier_passes_and_wrong_labels_fail(classifier):
    model, path = classifier
    report = runtime.check_structure(path, model, EXAMPLE, classes=CLASSES)
    assert report['passed'], report['problems']
    assert report['inputs'] == [('image', [1, 3, *SHAPE])]
    assert report['outputs'] == [('logits', [1, 4])]
    wrong = runtime.check_structure(path, model, EXAMPLE, classes=CLASSES[::-1])
    assert not wrong['passed']
    assert wrong['problems'] == [f'class names {CLASSES} in the metadata, expected {CLASSES[::-1]}']


@pytest.mark.slow
def test_broken_artefacts_fail(classifier, tmp_path):
    """A convolution dropped, the normalisation left out, a class name missing, and a
    fused model of another shape: each is reported."""
    model, _ = classifier
    broken = fused_model('classification')
    wrapper = WRAPPERS['classification'](broken, SHAPE).eval()
    block = broken.backbone.stage1[1]  # a 1x1 conv 48 -> 48: the shapes stay
    assert block.branch_reparam.kernel_size == (1, 1)
    block.branch_reparam = nn.Identity()
    wrapper.normalize = nn.Identity()
    path = tmp_path / 'broken.mlpackage'
    runtime.export(wrapper, EXAMPLE, str(path), dict(task='classification', classes=CLASSES[:3]))
    report = runtime.check_structure(str(path), model, EXAMPLE)
    problems = ' | '.join(report['problems'])
    assert not report['passed']
    assert '42 convolutions in the program, the fused model runs 43' in problems
    assert 'the normalisation mean' in problems and 'the normalisation std' in problems
    assert '3 class names in the metadata for a model of 4 classes' in problems
    other = runtime.check_structure(str(path), model, torch.zeros(1, 3, 64, 64))
    assert any(p.startswith("inputs are [('image', [1, 3, 96, 128])]") for p in other['problems'])


class Unconvertible(nn.Module):
    """An op coremltools has no conversion for."""

    def forward(self, x):
        return torch.special.erfcx(x)


def test_failed_export_leaves_nothing(tmp_path):
    model = fused_model('classification')
    wrapper = WRAPPERS['classification'](model, SHAPE).eval()
    model.backbone.stage0.act = Unconvertible()
    with pytest.raises(
        ExportError,
        match=r'^coreml: coremltools could not convert the model '
        r'\(operator special_erfcx, module model\.backbone\.stage0\.act\)',
    ):
        runtime.export(wrapper, EXAMPLE, str(tmp_path / 'm.mlpackage'), dict(task='x'))
    with pytest.raises(ValueError, match="Core ML exports precision fp32 or fp16, not 'int8'"):
        runtime.export(wrapper, EXAMPLE, str(tmp_path / 'm.mlpackage'), {}, precision='int8')
    assert os.listdir(tmp_path) == []
