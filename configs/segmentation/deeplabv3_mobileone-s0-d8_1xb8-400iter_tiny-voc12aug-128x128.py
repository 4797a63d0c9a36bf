# The VOC12-aug recipe scaled to the synthetic tiny VOC (tools/make_tiny_datasets.py voc
# --out data/VOCdevkit) and a 2-core CPU, as the tiny ADE20K config: 128x128 crops, slim
# heads, a short AdamW schedule, no ImageNet weights. Same backbone (S0, output stride 8).
_base_ = './deeplabv3_mobileone-s0-d8_4xb4-40k_voc12aug-512x512.py'
crop_size = (128, 128)
iters = 400
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),
    decode_head=dict(channels=64),
    auxiliary_head=dict(channels=32),
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Pad', size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
voc = dict(type='PascalVOCDataset', data_root='data/VOCdevkit/VOC2012', pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        datasets=[  # VOC train (SegmentationClass) + SBD aug, as the base
            dict(
                voc,
                ann_file='ImageSets/Segmentation/train.txt',
                data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
            ),
            dict(
                voc,
                ann_file='ImageSets/Segmentation/aug.txt',
                data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
            ),
        ]
    ),
)
val_dataloader = dict(num_workers=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=iters, by_epoch=False)]
train_cfg = dict(max_iters=iters, val_interval=iters)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=iters))
