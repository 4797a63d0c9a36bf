# RTMDet with an ImageNet-pretrained MobileOne-S0: mmdet's RTMDet-tiny recipe (640x640,
# AdamW, 300 epochs of Mosaic / MixUp then 20 plain ones, EMA), only the backbone changed
# and a 1x1 reduction put before the neck. See README.md.
#
# Nearest RTMDet size: tiny. MobileOne-S0 fused has 1.05 M parameters and 2.24 GMACs at
# 640 (stages 2-4), CSPNeXt-tiny 2.35 M and 2.73 G; CSPNeXt-s (4.38 M, 5.37 G) is twice
# as big. So the neck and head keep RTMDet-tiny's width, 96.
_base_ = ['mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py', '../_base_/mobileone.py']

# RTMDet's norm and activation, for the backbone (BN eps stays 1e-5, as in the ImageNet
# training) and the neck.
norm_cfg = dict(type='SyncBN')
act_cfg = dict(type='SiLU', inplace=True)
width = 96  # neck and head channels: RTMDet-tiny's

model = dict(
    # The ImageNet weights were trained on RGB with these statistics; RTMDet's CSPNeXt
    # was trained on BGR (mean 103.53, ... and bgr_to_rgb=False in the base).
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True
    ),
    backbone=dict(
        _delete_=True,
        type='mobileone_mm.MobileOne',
        arch='s0',
        out_indices=(1, 2, 3),  # strides 8 / 16 / 32, as CSPNeXt's P3-P5
        norm_cfg=norm_cfg,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='https://download.openmmlab.com/mmclassification/v0/mobileone/'
            'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth',
        ),
    ),
    # CSPNeXtPAFPN works at the widths of its inputs. MobileOne's stage 4 is wide (S0:
    # 128 / 256 / 1024 channels, S2-S4: 2048 at stride 32, where CSPNeXt-tiny has 96 /
    # 192 / 384): fed directly, the neck would have 7.2 M parameters (S0; 42 M for S4)
    # against RTMDet-tiny's 2.2 M. So a 1x1 conv + BN + SiLU first brings every level to
    # the head's width, as PP-PicoDet's CSP-PAN and NanoDet-Plus's GhostPAN do, and the
    # PAFPN runs at that one width: 0.78 M parameters, 1.56 GMACs at 640 (RTMDet-tiny's
    # neck: 2.45 G).
    neck=[
        dict(
            type='ChannelMapper',
            in_channels=[128, 256, 1024],
            out_channels=width,
            kernel_size=1,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
        ),
        dict(
            type='CSPNeXtPAFPN',
            in_channels=[width] * 3,
            out_channels=width,
            num_csp_blocks=1,
            expand_ratio=0.5,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
        ),
    ],
    bbox_head=dict(in_channels=width, feat_channels=width),
)

# The recipe's optimizer already trains norm weights without decay (norm_decay_mult=0),
# which MobileOne's branch BN weights need; its two-stage pipeline switch
# (PipelineSwitchHook at epoch 280) and EMA are inherited unchanged.
