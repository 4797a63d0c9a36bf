"""The project's speed targets, judged on the measured rows."""

from typing import Dict, List

TARGETS_TEXT = dict(
    fused_vs_timm='ours fused / timm fused <= 1.0 (every arch, {size})',
    fused_vs_mmpretrain='ours fused / mmpretrain fused <= 1.0 (every arch, {size})',
    mobilenetv2_vs_s0='MobileNetV2 (BN folded) / ours fused S0 >= 2.5 ({size})',
    train_vs_fused_s0='ours train / ours fused, S0 >= 4 ({size})',
    optimized_vs_peers='ours optimized / timm and mmpretrain fused <= 0.6 (S0, S1, {size})',
    train_step_vs_mmpretrain='ours / mmpretrain, one training step of S0 <= 0.75 ({train})',
    int8_vs_peers='ours int8 / faster of timm and mmpretrain fused (fp32) <= 0.30 (S0, S1, {size})',
)


def lookup(rows, section, **keys) -> Dict[str, dict]:
    return {
        r['form']: r
        for r in rows
        if r['section'] == section and all(r.get(k) == v for k, v in keys.items())
    }


def best_peer(group: Dict[str, dict]) -> tuple:
    """(form, ms) of the faster of timm's and mmpretrain's fused MobileOne."""
    return min(
        ((form, group[form]['median_ms']) for form in ('timm_fused', 'mmpretrain_fused')),
        key=lambda item: item[1],
    )


def target_size(result: dict) -> int:
    sizes = list(result['settings']['sizes'])
    return 320 if 320 in sizes else sizes[len(sizes) // 2]


def evaluate_targets(result: dict) -> List[dict]:
    """The project's speed targets at 320x320 (or the middle size measured), each
    with the measured value(s) and pass / fail; a target whose models were not measured
    is left out."""
    rows, size = result['rows'], target_size(result)
    groups = {
        arch: lookup(rows, 'backbone', arch=arch, size=size) for arch in result['settings']['archs']
    }
    ratio = lambda g, a, b: g[a]['median_ms'] / g[b]['median_ms']  # noqa: E731
    targets = []

    settings = result['settings']
    train = f'batch {settings["train_batch"]}, {settings["train_size"]}x{settings["train_size"]}'

    def add(key, values, passed):
        text = TARGETS_TEXT[key].format(size=f'{size}x{size}', train=train)
        targets.append(dict(key=key, target=text, values=values, passed=bool(passed)))

    for key, peer in (('fused_vs_timm', 'timm_fused'), ('fused_vs_mmpretrain', 'mmpretrain_fused')):
        values = {a: ratio(g, 'ours_fused', peer) for a, g in groups.items()}
        add(key, values, all(v <= 1.0 for v in values.values()))
    if 's0' in groups and 'mobilenetv2_folded' in groups['s0']:
        g = groups['s0']
        value = ratio(g, 'mobilenetv2_folded', 'ours_fused')
        add(
            'mobilenetv2_vs_s0',
            dict(s0=value, unfolded=ratio(g, 'mobilenetv2', 'ours_fused')),
            value >= 2.5,
        )
    if 's0' in groups:
        value = ratio(groups['s0'], 'ours_train', 'ours_fused')
        add('train_vs_fused_s0', dict(s0=value), value >= 4)
    values = {}
    for arch in ('s0', 's1'):
        if arch in groups:
            for peer in ('timm_fused', 'mmpretrain_fused'):
                values[f'{arch} / {peer}'] = ratio(groups[arch], 'ours_optimized', peer)
    if values:
        add('optimized_vs_peers', values, all(v <= 0.6 for v in values.values()))
    values = {
        f'{a} / {best_peer(g)[0]}': g['ours_int8']['median_ms'] / best_peer(g)[1]
        for a, g in groups.items()
        if a in ('s0', 's1') and 'ours_int8' in g
    }
    if values:
        add('int8_vs_peers', values, all(v <= 0.30 for v in values.values()))
    train_s0 = lookup(rows, 'train_step', arch='s0')
    if train_s0:
        value = ratio(train_s0, 'ours_train_step', 'mmpretrain_train_step')
        add('train_step_vs_mmpretrain', dict(s0=value), value <= 0.75)
    return targets
