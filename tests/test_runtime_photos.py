"""Every runtime that runs here on real photos, held to the codebases themselves, as
tests/test_onnx_photos.py holds the ONNX graph: the artefact written by
``export_to_runtime`` (tools/export.py), loaded by ``load_runner`` (tools/infer.py) and
run by the shared ``predict`` must give what mmdet's DetInferencer, mmseg's
MMSegInferencer and mmpretrain's ImageClassificationInferencer give for the same
checkpoint: boxes within a pixel and the same labels, label maps on >= 99.9 % of
pixels, the same top-5.

The artefacts here have a fixed input size (not every runtime takes a free one), so the
segmentor's test pipeline is a fixed non-square resize; the detector and classifier
keep test_onnx_photos.py's non-square pipelines. A runtime is one line of ``RUNTIMES``;
a runtime whose extra is not installed (or whose module is not in this version) is
skipped with the reason naming the extra.
"""

import pytest
from photos import photo_paths
from test_onnx_photos import (
    BASES,
    CLASSES,
    OVERRIDES,
    PHOTOS,
    assert_class_scores_match,
    assert_detections_match,
    assert_label_maps_match,
    expected_class_scores,
    expected_detections,
    expected_label_maps,
    make_task,
)

from mobileone_mm.predict.photos import read_photo
from mobileone_mm.predict.prediction import predict
from mobileone_mm.runtimes import RUNTIMES as TABLE
from mobileone_mm.runtimes import export_to_runtime, install_hint, load_runner

RUNTIMES = ['onnxruntime', 'openvino', 'executorch', 'ncnn']
FIXED_SEGMENTATION = """
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 64), keep_ratio=False),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
"""
INPUT_SIZE = {
    'detection': (128, 96),
    'segmentation': (96, 64),
    'classification': (64, 48),
}  # (w, h)


def require(runtime: str):
    """Skip unless the runtime's module and package(s) are here; the reason names the
    extra that installs them."""
    entry = TABLE[runtime]
    module = pytest.importorskip(
        entry.module,
        reason=f'the {runtime} runtime module is not '
        f'in this version of mobileone-mm '
        f'({install_hint(runtime)} once it is)',
    )
    for package in module.PACKAGES:
        pytest.importorskip(package, reason=f'{runtime} is not installed: {install_hint(runtime)}')


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    paths = photo_paths(tmp_path_factory.mktemp('photos'))
    return {name: paths[name] for name in PHOTOS}


@pytest.fixture(scope='module')
def models(tmp_path_factory, photos):
    """task -> (config, checkpoint) of the random tiny models."""
    folder = tmp_path_factory.mktemp('models')
    overrides = dict(OVERRIDES, segmentation=FIXED_SEGMENTATION)
    return {task: make_task(task, folder, photos, overrides[task])[:2] for task in BASES}


@pytest.fixture(scope='module')
def expected(models, photos):
    """task -> photo name -> the codebase inferencer's result (computed once)."""
    inferencers = dict(
        detection=expected_detections,
        segmentation=expected_label_maps,
        classification=expected_class_scores,
    )
    return {task: inferencers[task](*models[task], photos) for task in BASES}


@pytest.mark.parametrize('task', list(BASES))
@pytest.mark.parametrize('runtime', RUNTIMES)
def test_runtime_predictions_match_the_codebase_inferencer(
    runtime, task, models, expected, photos, tmp_path
):
    require(runtime)
    config, checkpoint = models[task]
    out = tmp_path / f'{task}{TABLE[runtime].suffix}'
    export_to_runtime(config, checkpoint, str(out), runtime)
    runner = load_runner(str(out))
    meta = runner.metadata
    width, height = INPUT_SIZE[task]
    assert meta['task'] == task and meta['input_shape'] == [height, width]
    assert runner.input_shape == (height, width)
    assert meta['classes'] == CLASSES.get(task, meta['classes'])
    for name, path in photos.items():
        found = predict(runner, meta, read_photo(path))
        assert found.frame.input_size == (width, height), name
        if task == 'detection':
            assert_detections_match(found, expected[task][name], path, (width, height), name)
        elif task == 'segmentation':
            assert_label_maps_match(found, expected[task][name], path, name)
        else:
            assert_class_scores_match(found.scores, expected[task][name], name)
