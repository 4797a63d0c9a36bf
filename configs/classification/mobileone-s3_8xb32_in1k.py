# MobileOne-S3 pretrained on ImageNet-1k with the paper's recipe, with our backbone.
# mmpretrain's S3 config is its S2 config with arch='s3' (same schedule, progressive
# learning, EMA), so ours is our S2 config with arch='s3'.
_base_ = './mobileone-s2_8xb32_in1k.py'

model = dict(backbone=dict(arch='s3'))
