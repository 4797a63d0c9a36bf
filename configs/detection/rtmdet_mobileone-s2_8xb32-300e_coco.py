# RTMDet with an ImageNet-pretrained MobileOne-S2: the S1 config (RTMDet-s's size) with
# this arch's weights and widths.
#
# Nearest RTMDet size: s. MobileOne-S2 fused has 5.76 M parameters and 10.58 GMACs at 640
# (stages 2-4): in parameters nearer CSPNeXt-s (4.38 M) than CSPNeXt-m (12.28 M), in
# compute between them (5.37 / 15.62 G).
_base_ = './rtmdet_mobileone-s1_8xb32-300e_coco.py'

model = dict(
    backbone=dict(
        arch='s2',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s2_8xb32_in1k_20221110-9c7ecb97.pth'
        ),
    ),
    neck=[  # a list is replaced, not merged: the PAFPN is the S1 config's
        dict(_base_.model.neck[0], in_channels=[256, 640, 2048]),
        _base_.model.neck[1],
    ],
)
