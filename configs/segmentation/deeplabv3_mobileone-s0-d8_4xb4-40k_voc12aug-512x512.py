# DeepLabV3 with a dilated MobileOne-S0 (output stride 8) on VOC12-aug: mmseg's ResNet-50
# recipe (heads, data, 40k schedule) with the backbone swapped; the other archs inherit
# this delta.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-40k_voc12aug-512x512.py'
custom_imports = dict(imports=[
    'mobileone_mm',  # registers mobileone_mm.MobileOne
    # the stack fixes (docs/stack.md): drop a line to leave that fix out
    'mobileone_mm.fixes.safe_loading',         # mmengine loads its checkpoints on torch>=2.6
    'mobileone_mm.fixes.durable_checkpoints',  # a killed run resumes from its work dir
    'mobileone_mm.fixes.cpu_distributed',      # --launcher pytorch and SyncBN without GPU
], allow_failed_imports=False)
model = dict(
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
            'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth')),
    decode_head=dict(in_channels=1024, in_index=1),
    auxiliary_head=dict(in_channels=256, in_index=0))
