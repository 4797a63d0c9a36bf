# The S0 config on the synthetic tiny COCO set, sized for a 2-core CPU (about 10 minutes,
# 1136 iterations of batch 8 at 128x128):
#   python tools/make_tiny_datasets.py coco --out data/tiny_coco
#   mim train mmdet configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py \
#       --work-dir work_dirs/ssdlite_tiny
_base_ = './ssdlite_mobileone-s0_8xb24-600e_coco.py'

data_root = 'data/tiny_coco/'
metainfo = dict(classes=('disk', 'square', 'triangle', 'star'))  # devkit.tiny_data
# 320 in the COCO recipe. The tiny images are 96..128 px (make_tiny_coco's default), so
# little is resized; their objects are 20..70 px here, which the anchors below cover
# (the recipe's, scaled by 0.4: 19..70 px on levels 0-2).
input_size = 128

# A few hundred iterations: BN running statistics must follow the weights faster than
# with the recipe's momentum 0.03.
norm_cfg = dict(type='BN', momentum=0.1)
model = dict(
    # No download here: random init. With ImageNet weights on disk, use the base
    # config's init_cfg with checkpoint='/path/to/mobileone-s0.pth'.
    backbone=dict(norm_cfg=norm_cfg, init_cfg=dict(_delete_=True, type='Kaiming', layer='Conv2d')),
    neck=dict(norm_cfg=norm_cfg),
    bbox_head=dict(
        norm_cfg=norm_cfg,
        num_classes=4,
        anchor_generator=dict(
            strides=[16, 32, 64, 128, 128, 128],  # input / feature map size
            min_sizes=[19, 40, 60, 81, 101, 122],
            max_sizes=[40, 60, 81, 101, 122, 128],
        ),
    ),
)

# Few epochs: only flips (the recipe's Expand / MinIoURandomCrop / photometric
# distortion need hundreds of epochs to pay off).
train_pipeline = [
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
    drop_last=True,  # a last batch of one image cannot train BN on the 1x1 neck levels
    num_workers=1,
    # ~35 iterations per pass over the train images: two passes make one epoch (71
    # iterations), so validation and checkpoints come every 284 iterations.
    dataset=dict(
        times=2, dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline)
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# A short schedule from scratch: AdamW, warm-up, cosine decay, and an EMA of the weights
# (the paper's detection recipe has one too). From scratch, when the detector starts to
# localise varies with the seed; 10 epochs without EMA gave bbox mAP 0.31 or 0.18 by seed.
max_epochs = 16
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(
        type='CosineAnnealingLR',
        begin=0,
        T_max=max_epochs,
        end=max_epochs,
        by_epoch=True,
        eta_min=0,
    ),
]
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=4e-3, weight_decay=0.05))
custom_hooks = [
    dict(
        type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.002, update_buffers=True, priority=49
    )
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=4, max_keep_ckpts=1, save_best='coco/bbox_mAP'),
)
# Seeded (random init, sampling, flips), so the demo's mAP can be reproduced.
randomness = dict(seed=0)
