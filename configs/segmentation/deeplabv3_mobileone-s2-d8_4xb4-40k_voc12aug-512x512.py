_base_ = './deeplabv3_mobileone-s0-d8_4xb4-40k_voc12aug-512x512.py'
model = dict(
    backbone=dict(
        arch='s2',
        init_cfg=dict(
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s2_8xb32_in1k_20221110-9c7ecb97.pth'
        ),
    ),
    decode_head=dict(in_channels=2048),
    auxiliary_head=dict(in_channels=640),
)
