# A custom MobileOne pretrained with S0's ImageNet recipe: a backbone for SSDLite /
# DeepLabV3 that costs 27 % fewer multiply-adds than S0 (0.41 instead of 0.56 GMACs at
# 320x320, 1.04 instead of 1.43 at 512x512, fused backbone) and feeds the heads the same
# features in width.
#
# Why these widths: at detection and segmentation input sizes most of S0's cost is in
# its early, high-resolution stages, while the heads read only stage 3 (stride 16, 256
# channels) and stage 4 (stride 32, 1024). So stage 1 and 2 are narrowed (alpha 0.5 and
# 0.75: 32 and 96 channels instead of 48 and 128) and stage 2 has 6 blocks instead of 8;
# stages 3 and 4 keep S0's widths, and the S0 detection and segmentation configs take
# this backbone with only `arch` changed (README, "Pretraining").
_base_ = './mobileone-s0_8xb32_in1k.py'

arch = dict(
    num_blocks=[2, 6, 10, 1],
    width_factor=[0.5, 0.75, 1.0, 2.0],
    num_conv_branches=[4, 4, 4, 4],
    num_se_blocks=[0, 0, 0, 0],
)
# _delete_: a dict replaces the base's arch name ('s0') instead of merging into it
model = dict(backbone=dict(arch=dict(_delete_=True, **arch)))
