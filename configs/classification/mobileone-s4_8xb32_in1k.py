# MobileOne-S4 pretrained on ImageNet-1k with the paper's recipe, with our backbone.
# mmpretrain's S4 config is its S2 config with arch='s4' (same schedule, progressive
# learning, EMA), so ours is our S2 config with arch='s4'.
_base_ = './mobileone-s2_8xb32_in1k.py'

model = dict(backbone=dict(arch='s4'))
