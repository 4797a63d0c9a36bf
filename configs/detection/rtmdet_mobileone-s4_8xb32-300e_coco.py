# RTMDet with an ImageNet-pretrained MobileOne-S4: the S3 config (RTMDet-m's size) with
# this arch's weights and widths.
#
# Nearest RTMDet size: m. MobileOne-S4 fused has 12.79 M parameters and 24.29 GMACs at
# 640 (stages 2-4), CSPNeXt-m 12.28 M and 15.62 G.
_base_ = './rtmdet_mobileone-s3_8xb32-300e_coco.py'

model = dict(
    backbone=dict(
        arch='s4',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s4_8xb32_in1k_20221110-28d888cb.pth'
        ),
    ),
    neck=[  # a list is replaced, not merged: the PAFPN is the S3 config's
        dict(_base_.model.neck[0], in_channels=[448, 896, 2048]),
        _base_.model.neck[1],
    ],
)
