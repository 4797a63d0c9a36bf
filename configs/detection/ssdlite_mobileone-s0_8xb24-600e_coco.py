# SSDLite with an ImageNet-pretrained MobileOne-S0: mmdet's SSDLite-MobileNetV2
# recipe (320x320, SGD, 600 epochs), only the backbone changed. See README.md.
_base_ = ['mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', '../_base_/mobileone.py']
custom_imports = dict(
    imports=_base_.custom_imports.imports
    + [
        'mobileone_mm.models.ssd_head',  # mmdet 3.3's SSDHead, able to predict
    ],
    allow_failed_imports=False,
)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mobileone_mm.MobileOne',
        arch='s0',
        out_indices=(2, 3),  # stage3 (stride 16), stage4 (stride 32), as MobileNetV2's
        # SSDLite's BN momentum; eps stays 1e-5, as in the ImageNet training
        norm_cfg=dict(type='BN', momentum=0.03),
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth',
        ),
    ),
    neck=dict(in_channels=(256, 1024), out_channels=(256, 1024, 512, 256, 256, 128)),
    # mmdet 3.3.0's SSDHead cannot predict (no loss_cls); ours can
    bbox_head=dict(type='mobileone_mm.SSDHead', in_channels=(256, 1024, 512, 256, 256, 128)),
)

# MobileOne's branch BN weights scale its branches: decaying them towards 0 shrinks
# branches, so mmpretrain trains them without weight decay; keep that when fine-tuning.
optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
