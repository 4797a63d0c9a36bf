# DeepLabV3 with a dilated MobileOne-S0 (output stride 8) on ADE20K: mmseg's ResNet-50
# recipe (heads, data, 160k schedule) with the backbone swapped (_base_/, shared with the
# VOC12-aug config). The other archs inherit this config.
_base_ = [
    'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py',
    './_base_/deeplabv3_mobileone-s0-d8.py',
]
model = _base_.deeplabv3_mobileone
