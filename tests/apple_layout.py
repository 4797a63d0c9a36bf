"""Apple ml-mobileone's key layout (mobileone.py of apple/ml-mobileone), written from our
(mmpretrain) layout by the tests, independently of checkpoints/formats.py: per block
rbr_conv.{j}.conv / .bn, rbr_scale.conv / .bn, rbr_skip (BN), reparam_conv when fused,
se.reduce / se.expand; classifier `linear`; stages named stage0..stage4 like ours."""

TO_APPLE = [
    ('backbone.', ''),
    ('head.fc.', 'linear.'),
    ('.norm.', '.bn.'),
    ('branch_conv_list', 'rbr_conv'),
    ('branch_scale', 'rbr_scale'),
    ('branch_norm', 'rbr_skip'),
    ('branch_reparam', 'reparam_conv'),
    ('se.conv1.conv', 'se.reduce'),
    ('se.conv2.conv', 'se.expand'),
]


def to_apple(state, module_prefix=False):
    """An mmpretrain-layout (classifier or backbone) state dict in Apple's layout, keys
    under ``module.`` as DataParallel saves them when ``module_prefix``."""
    out = {}
    for key, value in state.items():
        for ours, apple in TO_APPLE:
            key = key.replace(ours, apple)
        out[('module.' if module_prefix else '') + key] = value
    return out
