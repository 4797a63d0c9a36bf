# RetinaNet with an ImageNet-pretrained MobileOne-S4: the S1 config with this arch's
# weights and widths (its C5 is 2048 wide, as ResNet-50's).
_base_ = './retinanet_mobileone-s1_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='s4',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s4_8xb32_in1k_20221110-28d888cb.pth'
        ),
    ),
    neck=dict(in_channels=[448, 896, 2048]),
)
