# The Flowers-102 config on the synthetic tiny set, sized for a 2-core CPU (a few minutes):
#   python tools/make_tiny_datasets.py flowers --out data/tiny_flowers
#   mim train mmpretrain configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py \
#       --work-dir work_dirs/tiny_flowers
_base_ = './mobileone-s0_1xb32-flowers102.py'

data_root = 'data/tiny_flowers'
metainfo = dict(classes=('disk', 'square', 'triangle', 'star'))  # devkit.tiny_data
size = 64  # 224 in the recipe

data_preprocessor = dict(num_classes=4)
# No download here: random init (with ImageNet weights on disk, keep the base init_cfg
# with checkpoint='/path/to/mobileone-s0.pth').
model = dict(backbone=dict(init_cfg=None), head=dict(num_classes=4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=size, crop_ratio_range=(0.5, 1.0), backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=size * 8 // 7, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1,))  # 4 classes: no top-5
test_evaluator = val_evaluator

# A short schedule from scratch, seeded: AdamW, one warm-up epoch, cosine decay.
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=4e-3, weight_decay=0.05))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True,
    ),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=10, T_max=9, eta_min=0),
]
train_cfg = dict(max_epochs=10, val_interval=5)
default_hooks = dict(logger=dict(interval=5))
randomness = dict(seed=0)
