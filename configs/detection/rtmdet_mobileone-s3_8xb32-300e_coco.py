# RTMDet with an ImageNet-pretrained MobileOne-S3: the S2 config with RTMDet-m's size.
#
# Nearest RTMDet size: m. MobileOne-S3 fused has 8.03 M parameters and 15.46 GMACs at 640
# (stages 2-4), CSPNeXt-m 12.28 M and 15.62 G (CSPNeXt-s: 4.38 M, 5.37 G). So the neck
# and head take RTMDet-m's width, 192, and two CSP blocks per neck stage, its exp() on the
# box regression, and its wider scale jitter (RTMDet-l's pipelines: ratio 0.1-2.0).
_base_ = './rtmdet_mobileone-s2_8xb32-300e_coco.py'

width = 192
model = dict(
    backbone=dict(
        arch='s3',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s3_8xb32_in1k_20221110-c95eb3bf.pth')),
    neck=[
        dict(type='ChannelMapper', in_channels=[320, 768, 2048], out_channels=width,
             kernel_size=1, norm_cfg={{_base_.norm_cfg}}, act_cfg={{_base_.act_cfg}}),
        dict(type='CSPNeXtPAFPN', in_channels=[width] * 3, out_channels=width,
             num_csp_blocks=2, expand_ratio=0.5, norm_cfg={{_base_.norm_cfg}},
             act_cfg={{_base_.act_cfg}}),
    ],
    bbox_head=dict(in_channels=width, feat_channels=width, exp_on_reg=True))

# RTMDet-m's pipelines (mmdet rtmdet_l_8xb32-300e_coco.py, which m inherits): scale
# jitter 0.1-2.0 in both stages.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='CachedMosaic', img_scale=(640, 640), pad_val=114.0),
    dict(type='RandomResize', scale=(1280, 1280), ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(640, 640)),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(640, 640), pad_val=dict(img=(114, 114, 114))),
    dict(type='CachedMixUp', img_scale=(640, 640), ratio_range=(1.0, 1.0),
         max_cached_images=20, pad_val=(114, 114, 114)),
    dict(type='PackDetInputs')
]
train_pipeline_stage2 = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(640, 640), ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(640, 640)),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(640, 640), pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=280,
         switch_pipeline=train_pipeline_stage2)
]
