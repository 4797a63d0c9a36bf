# The tiny run of the pretraining recipe (mobileone-s0_in1k-recipe_1xb16-6e_tiny-flowers.py)
# for the custom arch of mobileone-s0-narrow_8xb32_in1k.py (same arch dict; why its widths:
# there). Its checkpoints initialise the S0 detection and segmentation configs with only
# `arch` changed (README, "Pretraining").
_base_ = './mobileone-s0_in1k-recipe_1xb16-6e_tiny-flowers.py'

arch = dict(
    num_blocks=[2, 6, 10, 1],
    width_factor=[0.5, 0.75, 1.0, 2.0],
    num_conv_branches=[4, 4, 4, 4],
    num_se_blocks=[0, 0, 0, 0],
)
# _delete_: a dict replaces the base's arch name ('s0') instead of merging into it
model = dict(backbone=dict(arch=dict(_delete_=True, **arch)))
