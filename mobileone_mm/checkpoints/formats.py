"""The published MobileOne weight layouts and their conversion to ours.

Formats recognised by ``convert_state_dict`` (all converted to mmpretrain's classifier
layout ``backbone.*`` + ``head.fc.*``, which is also ours):

* mmpretrain / ours: ``backbone.stage{0..4}.{i}.branch_conv_list.{j}.conv``,
  ``branch_scale``, ``branch_norm``, ``se.conv1.conv`` / ``se.conv2.conv``,
  ``branch_reparam`` (deploy form), ``head.fc``; also a bare backbone (``stage0.*``).
* Apple ml-mobileone, unfused and fused (``.pth.tar``, optional ``module.`` prefix):
  ``stage{0..4}.{i}.rbr_conv.{j}.conv/bn``, ``rbr_scale``, ``rbr_skip``, ``reparam_conv``,
  ``se.reduce`` / ``se.expand``, ``linear``.
* timm ``mobileone_s*`` (``.pth``, ``.bin`` or ``.safetensors``): ``stem``,
  ``stages.{s}.{i}``, ``conv_kxk.{j}.conv/bn``, ``conv_scale``, ``identity``,
  ``reparam_conv``, ``attn.fc1`` / ``attn.fc2``, ``head.fc``.

Only keys are renamed here; which arch a state dict holds is models/arch.py's question.
"""

import re
from collections import defaultdict
from typing import Tuple

import numpy as np
import torch

from .io import CheckpointError, StateDict

# Published ImageNet-1k checkpoints (targets, not reproduced here; see README).
MMPRETRAIN_URLS = {
    's0': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
    'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth',
    's1': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
    'mobileone-s1_8xb32_in1k_20221110-ceeef467.pth',
    's2': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
    'mobileone-s2_8xb32_in1k_20221110-9c7ecb97.pth',
    's3': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
    'mobileone-s3_8xb32_in1k_20221110-c95eb3bf.pth',
    's4': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
    'mobileone-s4_8xb32_in1k_20221110-28d888cb.pth',
}


def _rename(state_dict: StateDict, rules) -> StateDict:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


APPLE_RULES = [
    (r'^module\.', ''),
    (r'^linear\.', 'head.fc.'),
    (r'\.rbr_conv\.(\d+)\.bn\.', r'.branch_conv_list.\1.norm.'),
    (r'\.rbr_conv\.', '.branch_conv_list.'),
    (r'\.rbr_scale\.bn\.', '.branch_scale.norm.'),
    (r'\.rbr_scale\.', '.branch_scale.'),
    (r'\.rbr_skip\.', '.branch_norm.'),
    (r'\.reparam_conv\.', '.branch_reparam.'),
    (r'\.se\.reduce\.', '.se.conv1.conv.'),
    (r'\.se\.expand\.', '.se.conv2.conv.'),
    (r'^(stage\d)', r'backbone.\1'),
]
TIMM_RULES = [
    (r'^module\.', ''),
    (r'^stem\.', 'backbone.stage0.'),
    (r'^stages\.(\d+)\.', lambda m: f'backbone.stage{int(m.group(1)) + 1}.'),
    (r'\.conv_kxk\.(\d+)\.bn\.', r'.branch_conv_list.\1.norm.'),
    (r'\.conv_kxk\.', '.branch_conv_list.'),
    (r'\.conv_scale\.bn\.', '.branch_scale.norm.'),
    (r'\.conv_scale\.', '.branch_scale.'),
    (r'\.identity\.', '.branch_norm.'),
    (r'\.reparam_conv\.', '.branch_reparam.'),
    (r'\.attn\.fc1\.', '.se.conv1.conv.'),
    (r'\.attn\.fc2\.', '.se.conv2.conv.'),
]


def detect_format(state_dict: StateDict) -> str:
    """'mmpretrain', 'apple' or 'timm'; CheckpointError for anything else."""
    keys = [re.sub(r'^module\.', '', k) for k in state_dict]
    if any(re.match(r'(backbone\.)?stage0\.(branch_|se\.)', k) for k in keys):
        return 'mmpretrain'
    if any(re.match(r'stage0\.(rbr_|reparam_conv)', k) for k in keys):
        return 'apple'
    if any(k.startswith('stem.') for k in keys) and any(
        re.match(r'stages\.\d+\.\d+\.(conv_kxk|reparam_conv)', k) for k in keys
    ):
        return 'timm'
    sample = ', '.join(list(state_dict)[:4]) or 'no keys at all'
    wrapped = [k for k in ('state_dict', 'model') if isinstance(state_dict.get(k), dict)]
    hint = (
        f" It is a whole checkpoint: pass its '{wrapped[0]}' entry "
        f'(mobileone_mm.checkpoints.io.state_dict_of).'
        if wrapped
        else ' Is it the checkpoint of another model?'
    )
    raise CheckpointError(
        f'Not a MobileOne checkpoint: its keys ({sample}, ...) match none of the known '
        f'formats (mmpretrain `backbone.stage0.branch_*`, Apple `stage0.rbr_*`, timm '
        f'`stem.conv_kxk`).{hint}'
    )


def _as_tensors(state_dict: StateDict) -> StateDict:
    """numpy arrays and scalars become tensors (same values, same dtype); anything else
    that is not a tensor is refused, naming the key."""
    out = {}
    for key, value in state_dict.items():
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype != object:
            value = torch.from_numpy(np.array(value))
        elif not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f'State dict entry {key!r} is a {type(value).__name__}, '
                f'not a tensor: pass the state dict of weights only '
                f'(mobileone_mm.checkpoints.io.state_dict_of).'
            )
        out[key] = value
    return out


_BN = ('weight', 'bias', 'running_mean', 'running_var')


def check_complete(backbone: StateDict):
    """CheckpointError naming what is missing from a backbone state dict (our keys, no
    prefix): a stage, a block in a stage's sequence, or part of a layer (a BN without its
    running statistics, a branch conv without its BN, a fused conv or SE without its bias).
    What is not there at all (a branch, SE) is the arch's business: models/arch.py."""
    stages = {k.split('.')[0] for k in backbone}
    problems = [f'no stage{i}' for i in range(5) if f'stage{i}' not in stages]
    for i in range(1, 5):  # stage0 is one block, without a number
        blocks = sorted(
            {
                int(k.split('.')[1])
                for k in backbone
                if k.startswith(f'stage{i}.') and k.split('.')[1].isdigit()
            }
        )
        if blocks and blocks != list(range(blocks[-1] + 1)):
            gaps = sorted(set(range(blocks[-1] + 1)) - set(blocks))
            problems.append(f'stage{i} without block(s) {gaps}')
    leaves = defaultdict(set)
    for key in backbone:
        module, _, leaf = key.rpartition('.')
        leaves[module].add(leaf)
    for module, found in leaves.items():
        if module.endswith(('.norm', 'branch_norm')):
            need = _BN
        elif module.endswith(('branch_reparam', '.se.conv1.conv', '.se.conv2.conv')):
            need = ('weight', 'bias')
        else:
            need = ()
        lacking = [leaf for leaf in need if leaf not in found]
        if lacking:
            problems.append(f'{module} without {", ".join(lacking)}')
        if (
            module.endswith('.conv')
            and '.se.' not in module
            and module[: -len('.conv')] + '.norm' not in leaves
        ):
            problems.append(f'{module} without its BN ({module[: -len(".conv")]}.norm)')
    if problems:
        more = f' and {len(problems) - 3} more' if len(problems) > 3 else ''
        raise CheckpointError(
            f'Incomplete MobileOne state dict: {"; ".join(problems[:3])}'
            f'{more}. Was the file cut short or filtered? Use the '
            f'complete checkpoint.'
        )


def convert_state_dict(state_dict: StateDict, complete: bool = True) -> Tuple[StateDict, str]:
    """Any published MobileOne state dict -> (mmpretrain classifier layout, source format).

    Keys other than the backbone's and the classifier's pass through unchanged; numpy
    values become tensors, any other value that is not a tensor is refused. With
    ``complete``, so is a backbone with parts missing (``check_complete``); the
    ``Pretrained`` init with ``strict=False`` passes False and logs missing keys by name
    instead, as mmengine does. Which arch the weights are of:
    ``mobileone_mm.models.arch.check_arch``.
    """
    fmt = detect_format(state_dict)
    state_dict = _as_tensors(state_dict)
    if fmt == 'apple':
        converted = _rename(state_dict, APPLE_RULES)
    elif fmt == 'timm':
        converted = _rename(
            {k: v for k, v in state_dict.items() if not k.startswith('final_conv.')}, TIMM_RULES
        )
    elif any(k.startswith('stage0.') for k in state_dict):  # a bare backbone
        converted = {
            f'backbone.{k}' if k.startswith('stage') else k: v for k, v in state_dict.items()
        }
    else:
        converted = dict(state_dict)
    if complete:
        check_complete(backbone_state_dict(converted))
    return converted, fmt


def backbone_state_dict(state_dict: StateDict) -> StateDict:
    """The ``backbone.*`` entries of a converted state dict, prefix removed."""
    return {k[len('backbone.') :]: v for k, v in state_dict.items() if k.startswith('backbone.')}


def is_fused(state_dict: StateDict) -> bool:
    return any('.branch_reparam.' in k for k in state_dict)
