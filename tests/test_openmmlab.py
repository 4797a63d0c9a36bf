"""The backbone from mmdet, mmseg and mmpretrain configs, and mmengine's checkpoints."""

import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

BACKBONE = "dict(type='mobileone_mm.MobileOne', arch='s0', out_indices={out})"
CONFIGS = {
    'mmdet': f"""
        model = dict(
            type='RetinaNet',
            data_preprocessor=dict(type='DetDataPreprocessor', bgr_to_rgb=True),
            backbone={BACKBONE.format(out=(1, 2, 3))},
            neck=dict(type='FPN', in_channels=[128, 256, 1024], out_channels=64,
                      start_level=0, add_extra_convs='on_input', num_outs=5),
            bbox_head=dict(
                type='RetinaHead', num_classes=3, in_channels=64, feat_channels=64,
                stacked_convs=1,
                anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                      scales_per_octave=1, ratios=[1.0],
                                      strides=[8, 16, 32, 64, 128]),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                loss_bbox=dict(type='L1Loss')),
            test_cfg=dict(nms_pre=100, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                          max_per_img=10))""",
    'mmseg': f"""
        model = dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
            backbone={BACKBONE.format(out=(2, 3))},
            decode_head=dict(type='FCNHead', in_channels=1024, in_index=1, channels=32,
                             num_convs=1, num_classes=4),
            test_cfg=dict(mode='whole'))""",
    'mmpretrain': f"""
        model = dict(
            type='ImageClassifier',
            backbone={BACKBONE.format(out=(3,))},
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=1024))""",
}


def build_from_config(scope, tmp_path):
    path = tmp_path / f'{scope}_config.py'
    path.write_text(
        "custom_imports = dict(imports=['mobileone_mm'], "
        'allow_failed_imports=False)\n' + textwrap.dedent(CONFIGS[scope])
    )
    cfg = Config.fromfile(str(path))
    registry = {
        'mmdet': 'mmdet.registry',
        'mmseg': 'mmseg.registry',
        'mmpretrain': 'mmpretrain.registry',
    }[scope]
    init_default_scope(scope)
    models = __import__(registry, fromlist=['MODELS']).MODELS
    return models.build(cfg.model)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_each_codebase(scope, tmp_path):
    from mobileone_mm import MobileOne

    model = build_from_config(scope, tmp_path)
    assert type(model.backbone) is MobileOne
    model.init_weights()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model.eval()(x, mode='tensor')
    assert out is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    'arch, params',
    [
        ('s0', 2_078_504),
        ('s1', 4_764_840),
        ('s2', 7_808_168),
        ('s3', 10_078_312),
        ('s4', 14_838_352),
    ],
)
def test_fused_classifier_parameter_counts(arch, params):
    from mmpretrain.models import build_classifier

    from mobileone_mm import MobileOne, reparameterize_model

    init_default_scope('mmpretrain')
    width = MobileOne(arch).out_channels[-1]
    model = build_classifier(
        dict(
            type='ImageClassifier',
            backbone=dict(type='mobileone_mm.MobileOne', arch=arch),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=1000, in_channels=width),
        )
    )
    reparameterize_model(model.eval())
    assert sum(p.numel() for p in model.parameters()) == params


def _train_toy_runner(work_dir, max_epochs, resume=False, load_from=None):
    """mmengine's Runner on a one-layer model: its checkpoints hold numpy scalars and
    HistoryBuffers, the objects torch >= 2.6 refuses to unpickle by default."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import mobileone_mm.fixes.safe_loading  # noqa: F401  (registers the safe loader)

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, inputs, labels=None, mode='loss'):
            loss = (self.linear(inputs) - labels).pow(2).mean()
            return dict(loss=loss)

    data = [dict(inputs=torch.rand(2), labels=torch.rand(1)) for _ in range(8)]
    runner = Runner(
        model=Toy(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=data,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            collate_fn=dict(type='default_collate'),
        ),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        resume=resume,
        load_from=load_from,
        default_scope='mmengine',
    )
    runner.train()
    return runner


def test_mmengine_runner_checkpoints_load_and_resume(tmp_path):
    from mmengine.runner import CheckpointLoader

    _train_toy_runner(tmp_path, max_epochs=1)
    checkpoint = tmp_path / 'epoch_1.pth'
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint))
    assert any('HistoryBuffer' in name for name in unsafe)  # plain torch.load would fail
    loaded = CheckpointLoader.load_checkpoint(str(checkpoint), map_location='cpu')
    assert loaded['meta']['epoch'] == 1
    runner = _train_toy_runner(tmp_path, max_epochs=2, resume=True)
    assert runner.epoch == 2 and runner.iter == 4
