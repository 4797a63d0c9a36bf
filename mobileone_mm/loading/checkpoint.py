"""A config and a checkpoint -> the trained model: the checkpoint read by the one loader
(``checkpoints.io``), loaded strictly into the form of the config it fits (train form, or
the deploy form for a fused checkpoint), keys and shapes that differ named.
"""

import copy
from typing import Tuple

import torch.nn as nn
from mmengine.config import Config
from mmengine.runner import load_state_dict

from ..checkpoints.formats import is_fused
from ..checkpoints.io import (
    CheckpointError,
    check_weights,
    describe_mismatch,
    load_checkpoint,
    state_dict_of,
)
from .config import DeployError, build_model, check_config_file, deploy_config, load_config


def _check_reparameterizable(model: nn.Module, cfg: Config):
    if not any(callable(getattr(m, 'switch_to_deploy', None)) for m in model.modules()):
        backbone = cfg.model.get('backbone', {}).get('type')
        raise DeployError(
            f'The model ({cfg.model.get("type")} with backbone {backbone}) '
            f'has no re-parameterizable block: this tool is for models with '
            f"a MobileOne backbone (type='mobileone_mm.MobileOne')."
        )


def load_strict(model: nn.Module, state_dict: dict, what: str):
    """Load every tensor, or CheckpointError naming the keys and shapes that differ, or
    the first corrupt value (checkpoints.io.check_weights)."""
    check_weights(state_dict, what)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and 'num_batches_tracked' not in k]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f'{k} {tuple(v.shape)} (model {tuple(own[k].shape)})'
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        hint = ''
        if is_fused(state_dict) != is_fused(own):
            hint = (
                ' The checkpoint is in '
                + ('deploy' if is_fused(state_dict) else 'train')
                + ' form and the model in the other one.'
            )
        raise CheckpointError(
            f'{what} does not fit the model: '
            f'{describe_mismatch(missing, unexpected, shapes)}.{hint} Is it '
            f'the checkpoint of another config?'
        )
    load_state_dict(model, state_dict, strict=True)


def load_model(config, checkpoint: str) -> Tuple[nn.Module, Config, dict]:
    """(eval-mode model with the checkpoint loaded strictly, config, checkpoint dict).

    A fused checkpoint is loaded into the deploy form of the config, a train-form one into
    the train form (a deploy config's backbone is switched back for it).
    """
    if not isinstance(config, Config):  # first: a checkpoint given as the config is
        check_config_file(config)  # named so, not read as a checkpoint
    ckpt = load_checkpoint(checkpoint)
    cfg = load_config(config)
    state_dict = state_dict_of(ckpt)
    fused = is_fused(state_dict)
    if not fused and cfg.model.get('backbone', {}).get('deploy'):
        cfg = copy.deepcopy(cfg)
        cfg.model.backbone.deploy = False
    model, _ = build_model(deploy_config(cfg) if fused else cfg)
    _check_reparameterizable(model, cfg)
    load_strict(model, state_dict, f'Checkpoint {checkpoint!r}')
    return model, cfg, ckpt
