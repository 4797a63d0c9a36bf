# RetinaNet with an ImageNet-pretrained MobileOne-S1: mmdet's RetinaNet R-50 FPN 1x recipe
# (1333x800, SGD lr 0.01, 12 epochs, 8 GPUs x 2 images), only the backbone changed, so
# results compare with its 36.5 box AP. See README.md.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/mobileone.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mobileone_mm.MobileOne',
        arch='s1',
        # strides 8 / 16 / 32: ResNet's C3-C5, the levels RetinaNet's FPN starts from
        out_indices=(1, 2, 3),
        # as the R-50 recipe: stem and first stage frozen, BN statistics frozen (2 images
        # per GPU are too few to estimate them)
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s1_8xb32_in1k_20221110-ceeef467.pth',
        ),
    ),
    # P3-P5 from the three outputs (start_level 0: there is no C2 input to skip), P6 / P7
    # from C5 ('on_input', as the recipe); the recipe's 256 channels and head.
    neck=dict(in_channels=[192, 512, 1280], start_level=0),
)

# MobileOne's branch BN weights scale its branches: decaying them towards 0 shrinks
# branches, so mmpretrain trains them without weight decay; keep that when fine-tuning.
optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
