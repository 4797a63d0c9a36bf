# RTMDet with an ImageNet-pretrained MobileOne-S1: the S0 config with RTMDet-s's size.
#
# Nearest RTMDet size: s. MobileOne-S1 fused has 3.48 M parameters and 6.72 GMACs at 640
# (stages 2-4), CSPNeXt-s 4.38 M and 5.37 G (CSPNeXt-tiny: 2.35 M, 2.73 G). So the neck
# and head take RTMDet-s's width, 128, and its stronger first-stage augmentation (MixUp
# on every image, larger Mosaic / MixUp caches, popped at random).
_base_ = './rtmdet_mobileone-s0_8xb32-300e_coco.py'

width = 128
model = dict(
    backbone=dict(
        arch='s1',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s1_8xb32_in1k_20221110-ceeef467.pth'
        ),
    ),
    neck=[  # a list is replaced, not merged: the S0 config's layers at these widths
        dict(_base_.model.neck[0], in_channels=[192, 512, 1280], out_channels=width),
        dict(_base_.model.neck[1], in_channels=[width] * 3, out_channels=width),
    ],
    bbox_head=dict(in_channels=width, feat_channels=width),
)

# RTMDet-s's first-stage pipeline (mmdet rtmdet_s_8xb32-300e_coco.py); its second stage is
# the one the S0 config's PipelineSwitchHook already holds. Stated whole, as mmdet does:
# RTMDet-tiny's differs by keys that RTMDet-s leaves out (CachedMosaic's
# max_cached_images and random_pop, CachedMixUp's random_pop and prob), which an override
# of the base's list cannot remove.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='CachedMosaic', img_scale=(640, 640), pad_val=114.0),
    dict(type='RandomResize', scale=(1280, 1280), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(640, 640)),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(640, 640), pad_val=dict(img=(114, 114, 114))),
    dict(
        type='CachedMixUp',
        img_scale=(640, 640),
        ratio_range=(1.0, 1.0),
        max_cached_images=20,
        pad_val=(114, 114, 114),
    ),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
