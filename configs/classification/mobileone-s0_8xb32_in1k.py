# MobileOne-S0 pretrained on ImageNet-1k with the paper's recipe, as mmpretrain 1.2 ships
# it, with our backbone (same state-dict keys, so the checkpoints are interchangeable).
# Stated here: only what differs from mmpretrain's config.
#
# What the recipe assumes: 8 processes x 32 images (batch 256), ImageNet-1k's ~1.28 M
# train images (5005 iterations an epoch), 300 epochs; SGD lr 0.1 (5 warm-up epochs,
# cosine to 1e-6), weight decay annealed 1e-4 -> 1e-5 by a cosine, no decay on norm
# layers, label smoothing 0.1, EMA of the weights (momentum 5e-4 an iteration, i.e.
# decay 0.9995: it averages over ~2000 iterations, 0.4 of an epoch; update_buffers=True
# averages the BN statistics too). S0 has no progressive learning in mmpretrain's recipe;
# S1-S4 add it (SwitchRecipeHook). Checkpoints are written every epoch and hold the EMA
# weights (see README, "Pretraining").
#
# Other batch sizes: `mim train mmpretrain CONFIG --auto-scale-lr` (with --gpus N or
# train_dataloader.batch_size=B) scales the learning rate linearly by (N x B) / 256
# (auto_scale_lr.base_batch_size); the EMA momentum, warm-up and the schedule in epochs
# stay as they are (with fewer, larger iterations an epoch the EMA then averages over
# more epochs: scale momentum by the same factor to keep it at 0.4 of an epoch).
_base_ = ['mmpretrain::mobileone/mobileone-s0_8xb32_in1k.py', '../_base_/mobileone.py']

model = dict(backbone=dict(type='mobileone_mm.MobileOne'))

# The weight-decay cosine ends at 0.1 x each parameter group's own decay (1e-4 -> 1e-5)
# instead of at eta_min=1e-5 for every group: mmengine's eta_min pulls every group towards
# it, the norm layers' too, so with mmpretrain's line the BN weights and biases that
# norm_decay_mult=0 exempts from decay get a decay rising from 0 to 1e-5 (and MobileOne's
# branch BN weights scale its branches: decay shrinks them).
param_scheduler = _base_.param_scheduler[:2] + [
    dict(
        type='CosineAnnealingParamScheduler',
        param_name='weight_decay',
        eta_min_ratio=0.1,
        by_epoch=True,
        begin=0,
        end=300,
    )
]
# the log shows the recipe at work: image size, crop / RandAugment, weight decay, EMA
custom_hooks = _base_.custom_hooks + [dict(type='mobileone_mm.RecipeLoggerHook')]
