# SSDLite with an ImageNet-pretrained MobileOne-S2: the S0 config with this arch's
# ImageNet weights and stage 3 / 4 widths.
_base_ = './ssdlite_mobileone-s0_8xb24-600e_coco.py'

model = dict(
    backbone=dict(
        arch='s2',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s2_8xb32_in1k_20221110-9c7ecb97.pth'
        ),
    ),
    neck=dict(in_channels=(640, 2048), out_channels=(640, 2048, 512, 256, 256, 128)),
    bbox_head=dict(in_channels=(640, 2048, 512, 256, 256, 128)),
)
