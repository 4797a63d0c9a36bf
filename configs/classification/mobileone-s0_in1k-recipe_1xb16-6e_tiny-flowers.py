# The ImageNet pretraining recipe (mobileone-s{0..4}_8xb32_in1k.py) run whole on the
# synthetic tiny classification set, scaled to 6 epochs on a 2-core CPU (about a minute):
# each of its three tricks shows in the log (mobileone_mm.RecipeLoggerHook, one line per
# epoch and per validation):
#   - weight decay annealed along a cosine, 1e-4 -> 1e-5 over the run (norm layers: 0);
#   - progressive learning: RandomResizedCrop 48 / 56 / 64 and RandAugment magnitude
#     2.1 / 4.9 / 7 from epochs 1 / 3 / 5 (the recipe's 160 / 192 / 224 and 0.3 / 0.7 / 1 x 7
#     from epochs 1 / 37 / 112, as S2-S4 have it; mmpretrain's S0 has no progressive stage);
#   - validation (every epoch) and every checkpoint on the EMA of the weights.
#   python tools/make_tiny_datasets.py flowers --out data/tiny_flowers
#   mim train mmpretrain configs/classification/mobileone-s0_in1k-recipe_1xb16-6e_tiny-flowers.py \
#       --work-dir work_dirs/pretrain_tiny
_base_ = './mobileone-s0_8xb32_in1k.py'

data_root = 'data/tiny_flowers'
metainfo = dict(classes=('disk', 'square', 'triangle', 'star'))  # devkit.tiny_data
size = 64  # 224 in the recipe; the tiny images are 80x80
max_epochs = 6  # 300
# ImageNet: 5005 iterations an epoch; here 160 train images / 16 = 10
iters_per_epoch = 10

data_preprocessor = dict(num_classes=4)
model = dict(head=dict(num_classes=4, topk=(1,)))

bgr_mean = _base_.data_preprocessor['mean'][::-1]
randaugment = dict(
    type='RandAugment',
    policies='timm_increasing',
    num_policies=2,
    total_level=10,
    magnitude_level=7,
    magnitude_std=0.5,
    hparams=dict(pad_val=[round(x) for x in bgr_mean]),
)


def stage(crop, magnitude):
    return [
        dict(type='LoadImageFromFile'),
        dict(type='RandomResizedCrop', scale=crop, backend='pillow'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(randaugment, magnitude_level=magnitude),
        dict(type='PackInputs'),
    ]


test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=size * 8 // 7, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        ann_file='train.txt',
        metainfo=metainfo,
        pipeline=stage(48, 7 * 0.3),
    ),
)
val_dataloader = dict(
    batch_size=20,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        ann_file='val.txt',
        metainfo=metainfo,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1,))  # 4 classes: no top-5
test_evaluator = val_evaluator

# The recipe's schedule in 6 epochs: SGD, one warm-up epoch (5 of 300), cosine to 1e-6;
# weight decay 1e-4 -> 1e-5 along a cosine over the whole run. lr 0.025: the recipe's 0.1
# scaled by the square root of the batch ratio (16 / 256). The linear rule (auto_scale_lr)
# gives 0.00625, too slow for 60 iterations from scratch; 0.1 itself blows the eval-mode
# activations up (logits in the thousands after 6 epochs).
optim_wrapper = dict(optimizer=dict(lr=0.025))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - 1,
        eta_min=1e-6,
        by_epoch=True,
        begin=1,
        end=max_epochs,
    ),
    dict(
        type='CosineAnnealingParamScheduler',
        param_name='weight_decay',
        eta_min_ratio=0.1,
        by_epoch=True,
        begin=0,
        end=max_epochs,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=16)

custom_hooks = [
    dict(
        type='SwitchRecipeHook',
        schedule=[
            dict(action_epoch=3, train_pipeline=stage(56, 7 * 0.7)),
            dict(action_epoch=5, train_pipeline=stage(64, 7 * 1.0)),
        ],
    ),
    # The recipe's EMA averages over 1 / 5e-4 = 2000 iterations, 0.4 of an ImageNet epoch;
    # the same 0.4 epoch here is 4 iterations.
    dict(
        type='EMAHook',
        momentum=1 / (0.4 * iters_per_epoch),
        priority='ABOVE_NORMAL',
        update_buffers=True,
    ),
    dict(type='mobileone_mm.RecipeLoggerHook'),
    # the deploy form (fused EMA weights) of each best checkpoint, beside it
    dict(type='mobileone_mm.SaveDeployCheckpointHook'),
]
default_hooks = dict(
    logger=dict(interval=5), checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='auto')
)
randomness = dict(seed=0)
