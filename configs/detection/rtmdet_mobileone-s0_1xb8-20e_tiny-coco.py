# The RTMDet-MobileOne-S0 config on the synthetic tiny COCO set, sized for a 2-core CPU
# (6 minutes on 2 idle cores: 700 iterations of batch 8 at 128x128; bbox mAP 0.587):
#   python tools/make_tiny_datasets.py coco --out data/tiny_coco
#   mim train mmdet configs/detection/rtmdet_mobileone-s0_1xb8-20e_tiny-coco.py \
#       --work-dir work_dirs/rtmdet_tiny
_base_ = './rtmdet_mobileone-s0_8xb32-300e_coco.py'

data_root = 'data/tiny_coco/'
metainfo = dict(classes=('disk', 'square', 'triangle', 'star'))  # devkit.tiny_data
# 640 in the COCO recipe. The tiny images are 96..128 px (make_tiny_coco's default) with
# objects of 20..70 px: strides 8 / 16 / 32 give 16x16, 8x8 and 4x4 maps.
input_size = 128

norm_cfg = dict(type='BN')  # one process (SyncBN would be reverted to BN anyway)
model = dict(
    # No download here: random init. With ImageNet weights on disk, use the base
    # config's init_cfg with checkpoint='/path/to/mobileone-s0.pth'.
    backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(_delete_=True, type='Kaiming', layer='Conv2d')),
    neck=[  # a list is replaced, not merged: the S0 neck with BN
        dict(_base_.model.neck[0], norm_cfg=norm_cfg),
        dict(_base_.model.neck[1], norm_cfg=norm_cfg),
    ],
    bbox_head=dict(num_classes=4, norm_cfg=norm_cfg),
)

# Two stages as the recipe: stage 1 with scale jitter and crops, the last epochs plain.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomResize',
        scale=(input_size, input_size),
        ratio_range=(0.75, 1.5),
        keep_ratio=False,
    ),
    dict(type='RandomCrop', crop_size=(input_size, input_size)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(input_size, input_size), pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
train_pipeline_stage2 = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=False,
    pin_memory=False,
    drop_last=True,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# 35 iterations an epoch (the 288 train images with objects, batch 8: mmdet drops the
# empty ones); AdamW at the recipe's lr (set there for batch 256; batch 8 takes it too
# here), warm-up, cosine decay, and an EMA that follows a few hundred iterations (the
# recipe's momentum 0.0002 is for ~150k). Validation every 4 epochs, every 2 in stage 2.
max_epochs = 20
stage2_num_epochs = 4
train_cfg = dict(
    max_epochs=max_epochs, val_interval=4, dynamic_intervals=[(max_epochs - stage2_num_epochs, 2)]
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(
        type='CosineAnnealingLR',
        begin=0,
        T_max=max_epochs,
        end=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
        eta_min=0,
    ),
]
optim_wrapper = dict(optimizer=dict(lr=4e-3))
custom_hooks = [
    dict(
        type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.002, update_buffers=True, priority=49
    ),
    dict(
        type='PipelineSwitchHook',
        switch_epoch=max_epochs - stage2_num_epochs,
        switch_pipeline=train_pipeline_stage2,
    ),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=4, max_keep_ckpts=1, save_best='coco/bbox_mAP'),
)
# Seeded (random init, sampling, augmentation), so the mAP can be reproduced.
randomness = dict(seed=0)
