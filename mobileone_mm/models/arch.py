"""The MobileOne arch table (paper / mmpretrain numbers), its checks, DeepLab's atrous
settings, and which arch a state dict holds."""

import math
import numbers
from typing import Dict, Union

from mmengine.utils import is_seq_of

from ..checkpoints.formats import is_fused
from ..checkpoints.io import CheckpointError, StateDict

# Stage widths are BASE_WIDTHS x width_factor; the stem has min(64, 64 x factor[0]).
# Every stage downsamples by 2 in its first block; SE sits on the last blocks of a stage.
BASE_WIDTHS = (64, 128, 256, 512)
ARCH_SETTINGS: Dict[str, dict] = {
    #              num_blocks       width_factor           conv branches  SE blocks
    's0': dict(
        num_blocks=[2, 8, 10, 1],
        width_factor=[0.75, 1.0, 1.0, 2.0],
        num_conv_branches=[4, 4, 4, 4],
        num_se_blocks=[0, 0, 0, 0],
    ),
    's1': dict(
        num_blocks=[2, 8, 10, 1],
        width_factor=[1.5, 1.5, 2.0, 2.5],
        num_conv_branches=[1, 1, 1, 1],
        num_se_blocks=[0, 0, 0, 0],
    ),
    's2': dict(
        num_blocks=[2, 8, 10, 1],
        width_factor=[1.5, 2.0, 2.5, 4.0],
        num_conv_branches=[1, 1, 1, 1],
        num_se_blocks=[0, 0, 0, 0],
    ),
    's3': dict(
        num_blocks=[2, 8, 10, 1],
        width_factor=[2.0, 2.5, 3.0, 4.0],
        num_conv_branches=[1, 1, 1, 1],
        num_se_blocks=[0, 0, 0, 0],
    ),
    's4': dict(
        num_blocks=[2, 8, 10, 1],
        width_factor=[3.0, 3.5, 3.5, 4.0],
        num_conv_branches=[1, 1, 1, 1],
        num_se_blocks=[0, 0, 5, 1],
    ),
}
NUM_STAGES = 4


def atrous_settings(output_stride: int) -> dict:
    """``strides`` and ``dilations`` for output stride 32, 16 or 8, by DeepLab's atrous
    rule: once the output stride is reached, each later stage stops striding and its
    dilation is the product of the strides removed so far."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride!r}.')
    strides, dilations, total, dilation = [], [], 2, 1  # the stem strides by 2
    for _ in range(NUM_STAGES):
        if total * 2 <= output_stride:
            total *= 2
            strides.append(2)
        else:
            dilation *= 2
            strides.append(1)
        dilations.append(dilation)
    return dict(strides=tuple(strides), dilations=tuple(dilations))


def stem_channels(arch: dict) -> int:
    return min(64, int(BASE_WIDTHS[0] * arch['width_factor'][0]))


def stage_channels(arch: dict) -> list:
    """Output channels of stage1..stage4 (the backbone's out_indices 0..3)."""
    return [int(base * factor) for base, factor in zip(BASE_WIDTHS, arch['width_factor'])]


def resolve_arch(arch: Union[str, dict]) -> dict:
    """'s0'..'s4' or a dict with the four keys of ARCH_SETTINGS, each four numbers."""
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise KeyError(
                f'Unknown MobileOne arch {arch!r}: use one of '
                f'{sorted(ARCH_SETTINGS)} or a dict with keys '
                f'{sorted(ARCH_SETTINGS["s0"])}.'
            )
        return {k: list(v) for k, v in ARCH_SETTINGS[arch].items()}
    if not isinstance(arch, dict):
        raise TypeError(f'MobileOne arch must be a name or a dict, got {type(arch).__name__}.')
    expected = set(ARCH_SETTINGS['s0'])
    if set(arch) != expected:
        raise ValueError(
            f'MobileOne dict arch needs exactly the keys {sorted(expected)}; '
            f'missing {sorted(expected - set(arch))}, '
            f'unknown {sorted(set(arch) - expected)}.'
        )
    given, arch = arch, {}
    for key, values in given.items():
        if hasattr(values, 'tolist') and not isinstance(values, (list, tuple)):
            values = values.tolist()  # a numpy array or a tensor
        # numbers.Real / Integral take numpy scalars too (np.int64 from an array, ...)
        if (
            isinstance(values, (str, bytes))
            or not is_seq_of(values, numbers.Real)
            or any(isinstance(v, bool) for v in values)
            or len(values) != NUM_STAGES
        ):
            raise ValueError(
                f'MobileOne arch[{key!r}] must be {NUM_STAGES} numbers '
                f'(one per stage), got {values!r}.'
            )
        if key != 'width_factor' and not all(isinstance(v, numbers.Integral) for v in values):
            raise ValueError(f'MobileOne arch[{key!r}] must be integers, got {values!r}.')
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f'MobileOne arch[{key!r}] must be finite numbers, got {values!r}.')
        arch[key] = [
            int(v) if isinstance(v, numbers.Integral) else float(v) for v in values
        ]  # plain Python numbers
    for i in range(NUM_STAGES):
        if arch['num_blocks'][i] < 1 or arch['num_conv_branches'][i] < 1:
            raise ValueError(
                f'MobileOne arch: stage {i + 1} needs at least one block and '
                f'one conv branch, got {arch!r}.'
            )
        if not 0 <= arch['num_se_blocks'][i] <= arch['num_blocks'][i]:
            raise ValueError(
                f'MobileOne arch: stage {i + 1} has '
                f'{arch["num_se_blocks"][i]} SE blocks but '
                f'{arch["num_blocks"][i]} blocks.'
            )
        if int(BASE_WIDTHS[i] * arch['width_factor'][i]) < 1:
            raise ValueError(
                f'MobileOne arch: width_factor {arch["width_factor"][i]} '
                f'gives stage {i + 1} no channels.'
            )
    return arch


def arch_name(arch: dict) -> str:
    """'s0'..'s4' when the dict is one of the table, else a compact description."""
    for name, settings in ARCH_SETTINGS.items():
        if all(list(settings[k]) == list(arch[k]) for k in settings):
            return name
    return 'custom(' + ', '.join(f'{k}={list(v)}' for k, v in arch.items()) + ')'


def infer_arch(backbone: StateDict) -> dict:
    """The arch dict of a backbone state dict (our keys), from the tensor shapes.
    num_conv_branches is None for a fused state dict (fusion erases it)."""
    arch = dict(num_blocks=[], width_factor=[], num_conv_branches=[], num_se_blocks=[])
    fused = is_fused(backbone)
    try:
        for s in range(1, NUM_STAGES + 1):
            blocks = {int(k.split('.')[1]) for k in backbone if k.startswith(f'stage{s}.')}
            last = max(blocks)
            conv = 'branch_reparam' if fused else 'branch_conv_list.0.conv'
            width = backbone[f'stage{s}.{last}.{conv}.weight'].shape[0]
            arch['num_blocks'].append((last + 1) // 2)
            arch['width_factor'].append(width / BASE_WIDTHS[s - 1])
            arch['num_conv_branches'].append(
                None
                if fused
                else len(
                    {
                        k.split('.')[3]
                        for k in backbone
                        if k.startswith(f'stage{s}.0.branch_conv_list.')
                    }
                )
            )
            arch['num_se_blocks'].append(
                len(
                    {
                        int(k.split('.')[1]) // 2
                        for k in backbone
                        if k.startswith(f'stage{s}.') and '.se.conv1.' in k
                    }
                )
            )
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            f'Incomplete MobileOne state dict: cannot read stage {s} ({error!r} missing).'
        ) from error
    return arch


def arch_matches(found: dict, arch: dict) -> bool:
    """Whether an inferred arch is ``arch``; a fused state dict (num_conv_branches None)
    says nothing about the branch counts, so they are not compared then."""
    return all(
        found[k] == arch[k] for k in found if not (k == 'num_conv_branches' and None in found[k])
    )


def describe_arch(arch: dict) -> str:
    if None in arch['num_conv_branches']:  # fused: name the table arch it can be
        for name in ARCH_SETTINGS:
            if arch_matches(arch, resolve_arch(name)):
                return f'MobileOne-{name} (fused)'
    return f'MobileOne-{arch_name(arch)}'


def check_arch(backbone: StateDict, model_arch: dict):
    """CheckpointError naming both archs when the weights are not of ``model_arch``."""
    found = infer_arch(backbone)
    stem = backbone.get(
        'stage0.branch_reparam.weight', backbone.get('stage0.branch_conv_list.0.conv.weight')
    )
    if not arch_matches(found, model_arch) or (
        stem is not None and stem.shape[0] != stem_channels(model_arch)
    ):
        raise CheckpointError(
            f'The checkpoint holds {describe_arch(found)} weights but the model is '
            f'MobileOne-{arch_name(model_arch)}: set arch to match the checkpoint or use a '
            f'{arch_name(model_arch)} checkpoint.'
        )
