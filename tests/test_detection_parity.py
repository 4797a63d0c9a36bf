"""The detection post-process of an exported detector is its config's, held to mmdet:

* every detection the exported graph gives through ``predict.prediction`` (tools/onnx_infer.py)
  is one of mmdet's own DetInferencer, and no other: same count, same labels, boxes within
  a pixel, scores close, at the config's own ``test_cfg`` (no display threshold), with
  values chosen so that each setting changes the answer on these photos (score threshold,
  per-level top-k ``nms_pre``, ``min_bbox_size``, NMS IoU, ``max_per_img``); through a
  fixed graph whose height and width differ, on photos of other aspect ratios, following
  the test pipeline's steps and, for graphs without them, resized to the graph;
* every post-process value the artefact's metadata carries is the config's, read from the
  Config file and the built head, for every detection config in configs/detection.

SSDLite (anchors, deltas, softmax), RTMDet (points, distances, sigmoid) and RetinaNet
(anchors, deltas, sigmoid); random models made to behave like trained ones on the photos
(tests/detectors.py), real photos (tests/photos.py).
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from detectors import small_model  # noqa: E402  (tests/ on the path: conftest.py)
from helpers import REPO
from mmengine.config import Config
from photos import photo_paths  # noqa: E402

from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.predict.detections import postprocess_detections
from mobileone_mm.predict.metadata import export_metadata, fixed_input_shape, preprocess_steps
from mobileone_mm.predict.photos import preprocess, read_photo
from mobileone_mm.predict.prediction import graph_input_shape, predict
from mobileone_mm.runtimes.onnx_graphs import build_onnx, export_onnx, load_onnx

CONFIGS = REPO / 'configs' / 'detection'
CLASSES = ('disk', 'square', 'triangle', 'star')
GRAPH = (96, 160)  # (H, W) of the fixed graph: wider than high, unlike some photos
# detector -> (config, test_cfg): values at which each setting changes some photo's
# detections (test_each_post_process_setting_changes_the_answer): a score threshold among
# the kept scores, a top-k below the largest levels' count above it, a box size and an
# IoU that drop boxes, max_per_img below what NMS keeps on some photos
DETECTORS = {
    'ssdlite': (
        'ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
        dict(score_thr=0.8, nms_pre=20, min_bbox_size=24, iou_threshold=0.3, max_per_img=25),
    ),
    'rtmdet': (
        'rtmdet_mobileone-s0_1xb8-20e_tiny-coco.py',
        dict(score_thr=0.2, nms_pre=20, min_bbox_size=12, iou_threshold=0.5, max_per_img=15),
    ),
    'retinanet': (
        'retinanet_mobileone-s1_fpn_1x_coco.py',
        dict(score_thr=0.3, nms_pre=20, min_bbox_size=12, iou_threshold=0.5, max_per_img=15),
    ),
}
# one step of each setting: off by one step (up or down), each changes some photo's answer
STEPS = dict(score_thr=0.05, nms_pre=10, min_bbox_size=4, iou_threshold=0.1, max_per_img=5)
# The float32 scores of these random networks differ from their float64 ones by up to
# 2e-3 on these photos (onnxruntime's and PyTorch's alike): scores are held to 5e-3.
SCORE_ATOL = 5e-3


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    return photo_paths(tmp_path_factory.mktemp('photos'))


def write_config(folder: Path, detector: str) -> Path:
    """The detector's config with 4 classes, the test_cfg of DETECTORS and a test pipeline
    that stretches photos to GRAPH (what the graph and DetInferencer both take)."""
    base, test_cfg = DETECTORS[detector]
    settings = {k: v for k, v in test_cfg.items() if k != 'iou_threshold'}
    config = folder / f'{detector}.py'
    config.write_text(f"""_base_ = '{CONFIGS / base}'
model = dict(bbox_head=dict(num_classes={len(CLASSES)}),
             test_cfg=dict(nms=dict(type='nms', iou_threshold={test_cfg['iou_threshold']}),
                           **{settings!r}))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale={GRAPH[::-1]!r}, keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline, metainfo=dict(classes={CLASSES!r})))
test_dataloader = val_dataloader
""")
    return config


@pytest.fixture(
    scope='module',
    params=[  # anchors and points in the fast set (15 s each)
        pytest.param(name, marks=() if name in ('ssdlite', 'rtmdet') else pytest.mark.slow)
        for name in DETECTORS
    ],
)
def exported(request, tmp_path_factory, photos):
    """(detector, config, checkpoint, ONNX path) of a random detector exported as
    tools/export_onnx.py does (metadata, the pipeline's fixed shape)."""
    folder = tmp_path_factory.mktemp(request.param)
    config = write_config(folder, request.param)
    cfg = load_config(str(config))
    model, _ = small_model(config, photos, steps=preprocess_steps(cfg)[0])
    checkpoint = dict(meta=dict(dataset_meta=dict(classes=CLASSES)), state_dict=model.state_dict())
    torch.save(checkpoint, folder / 'model.pth')
    metadata = export_metadata(cfg, checkpoint, model, str(config))
    shape = fixed_input_shape(metadata['preprocess'])
    assert shape == GRAPH
    export_onnx(model, str(folder / 'model.onnx'), shape, metadata=metadata)
    return request.param, str(config), str(folder / 'model.pth'), str(folder / 'model.onnx')


def assert_same_detections(found, expected, name):
    """Every detection, one to one: the same count, and each of ours is one of mmdet's
    with the same label, a box within a pixel and a score within SCORE_ATOL (near ties
    may come in another order)."""
    boxes, scores, labels = (
        expected.bboxes.numpy(),
        expected.scores.numpy(),
        expected.labels.numpy(),
    )
    assert len(found.scores) == len(scores), name
    unmatched = np.ones(len(scores), bool)
    for box, score, label in zip(found.boxes, found.scores, found.labels):
        match = np.flatnonzero(
            unmatched
            & (labels == label)
            & (np.abs(scores - score) <= SCORE_ATOL)
            & (np.abs(boxes - box).max(1) <= 1)
        )
        assert len(match), (name, box, score, label)
        unmatched[match[0]] = False


def test_every_detection_is_mmdets_at_the_configs_test_cfg(exported, photos):
    from mmdet.apis import DetInferencer

    detector, config, checkpoint, onnx_path = exported
    session, meta = load_onnx(onnx_path)
    assert graph_input_shape(session) == GRAPH and meta['classes'] == list(CLASSES)
    inferencer = DetInferencer(model=config, weights=checkpoint, device='cpu', show_progress=False)
    capped = 0
    for name, path in photos.items():
        photo = read_photo(path)
        expected = inferencer(path, return_datasamples=True)['predictions'][0].pred_instances
        found = predict(session, meta, photo)
        assert found.frame.input_size == GRAPH[::-1], name
        assert_same_detections(found, expected, name)
        # a graph without the pipeline's steps (exported before they were recorded):
        # the photo resized to the graph, the same stretch
        assert_same_detections(predict(session, dict(meta, preprocess=None), photo), expected, name)
        capped += len(found.scores) == meta['max_per_img']
    assert capped, f'{detector}: max_per_img caps no photo'


def test_each_post_process_setting_changes_the_answer(exported, photos):
    """The test above can fail on a wrong value: one step off any setting changes the
    detections of some photo."""
    detector, _, _, onnx_path = exported
    session, meta = load_onnx(onnx_path)
    outputs = []
    for path in photos.values():
        image, frame = preprocess(read_photo(path), meta['preprocess'], GRAPH)
        boxes, scores = session.run(
            None, {'image': image.transpose(2, 0, 1)[None].astype(np.float32)}
        )
        outputs.append((frame.to_photo(boxes[0]), scores[0]))

    def answers(settings):
        return [postprocess_detections(boxes, scores, settings) for boxes, scores in outputs]

    def same(a, b):
        return all(
            len(x[1]) == len(y[1]) and all(np.array_equal(u, v) for u, v in zip(x, y))
            for x, y in zip(a, b)
        )

    reference = answers(meta)
    for key, step in STEPS.items():
        assert not all(
            same(answers(dict(meta, **{key: meta[key] + sign * step})), reference)
            for sign in (-1, 1)
        ), (detector, key)


METADATA_SHAPE = (64, 96)  # a small export: the post-process values do not depend on it
# one config of each head in the fast set (2-8 s each), the others slow: test pipelines
# with a stretch, a letterbox (keep-ratio resize and pad) and a keep-ratio resize
FAST = (
    'ssdlite_mobileone-s0_1xb8-16e_tiny-coco',
    'rtmdet_mobileone-s0_8xb32-300e_coco',
    'retinanet_mobileone-s1_fpn_1x_coco',
)


def plain_test_cfg(path: Path) -> dict:
    """The config file's model.test_cfg, read by mmengine alone (no mobileone_mm code)."""
    return Config.fromfile(str(path)).model.test_cfg


def expected_steps(path: Path):
    """The test pipeline's resize and pad steps, read from the file, and the input shape
    (H, W) they give every photo: a stretch, or a pad to a fixed size; None otherwise."""
    steps, shape = [], None
    for transform in Config.fromfile(str(path)).test_dataloader.dataset.pipeline:
        if transform.type == 'Resize':
            steps.append(
                dict(op='resize', size=list(transform.scale), keep_ratio=transform.keep_ratio)
            )
            shape = None if transform.keep_ratio else tuple(transform.scale[::-1])
        elif transform.type == 'Pad':
            steps.append(
                dict(op='pad', size=list(transform.size), pad_val=list(transform.pad_val.img))
            )
            shape = tuple(transform.size[::-1])
    return steps, shape


@pytest.mark.parametrize(
    'path',
    [
        pytest.param(p, marks=() if p.stem in FAST else pytest.mark.slow)
        for p in sorted(CONFIGS.glob('*.py'))
    ],
    ids=lambda p: p.stem,
)
def test_artefact_metadata_is_the_configs(path):
    """What build_onnx writes into the graph for onnx_infer (read back from the serialized
    graph) is the config's test_cfg, the level sizes of the built model's own feature maps,
    and the test pipeline's resize / pad steps."""
    cfg = load_config(str(path))
    cfg.model.backbone.init_cfg = None
    model, _ = build_model(cfg)
    model.eval()
    metadata = export_metadata(cfg, {}, model, str(path))
    graph, _ = build_onnx(model, METADATA_SHAPE, metadata=metadata)
    meta = {p.key: json.loads(p.value) for p in onnx.load_from_string(graph).metadata_props}
    test_cfg = plain_test_cfg(path)
    assert dict(model.bbox_head.test_cfg) == dict(test_cfg)  # what mmdet's head applies
    assert meta['score_thr'] == test_cfg.score_thr
    assert meta['nms_pre'] == test_cfg.nms_pre
    assert meta['min_bbox_size'] == test_cfg.min_bbox_size
    assert meta['iou_threshold'] == test_cfg.nms.iou_threshold
    assert meta['max_per_img'] == test_cfg.max_per_img
    with torch.no_grad():
        cls_scores = model._forward(torch.zeros(1, 3, *METADATA_SHAPE))[0]
    num_classes = model.bbox_head.cls_out_channels
    assert meta['level_sizes'] == [
        c.shape[2] * c.shape[3] * (c.shape[1] // num_classes) for c in cls_scores
    ]
    assert meta['input_shape'] == list(METADATA_SHAPE)
    steps, shape = expected_steps(path)
    assert [
        {k: step[k] for k in expected} for step, expected in zip(meta['preprocess'], steps)
    ] == steps and len(meta['preprocess']) == len(steps)
    assert fixed_input_shape(meta['preprocess']) == shape
