# Output stride 16, the cheaper setting: stage 4 stops striding and dilates 2, and the ASPP
# rates halve (as in DeepLabV3 and mmseg's -d16 configs).
_base_ = './deeplabv3_mobileone-s4-d8_4xb4-40k_voc12aug-512x512.py'
model = dict(
    backbone=dict(strides=(2, 2, 2, 1), dilations=(1, 1, 1, 2)),
    decode_head=dict(dilations=(1, 6, 12, 18)),
)
