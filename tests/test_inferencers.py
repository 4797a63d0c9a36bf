"""The codebases' own inferencers with our configs, on real photos of odd sizes and modes
(tests/photos.py): mmdet's DetInferencer, mmseg's MMSegInferencer and mmpretrain's
ImageClassificationInferencer give the same predictions for a checkpoint in train form
and in the deploy form tools/reparameterize.py writes; tools/image_demo.py prints and
draws what they give."""

import os
import re

import cv2
import mmcv
import numpy as np
import pytest
import torch
from photos import photo_paths
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm

from mobileone_mm.fusion.reparameterize import reparameterize_checkpoint
from mobileone_mm.loading.config import build_model, input_shape_of, load_config, registry_of
from mobileone_mm.runtimes.wrappers import Normalize

DET_TINY = 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py'
SEG_TINY = 'configs/segmentation/deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py'
CLS_TINY = 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py'
# One larger arch per family, the real recipes (their data paths play no part here).
DET_S1 = 'configs/detection/ssdlite_mobileone-s1_8xb24-600e_coco.py'
SEG_S4 = 'configs/segmentation/deeplabv3_mobileone-s4-d16_4xb4-160k_ade20k-512x512.py'
CLS_FLOWERS = 'configs/classification/mobileone-s0_1xb32-flowers102.py'

ALL_PHOTOS = ('portrait_rgb', 'landscape_rgb', 'gray', 'rgba', 'small_jpeg', 'clipart_rgba')
TWO_PHOTOS = ('landscape_rgb', 'gray')
SCORE_THR = 0.3  # image_demo's default
COMPARED = 10  # detections compared per photo, at least: an 80-class random head scores low


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    return photo_paths(tmp_path_factory.mktemp('photos'))


def photo_size(path):
    with Image.open(path) as image:
        return image.size


# ------------------------------------------------------------- checkpoints, oracles
def dataset_meta(cfg, codebase: str, num_classes: int) -> dict:
    """What mmengine's Runner writes to a checkpoint's meta: the test dataset's metainfo
    (the config's, else its dataset type's), as names for the model's classes."""
    dataset = cfg.test_dataloader.dataset
    meta = dict(dataset.get('metainfo') or {})
    if 'classes' not in meta:
        meta = dict(getattr(registry_of(codebase, 'DATASETS').get(dataset.type), 'METAINFO', {}))
    if len(meta.get('classes') or ()) != num_classes:
        meta = dict(classes=[f'class {i}' for i in range(num_classes)])
    return meta


def make_checkpoint(config: str, path, randomize_bn, photos: dict):
    """A checkpoint as a trained model's: random weights, random BN affine values
    (randomize_bn), and BN statistics estimated on the photos at the config's input size,
    as training on photos leaves them (randomize_bn's statistics alone blow the
    activations up to ~1e11: every score saturates and one class wins everywhere, which
    tests nothing). Returns the codebase."""
    cfg = load_config(config)
    model, codebase = build_model(cfg)
    randomize_bn(model)
    for norm in (m for m in model.modules() if isinstance(m, _BatchNorm)):
        norm.reset_running_stats()
        norm.momentum = None  # the statistics of the one batch below
    size = min(input_shape_of(cfg)[0], 256)
    images = (
        torch.stack(
            [torch.from_numpy(cv2.resize(mmcv.imread(p), (size, size))) for p in photos.values()]
        )
        .permute(0, 3, 1, 2)
        .float()
    )
    with torch.no_grad():
        model.train()(Normalize(model.data_preprocessor)(images), mode='tensor')
    head = getattr(
        model, {'mmdet': 'bbox_head', 'mmseg': 'decode_head', 'mmpretrain': 'head'}[codebase]
    )
    meta = dict(epoch=1, dataset_meta=dataset_meta(cfg, codebase, head.num_classes))
    torch.save(dict(meta=meta, state_dict=model.state_dict()), path)
    return codebase


def inferencer(codebase: str, config: str, checkpoint: str):
    """The codebase's inferencer, built as its docs show (config path and weights)."""
    if codebase == 'mmdet':
        from mmdet.apis import DetInferencer

        return DetInferencer(config, weights=checkpoint, device='cpu', show_progress=False)
    if codebase == 'mmseg':
        from mmseg.apis import MMSegInferencer

        return MMSegInferencer(config, weights=checkpoint, device='cpu')
    from mmpretrain.apis import ImageClassificationInferencer

    return ImageClassificationInferencer(config, pretrained=checkpoint, device='cpu')


def predictions(codebase: str, infer, paths) -> list:
    """Per photo: detections (boxes, scores, labels as numpy), the label map, or the
    class scores, as the inferencer returns them."""
    out = infer(paths, return_datasamples=True)
    if codebase == 'mmdet':
        return [
            (
                p.pred_instances.bboxes.numpy(),
                p.pred_instances.scores.numpy(),
                p.pred_instances.labels.numpy(),
            )
            for p in out['predictions']
        ]
    if codebase == 'mmseg':
        return [p.pred_sem_seg.data[0].numpy() for p in (out if isinstance(out, list) else [out])]
    return [p.pred_score.numpy() for p in out]


def compared_score(scores) -> float:
    """Detections from this score up are compared: SCORE_THR, or lower to reach COMPARED."""
    return min(SCORE_THR, np.sort(scores)[::-1][:COMPARED].min())


def assert_same_detections(found, expected, margin=1e-3):
    """Every detection from ``compared_score`` up in one list has a partner in the other:
    same label, box within a pixel, score within ``margin`` (detections within ``margin``
    of that score may fall on either side)."""
    threshold = compared_score(expected[1])
    for (boxes, scores, labels), (ref_boxes, ref_scores, ref_labels) in (
        (found, expected),
        (expected, found),
    ):
        for box, score, label in zip(boxes, scores, labels):
            if score < threshold + margin:
                continue
            partner = (
                (ref_labels == label)
                & (np.abs(ref_scores - score) <= margin)
                & (np.abs(ref_boxes - box).max(1) <= 1.0)
            )
            assert partner.any(), (box, score, label)


def assert_same_predictions(codebase, found, expected):
    for f, e in zip(found, expected):
        if codebase == 'mmdet':
            assert_same_detections(f, e)
        elif codebase == 'mmseg':
            assert f.shape == e.shape and (f == e).mean() >= 0.999
        else:
            assert np.argsort(-f)[:5].tolist() == np.argsort(-e)[:5].tolist()


def assert_in_photo_frame(codebase, preds, paths):
    """Predictions in each photo's own pixels, and not trivial."""
    for pred, path in zip(preds, paths):
        width, height = photo_size(path)
        if codebase == 'mmdet':
            boxes = pred[0]
            assert (
                (boxes >= 0).all()
                and (boxes[:, 0::2] <= width).all()
                and (boxes[:, 1::2] <= height).all()
            )
        elif codebase == 'mmseg':
            assert pred.shape == (height, width)
    if codebase == 'mmdet':  # compared detections on every photo, of several classes
        kept = [p[2][p[1] >= compared_score(p[1])] for p in preds]
        assert all(len(k) >= min(COMPARED, len(p[1])) > 0 for k, p in zip(kept, preds))
        assert len(set(np.concatenate(kept).tolist())) >= 2
    elif codebase == 'mmseg':
        assert len(np.unique(np.concatenate([p.ravel() for p in preds]))) >= 2
    else:  # scores that rank the classes, not one saturated class
        assert np.mean([p.max() < 0.99 for p in preds]) >= 0.5


def is_deploy_form(model) -> bool:
    return model.backbone.deploy and not any(
        hasattr(m, 'branch_conv_list') for m in model.modules()
    )


# ------------------------------------------------------------------------- the tests
CASES = [
    pytest.param(DET_TINY, ALL_PHOTOS, id='mmdet-s0-tiny'),
    pytest.param(SEG_TINY, ALL_PHOTOS, id='mmseg-s0-tiny'),
    pytest.param(CLS_TINY, ALL_PHOTOS, id='mmpretrain-s0-tiny'),
    pytest.param(DET_S1, TWO_PHOTOS, id='mmdet-s1-coco', marks=pytest.mark.slow),
    # S4 (SE blocks) at output stride 16; 512-pixel inputs, so one photo
    pytest.param(SEG_S4, ('small_jpeg',), id='mmseg-s4-d16-ade20k', marks=pytest.mark.slow),
    pytest.param(CLS_FLOWERS, TWO_PHOTOS, id='mmpretrain-s0-flowers102', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('config, names', CASES)
def test_train_and_deploy_form_predict_the_same(config, names, photos, tmp_path, randomize_bn):
    """The inferencer on the training checkpoint and on the deploy checkpoint + config
    that reparameterize_checkpoint (tools/reparameterize.py) writes."""
    checkpoint = tmp_path / 'epoch_1.pth'
    codebase = make_checkpoint(config, checkpoint, randomize_bn, photos)
    result = reparameterize_checkpoint(
        config, str(checkpoint), str(tmp_path / 'deploy.pth'), num_images=1
    )
    paths = [photos[name] for name in names]

    train = inferencer(codebase, config, str(checkpoint))
    deploy = inferencer(codebase, result.out_config, result.out_checkpoint)
    assert not is_deploy_form(train.model) and is_deploy_form(deploy.model)
    expected = predictions(codebase, train, paths)
    assert_in_photo_frame(codebase, expected, paths)
    assert_same_predictions(codebase, predictions(codebase, deploy, paths), expected)


# ------------------------------------------------------------------ tools/image_demo.py
DEMO_CASES = {'mmdet': DET_TINY, 'mmseg': SEG_TINY, 'mmpretrain': CLS_TINY}
MARGIN = 1e-3  # the deploy form's scores may differ by this much from the train form's


def parse_demo(stdout: str) -> dict:
    """image_demo's printout -> {photo: (width, height, [line, ...])}."""
    parsed, current = {}, None
    for line in stdout.splitlines():
        header = re.fullmatch(r'(\S+) \((\d+)x(\d+)\):', line)
        if header:
            current = header.group(1)
            parsed[current] = (int(header.group(2)), int(header.group(3)), [])
        elif line.startswith('  ') and current is not None:
            parsed[current][2].append(line.strip())
    return parsed


def check_detections(lines, pred, classes):
    """Each printed detection is one of the inferencer's above the threshold (same
    class, score to the printed 3 decimals, box to 1 decimal), and none is missing."""
    printed = []
    for line in lines:
        match = re.fullmatch(r'(.+) (\d\.\d{3}) box \[(.+)\]', line)
        assert match, line
        box = [float(v) for v in match.group(3).split(', ')]
        printed.append((match.group(1), float(match.group(2)), box))
    boxes, scores, labels = pred

    def same(row, i):
        name, score, box = row
        return (
            name == classes[labels[i]]
            and abs(score - scores[i]) <= MARGIN + 5e-4
            and np.abs(np.array(box) - boxes[i]).max() <= 0.1
        )

    for row in printed:
        assert any(same(row, i) for i in np.flatnonzero(scores >= SCORE_THR - MARGIN)), row
    for i in np.flatnonzero(scores >= SCORE_THR + MARGIN):
        assert any(same(row, i) for row in printed), (boxes[i], scores[i], labels[i])


def check_ranking(lines, expected: dict, pattern: str, tol: float):
    """The printed top classes (name, value) are the inferencer's: each value within
    ``tol``, five of them (or all), and no class left out that beats the last one."""
    printed = {}
    for line in lines:
        match = re.fullmatch(pattern, line)
        assert match, line
        printed[match.group(1)] = float(match.group(2))
    assert len(printed) == len(lines) == min(5, len(expected))
    for name, value in printed.items():
        assert abs(value - expected[name]) <= tol, (name, value, expected[name])
    lowest = min(printed.values())
    assert all(v <= lowest + tol for name, v in expected.items() if name not in printed)


@pytest.mark.parametrize(
    'codebase',
    [
        pytest.param('mmdet', marks=pytest.mark.slow),
        pytest.param('mmseg', marks=pytest.mark.slow),
        'mmpretrain',
    ],
)
def test_image_demo_prints_and_draws_what_the_inferencer_gives(
    codebase, photos, tmp_path, randomize_bn, capsys
):
    import image_demo

    config = DEMO_CASES[codebase]
    checkpoint = tmp_path / 'epoch_1.pth'
    make_checkpoint(config, checkpoint, randomize_bn, photos)
    names = ('landscape_rgb', 'gray', 'rgba', 'small_jpeg')
    paths = [photos[name] for name in names]
    image_demo.main(
        [config, str(checkpoint), *paths, '--out-dir', str(tmp_path / 'out'), '--deploy']
    )
    printed = parse_demo(capsys.readouterr().out)

    # The oracle: the codebase's inferencer on the training checkpoint, train form.
    infer = inferencer(codebase, config, str(checkpoint))
    classes = infer.classes if codebase == 'mmpretrain' else infer.model.dataset_meta['classes']
    for name, path, pred in zip(names, paths, predictions(codebase, infer, paths)):
        width, height, lines = printed[path]
        assert (width, height) == photo_size(path)
        with Image.open(tmp_path / 'out' / f'{name}.png') as picture:
            assert picture.size == (width, height) and picture.mode == 'RGB'
        assert lines
        if codebase == 'mmdet':
            check_detections(lines, pred, classes)
        elif codebase == 'mmseg':
            ids, counts = np.unique(pred, return_counts=True)
            shares = {classes[i]: 100 * c / pred.size for i, c in zip(ids, counts)}
            check_ranking(lines, shares, r'(.+) (\d+\.\d)% of pixels', 0.05 + 0.1)
        else:
            scores = {classes[i]: float(v) for i, v in enumerate(pred)}
            check_ranking(lines, scores, r'(.+) (\d\.\d{3})', MARGIN + 5e-4)


def test_image_demo_errors_are_one_line(photos, tmp_path, randomize_bn, capsys):
    import image_demo

    checkpoint = tmp_path / 'classifier.pth'
    make_checkpoint(CLS_TINY, checkpoint, randomize_bn, photos)
    not_a_photo = tmp_path / 'notes.jpg'
    not_a_photo.write_text('not a picture')
    photo = photos['gray']
    cases = [
        ([CLS_TINY, str(checkpoint), str(tmp_path / 'missing.jpg')], 'does not exist'),
        ([CLS_TINY, str(checkpoint), str(not_a_photo)], 'is not an image'),
        ([DET_TINY, str(checkpoint), photo], 'does not fit the model'),
        ([CLS_TINY, str(tmp_path / 'missing.pth'), photo], 'does not exist'),
        # the picture gray.png would be written over the photo gray.png
        (
            [CLS_TINY, str(checkpoint), photo, '--out-dir', os.path.dirname(photo)],
            'would overwrite',
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            image_demo.main(argv)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2, error
        assert error.startswith('image_demo: ') and message in error, error
        assert error.count('\n') == 1 and error.endswith('\n'), error
