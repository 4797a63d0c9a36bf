"""RTMDet and RetinaNet with MobileOne (configs/detection/rtmdet_*, retinanet_*), with real
mmdet: each COCO config is mmdet's recipe of the size it names (compared with mmdet's own
config), builds, trains a step, predicts and loads every published weight format; the
ONNX export of these detectors is held to mmdet's own post-processing and DetInferencer;
the tiny RTMDet goes through mmengine's Runner (what `mim train` / `mim test` build) and
our deploy tools."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from apple_layout import to_apple  # noqa: E402  (tests/ on the path: conftest.py)
from detectors import small_model  # noqa: E402
from helpers import REPO
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from photos import photo_paths  # noqa: E402

from mobileone_mm import MobileOne, convert_state_dict
from mobileone_mm.checkpoints.formats import MMPRETRAIN_URLS, backbone_state_dict
from mobileone_mm.devkit.analysis import randomize_bn
from mobileone_mm.devkit.tiny_data import make_tiny_coco
from mobileone_mm.loading.config import ExportError, build_model, load_config
from mobileone_mm.predict.detections import _batched_nms
from mobileone_mm.predict.metadata import export_metadata, fixed_input_shape, preprocess_steps
from mobileone_mm.predict.photos import preprocess, read_photo
from mobileone_mm.predict.prediction import predict
from mobileone_mm.runtimes.artefact_check import verify_onnx
from mobileone_mm.runtimes.onnx_graphs import export_onnx, load_onnx

CONFIGS = REPO / 'configs' / 'detection'
TINY = CONFIGS / 'rtmdet_mobileone-s0_1xb8-20e_tiny-coco.py'
# our config -> (arch, mmdet's config of the recipe it follows)
RTMDET_SIZE = dict(s0='tiny', s1='s', s2='s', s3='m', s4='m')
COCO = {
    f'rtmdet_mobileone-{arch}_8xb32-300e_coco.py': (
        arch,
        f'rtmdet/rtmdet_{size}_8xb32-300e_coco.py',
    )
    for arch, size in RTMDET_SIZE.items()
}
COCO.update(
    {
        f'retinanet_mobileone-{arch}_fpn_1x_coco.py': (
            arch,
            'retinanet/retinanet_r50_fpn_1x_coco.py',
        )
        for arch in ('s1', 's4')
    }
)
IMPORTS = [
    'mobileone_mm',
    'mobileone_mm.fixes.safe_loading',
    'mobileone_mm.fixes.durable_checkpoints',
    'mobileone_mm.fixes.cpu_distributed',
]
# stages 2-4 of the paper's arch table: (128, 256, 512) x alpha
STAGE_WIDTHS = dict(
    s0=[128, 256, 1024],
    s1=[192, 512, 1280],
    s2=[256, 640, 2048],
    s3=[320, 768, 2048],
    s4=[448, 896, 2048],
)


def mmdet_config(name: str) -> Config:
    import mmdet

    return Config.fromfile(str(Path(mmdet.__file__).parent / '.mim' / 'configs' / name))


def plain(value):
    """A config value as plain dicts / lists, without mmengine's '_scope_' marks."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize('name', list(COCO))
def test_config_is_the_mmdet_recipe_with_mobileone(name):
    """Everything but the backbone (and the neck's inputs) is the mmdet config of the
    size the config names: pipelines of both stages and the switch, EMA, optimizer,
    schedule, head, assigner, test settings."""
    arch, reference_name = COCO[name]
    cfg, ref = Config.fromfile(str(CONFIGS / name)), mmdet_config(reference_name)
    assert list(cfg.custom_imports.imports) == IMPORTS
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, tuple(backbone.out_indices)) == (
        'mobileone_mm.MobileOne',
        arch,
        (1, 2, 3),
    )
    assert backbone.init_cfg == dict(
        type='Pretrained', prefix='backbone.', checkpoint=MMPRETRAIN_URLS[arch]
    )
    # MobileOne's ImageNet weights want RGB input with ImageNet statistics
    preprocessor = cfg.model.data_preprocessor
    assert preprocessor.bgr_to_rgb and preprocessor.mean == [123.675, 116.28, 103.53]
    for key in (
        'train_dataloader',
        'val_dataloader',
        'test_dataloader',
        'train_cfg',
        'param_scheduler',
        'custom_hooks',
        'default_hooks',
        'val_evaluator',
    ):
        assert plain(cfg.get(key)) == plain(ref.get(key)), key
    for key in ('bbox_head', 'train_cfg', 'test_cfg'):
        assert plain(cfg.model[key]) == plain(ref.model[key]), key
    optimizer = plain(cfg.optim_wrapper)
    if name.startswith('rtmdet'):
        assert optimizer == plain(ref.optim_wrapper)
        mapper, pafpn = plain(cfg.model.neck)
        width = ref.model.neck.out_channels
        assert mapper == dict(
            type='ChannelMapper',
            in_channels=STAGE_WIDTHS[arch],
            out_channels=width,
            kernel_size=1,
            norm_cfg=ref.model.neck.norm_cfg,
            act_cfg=ref.model.neck.act_cfg,
        )
        assert pafpn == dict(plain(ref.model.neck), in_channels=[width] * 3)
        assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'PipelineSwitchHook']
    else:
        assert optimizer.pop('paramwise_cfg') == dict(norm_decay_mult=0.0)
        assert optimizer == plain(ref.optim_wrapper)
        assert plain(cfg.model.neck) == dict(
            plain(ref.model.neck), start_level=0, in_channels=STAGE_WIDTHS[arch]
        )


def build(model_cfg):
    """The model as mmengine's Runner builds it in one process (SyncBN reverted to BN)."""
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    return revert_sync_batchnorm(MODELS.build(model_cfg))


def random_batch(model, num_classes, training):
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(
        batch_size=2,
        image_shapes=[(3, 160, 128), (3, 128, 160)],
        num_items=[3, 1],
        num_classes=num_classes,
    )
    return model.data_preprocessor(packed, training=training)


@pytest.mark.slow
@pytest.mark.parametrize('name', list(COCO) + [TINY.name])
def test_config_builds_trains_and_predicts(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    cfg.model.backbone.init_cfg = None  # nothing can be downloaded here
    cfg.model.test_cfg.score_thr = 0  # an untrained RetinaNet scores 0.01, below 0.05
    model = build(cfg.model)
    assert isinstance(model.backbone, MobileOne)
    model.init_weights()
    num_classes = cfg.model.bbox_head.num_classes
    losses = model(**random_batch(model, num_classes, training=True), mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox'}
    total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.backbone.stage3.parameters())
    model.eval()
    with torch.no_grad():
        results = model(**random_batch(model, num_classes, training=False), mode='predict')
    assert len(results) == 2
    for result in results:
        instances = result.pred_instances
        assert instances.bboxes.shape[1] == 4 and len(instances.scores) == len(instances.labels)
        assert 0 < len(instances) <= cfg.model.test_cfg.max_per_img


@pytest.fixture(scope='module')
def published_weights(tmp_path_factory):
    """arch -> {file name: path} of that arch's weights in every published format
    (mmpretrain, Apple unfused, timm .pth and .safetensors), made from timm's model with
    random BN statistics, and the backbone state dict they all hold."""
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp('weights')

    def make(arch):
        peer = randomize_bn(timm.create_model(f'mobileone_{arch}'))
        expected = backbone_state_dict(convert_state_dict(peer.state_dict())[0])
        classifier = {f'backbone.{k}': v for k, v in expected.items()}
        files = {
            'mmpretrain.pth': dict(state_dict=classifier, meta=dict()),
            'apple_unfused.pth.tar': to_apple(classifier),
            'timm.pth': peer.state_dict(),
        }
        paths = {}
        for file_name, checkpoint in files.items():
            paths[file_name] = folder / f'{arch}_{file_name}'
            torch.save(checkpoint, paths[file_name])
        paths['timm.safetensors'] = folder / f'{arch}_timm.safetensors'
        save_file(peer.state_dict(), str(paths['timm.safetensors']))
        return paths, expected

    cache = {}
    return lambda arch: cache.setdefault(arch, make(arch))


@pytest.mark.slow
@pytest.mark.parametrize('name', list(COCO))
def test_config_backbone_loads_every_format(name, published_weights):
    """The config's own backbone init_cfg (Pretrained) reads each published format of its
    arch to the same weights: mmpretrain's with the config's prefix 'backbone.' (checked
    first, before the loop drops the prefix for the classifier-less formats)."""
    from mmdet.registry import MODELS

    arch = COCO[name][0]
    paths, expected = published_weights(arch)
    backbone_cfg = Config.fromfile(str(CONFIGS / name)).model.backbone
    init_default_scope('mmdet')
    for file_name, path in paths.items():
        backbone_cfg.init_cfg.checkpoint = str(path)
        if not file_name.startswith('mmpretrain'):  # Apple's and timm's keys: no prefix
            backbone_cfg.init_cfg.pop('prefix', None)
        backbone = MODELS.build(backbone_cfg)
        backbone.init_weights()
        state = backbone.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items()), file_name


def test_batched_nms_is_mmcv_batched_nms():
    """The numpy NMS of the ONNX post-process keeps exactly what mmcv's batched_nms keeps,
    in the same order: clustered boxes (chains of overlaps), several classes, IoU
    thresholds of SSD, RetinaNet and RTMDet, below and above mmcv's 10000-box split."""
    from mmcv.ops import batched_nms

    rng = np.random.RandomState(0)
    for count in [1, 7, 300, 1500, 12000]:
        centres = rng.rand(max(1, count // 20), 2) * 300
        xy = centres[rng.randint(0, len(centres), count)] + rng.randn(count, 2) * rng.choice(
            [2, 8, 20]
        )
        boxes = np.concatenate([xy, xy + rng.rand(count, 2) * 40 + 5], 1).astype(np.float32)
        scores = ((rng.permutation(count) + 1) / (count + 1)).astype(np.float32)  # no ties
        labels = rng.randint(0, 1 + count % 9, count)
        for threshold in (0.45, 0.5, 0.65):
            ours = _batched_nms(boxes, scores, labels, threshold)
            _, theirs = batched_nms(
                torch.from_numpy(boxes),
                torch.from_numpy(scores),
                torch.from_numpy(labels),
                dict(type='nms', iou_threshold=threshold),
            )
            assert 0 < len(ours) < count or count < 10
            assert ours.tolist() == theirs.tolist(), (count, threshold)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    return photo_paths(tmp_path_factory.mktemp('photos'))


@pytest.mark.slow
@pytest.mark.parametrize('name', [TINY.name, 'retinanet_mobileone-s1_fpn_1x_coco.py'])
def test_graph_outputs_are_mmdet_decoding_before_nms(name, photos):
    """Every (prior, class) pair the export wrapper gives is one of mmdet's own
    predict_by_feat without score threshold, top-k or NMS, in float64: scores (sigmoid)
    to rounding, boxes (anchor deltas / point distances, clipped) within 1e-4 pixels, on
    a non-square input."""
    from mmengine.config import ConfigDict

    from mobileone_mm.runtimes.wrappers import DenseDetectorForExport

    model, _ = small_model(CONFIGS / name, photos, num_classes=4)
    shape = (96, 128)
    wrapper = DenseDetectorForExport(model, shape).double()
    image = torch.from_numpy(cv2.resize(read_photo(photos['landscape_rgb']), shape[::-1]))
    image = image.permute(2, 0, 1)[None].double()
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, scale_factor=(1.0, 1.0))
    with torch.no_grad():
        boxes, scores = wrapper(image)
        cls_scores, bbox_preds = model._forward(wrapper.normalize(image))
        (expected,) = model.bbox_head.predict_by_feat(
            cls_scores,
            bbox_preds,
            batch_img_metas=[meta],
            cfg=ConfigDict(score_thr=-1, nms_pre=10**9, min_bbox_size=-1),
            rescale=False,
            with_nms=False,
        )
    assert len(expected.scores) == boxes.shape[1] * 4
    for label in range(4):
        ours = torch.cat([scores[0, :, label, None], boxes[0]], 1)
        theirs = torch.cat(
            [
                expected.scores[expected.labels == label, None],
                expected.bboxes[expected.labels == label],
            ],
            1,
        )
        for rows in (ours, theirs):  # the same order: by score, ties by box
            for column in reversed(range(5)):
                rows.copy_(rows[rows[:, column].argsort(stable=True)])
        assert torch.allclose(ours[:, 0], theirs[:, 0], rtol=1e-12, atol=1e-15), label
        # the graph's anchors are float32 constants (mmdet makes them in float64 here)
        assert torch.allclose(ours[:, 1:], theirs[:, 1:], rtol=0, atol=1e-4), label


@pytest.mark.slow
@pytest.mark.parametrize(
    'name,score_thr', [(TINY.name, 0.03), ('retinanet_mobileone-s1_fpn_1x_coco.py', 0.05)]
)
def test_export_matches_mmdet(name, score_thr, tmp_path, photos):
    """RTMDet (points, distances, sigmoid) and RetinaNet (anchors, deltas, sigmoid): the
    graph's boxes and scores agree with the float64 model, and after the numpy post-process
    its detections are mmdet's own (model.predict), on a non-square input."""
    model, _ = small_model(CONFIGS / name, photos, num_classes=4)
    info = export_onnx(model, str(tmp_path / 'model.onnx'), (96, 128))
    assert info['onnx_convs'] == info['torch_convs'] > 30
    images = [
        cv2.resize(read_photo(photos[photo]), (128, 96)).transpose(2, 0, 1)[None].astype(np.float32)
        for photo in ('landscape_rgb', 'small_jpeg')
    ]
    report = verify_onnx(model, str(tmp_path / 'model.onnx'), images, score_thr=score_thr)
    assert report['passed'], report
    # mmdet's detections above score_thr, each found (same label) at IoU >= 0.99 with the
    # same score: the export_onnx.py --verify thresholds
    assert report['detections'] > 10 and report['unmatched'] == 0, report
    assert report['min_box_iou'] >= 0.99 and report['max_score_diff'] <= 1e-4, report


@pytest.mark.slow
def test_other_dense_heads_are_refused_before_fusing(tmp_path):
    """FCOS (centerness) and YOLOX (its own post-process) cannot be repeated by the numpy
    post-process: a one-line error says so, and the model is left as it was."""
    for head, why in [
        (
            dict(
                type='FCOSHead',
                num_classes=4,
                in_channels=96,
                feat_channels=96,
                stacked_convs=1,
                strides=[8, 16, 32],
            ),
            'score factors',
        ),
        (
            dict(
                type='YOLOXHead',
                num_classes=4,
                in_channels=96,
                feat_channels=96,
                stacked_convs=1,
                strides=[8, 16, 32],
            ),
            'its own way',
        ),
    ]:
        cfg = load_config(str(TINY))
        cfg.model.bbox_head = head
        cfg.model.train_cfg = cfg.model.test_cfg = None
        model, _ = build_model(cfg)
        with pytest.raises(ExportError, match=f'{why}.*use mmdeploy'):
            export_onnx(model, str(tmp_path / 'x.onnx'), (64, 64))
        assert not model.backbone.deploy and not (tmp_path / 'x.onnx').exists()


def test_coco_configs_letterbox_is_in_the_onnx_metadata():
    """The COCO RTMDet test pipeline (keep-ratio resize, then Pad with 114 to 640 x 640)
    is repeated by onnx_infer, and its fixed 640 x 640 is the graph's size."""
    cfg = load_config(str(CONFIGS / 'rtmdet_mobileone-s0_8xb32-300e_coco.py'))
    steps, unsupported = preprocess_steps(cfg)
    assert unsupported == '' and [s['op'] for s in steps] == ['resize', 'pad']
    assert steps[0]['size'] == [640, 640] and steps[0]['keep_ratio']
    assert steps[1]['size'] == [640, 640] and steps[1]['pad_val'] == [114] * 3
    assert fixed_input_shape(steps) == (640, 640)
    photo = np.full((300, 500, 3), 7, np.uint8)
    image, frame = preprocess(photo, steps)
    assert image.shape == (640, 640, 3) and frame.scale == (640 / 500, 384 / 300)
    assert (image[:384] != 114).all() and (image[384:] == 114).all()


LETTERBOX = """
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='Pad', size=(128, 128), pad_val=dict(img=(114, 114, 114))),"""
STRETCH = """
    dict(type='Resize', scale=(128, 96), keep_ratio=False),"""


@pytest.mark.slow
@pytest.mark.parametrize('resize', ['stretch', 'letterbox'])
def test_photos_match_det_inferencer(resize, tmp_path, photos):
    """The exported tiny RTMDet on real photos gives what mmdet's DetInferencer gives for
    the same checkpoint, in the photo's pixels: a non-square network input, and the COCO
    configs' letterbox (keep-ratio resize, pad with 114)."""
    from mmdet.apis import DetInferencer

    config = tmp_path / 'rtmdet.py'
    config.write_text(f"""_base_ = '{TINY}'
test_pipeline = [
    dict(type='LoadImageFromFile'),{STRETCH if resize == 'stretch' else LETTERBOX}
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
""")
    cfg = load_config(str(config))
    model, _ = small_model(TINY, photos, steps=preprocess_steps(cfg)[0])
    checkpoint = dict(
        meta=dict(dataset_meta=dict(classes=cfg.metainfo['classes'])), state_dict=model.state_dict()
    )
    torch.save(checkpoint, tmp_path / 'rtmdet.pth')
    metadata = export_metadata(cfg, checkpoint, model, str(config))
    shape = fixed_input_shape(metadata['preprocess'])
    assert shape == ((96, 128) if resize == 'stretch' else (128, 128))
    export_onnx(model, str(tmp_path / 'rtmdet.onnx'), shape, metadata=metadata)
    session, meta = load_onnx(str(tmp_path / 'rtmdet.onnx'))
    inferencer = DetInferencer(
        model=str(config), weights=str(tmp_path / 'rtmdet.pth'), device='cpu', show_progress=False
    )
    for name in ('landscape_rgb', 'gray', 'small_jpeg'):
        expected = inferencer(photos[name], return_datasamples=True)['predictions'][
            0
        ].pred_instances
        found = predict(session, meta, read_photo(photos[name]))
        assert found.frame.input_size == shape[::-1], name
        count = max(int((expected.scores >= expected.scores[0] / 2).sum()), 5)
        np.testing.assert_allclose(
            found.scores[:count], expected.scores[:count].numpy(), atol=1e-4, err_msg=name
        )
        assert (found.labels[:count] == expected.labels[:count].numpy()).all(), name
        assert np.abs(found.boxes[:count] - expected.bboxes[:count].numpy()).max() <= 1, name


def run_tool(name, *args, cwd):
    done = subprocess.run(
        [sys.executable, str(REPO / 'tools' / name), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def runner(config, work_dir, **options):
    """mmengine's Runner for the config, as mmdet's train / test scripts (what `mim
    train` / `mim test` run) build it."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict({**options, 'work_dir': str(work_dir)})
    return Runner.from_cfg(cfg)


@pytest.mark.slow
def test_tiny_rtmdet_train_switch_deploy_test_export(tmp_path, monkeypatch):
    """The tiny RTMDet trained with its pipeline switch, then tools/reparameterize.py, the
    same COCO mAP from mmengine's test loop for both forms, tools/export_onnx.py --verify
    and tools/onnx_infer.py on a val image."""
    monkeypatch.chdir(tmp_path)  # the config's data root is relative
    make_tiny_coco('data/tiny_coco', num_train=8, num_val=4)
    work_dir = tmp_path / 'work_dir'
    runner(
        TINY,
        work_dir,
        **{
            'train_dataloader.batch_size': 4,
            'train_cfg.max_epochs': 2,
            'train_cfg.val_interval': 2,
            'custom_hooks.1.switch_epoch': 1,
        },
    ).train()
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'Switch pipeline now!' in log
    checkpoint = work_dir / 'epoch_2.pth'
    deploy = tmp_path / 'deploy' / 'rtmdet_deploy.pth'
    assert 'outputs on 4 val images' in run_tool(
        'reparameterize.py', TINY, checkpoint, deploy, cwd=tmp_path
    )
    maps = [
        runner(config, tmp_path / 'test', load_from=str(weights)).test()['coco/bbox_mAP']
        for config, weights in [(TINY, checkpoint), (deploy.with_suffix('.py'), deploy)]
    ]
    assert maps[0] == maps[1], maps
    log = run_tool(
        'export_onnx.py',
        deploy.with_suffix('.py'),
        deploy,
        'rtmdet.onnx',
        '--verify',
        '--num-images',
        2,
        '--score-thr',
        0.05,
        cwd=tmp_path,
    )
    assert 'verify on 2 val images' in log and 'passed True' in log
    image = next(Path('data/tiny_coco/val2017').iterdir())
    log = run_tool(
        'onnx_infer.py', 'rtmdet.onnx', image, '--out', 'vis.png', '--score-thr', 0.01, cwd=tmp_path
    )
    assert (
        'picture: vis.png' in log
        and cv2.imread('vis.png').shape[:2] == cv2.imread(str(image)).shape[:2]
    )
