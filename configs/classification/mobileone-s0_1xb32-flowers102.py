# MobileOne-S0 fine-tuned from ImageNet on Oxford Flowers-102 (the seed's classification
# flow, in mmpretrain terms): mmpretrain's S0 recipe with our backbone, 102 classes, the
# data in CustomDataset layout and a fine-tuning schedule. Accuracy not measured here.
#   data/flowers102/jpg/image_00001.jpg ...
#   data/flowers102/train.txt, val.txt: lines "jpg/image_00001.jpg 76" (label 0..101)
_base_ = ['mmpretrain::mobileone/mobileone-s0_8xb32_in1k.py', '../_base_/mobileone.py']

data_preprocessor = dict(num_classes=102)
model = dict(
    backbone=dict(
        type='mobileone_mm.MobileOne',
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth',
        ),
    ),
    head=dict(num_classes=102),
)

data_root = 'data/flowers102'
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        ann_file='train.txt',
        pipeline={{_base_.train_pipeline}},
    )
)
val_dataloader = dict(
    batch_size=32,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        ann_file='val.txt',
        pipeline={{_base_.test_pipeline}},
    ),
)
test_dataloader = val_dataloader

# Fine-tuning on ~1k images: 100 epochs, SGD lr 0.01 for batch 32, warm-up and cosine
# decay; no EMA (the recipe's momentum 5e-4 suits 300 ImageNet epochs, it would lag here).
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(type='CosineAnnealingLR', T_max=95, eta_min=1e-6, by_epoch=True, begin=5, end=100),
]
train_cfg = dict(max_epochs=100, val_interval=5)
auto_scale_lr = dict(base_batch_size=32)
custom_hooks = []
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=2, save_best='auto'))
