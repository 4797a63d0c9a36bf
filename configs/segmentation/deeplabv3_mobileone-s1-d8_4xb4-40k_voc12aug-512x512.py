_base_ = './deeplabv3_mobileone-s0-d8_4xb4-40k_voc12aug-512x512.py'
model = dict(
    backbone=dict(
        arch='s1',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s1_8xb32_in1k_20221110-ceeef467.pth'
        ),
    ),
    decode_head=dict(in_channels=1280),
    auxiliary_head=dict(in_channels=512),
)
