# SSDLite with an ImageNet-pretrained MobileOne-S4: the S0 config with this arch's
# ImageNet weights and stage 3 / 4 widths.
_base_ = './ssdlite_mobileone-s0_8xb24-600e_coco.py'

model = dict(
    backbone=dict(
        arch='s4',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s4_8xb32_in1k_20221110-28d888cb.pth'
        ),
    ),
    neck=dict(in_channels=(896, 2048), out_channels=(896, 2048, 512, 256, 256, 128)),
    bbox_head=dict(in_channels=(896, 2048, 512, 256, 256, 128)),
)
