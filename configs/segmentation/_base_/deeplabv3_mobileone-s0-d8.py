# DeepLabV3 with a dilated MobileOne-S0 (output stride 8): the change to mmseg's ResNet-50
# DeepLabV3 model, whatever the data. The ADE20K and VOC12-aug configs list this file
# beside mmseg's recipe for their data and write `model = _base_.deeplabv3_mobileone`:
# a base cannot hold `model` itself, since mmengine refuses a key that two bases define
# and mmseg's recipe has one. The other archs inherit the S0 config of their data and
# state their own widths and weights (a file inherits one chain of data: a VOC twin
# cannot inherit its ADE20K config, only share this part with it).
_base_ = '../../_base_/mobileone.py'  # custom_imports
deeplabv3_mobileone = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mobileone_mm.MobileOne',
        arch='s0',
        out_indices=(2, 3),  # stage3 (auxiliary head), stage4 (ASPP head)
        strides=(2, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth',
        ),
    ),
    decode_head=dict(in_channels=1024, in_index=1),
    auxiliary_head=dict(in_channels=256, in_index=0),
)
