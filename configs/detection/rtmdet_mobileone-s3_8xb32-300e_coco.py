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
            'mobileone-s3_8xb32_in1k_20221110-c95eb3bf.pth'
        ),
    ),
    neck=[  # a list is replaced, not merged: the S2 config's layers at these widths
        dict(_base_.model.neck[0], in_channels=[320, 768, 2048], out_channels=width),
        dict(_base_.model.neck[1], in_channels=[width] * 3, out_channels=width, num_csp_blocks=2),
    ],
    bbox_head=dict(in_channels=width, feat_channels=width, exp_on_reg=True),
)

# RTMDet-m's pipelines (mmdet rtmdet_l_8xb32-300e_coco.py, which m inherits): the S2
# config's two stages with scale jitter 0.1-2.0.
train_pipeline = [
    dict(step, ratio_range=(0.1, 2.0)) if step['type'] == 'RandomResize' else step
    for step in _base_.train_pipeline
]
train_pipeline_stage2 = [
    dict(step, ratio_range=(0.1, 2.0)) if step['type'] == 'RandomResize' else step
    for step in _base_.train_pipeline_stage2
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [
    _base_.custom_hooks[0],  # EMAHook
    dict(_base_.custom_hooks[1], switch_pipeline=train_pipeline_stage2),  # at epoch 280
]
