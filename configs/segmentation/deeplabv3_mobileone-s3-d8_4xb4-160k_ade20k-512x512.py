_base_ = './deeplabv3_mobileone-s0-d8_4xb4-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='s3',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s3_8xb32_in1k_20221110-c95eb3bf.pth'
        ),
    ),
    decode_head=dict(in_channels=2048),
    auxiliary_head=dict(in_channels=768),
)
