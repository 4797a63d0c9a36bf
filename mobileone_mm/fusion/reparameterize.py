"""Deploy form of trained models: fuse every MobileOne block of an mmdet detector, mmseg
segmentor or mmpretrain classifier, write the deploy checkpoint and config, and check on
real inputs that the outputs did not change.

    result = reparameterize_checkpoint('configs/.../tiny-coco.py', 'work_dirs/epoch_10.pth',
                                       'work_dirs/deploy.pth')
    # -> work_dirs/deploy.pth (meta + fused state_dict) and work_dirs/deploy.py (the same
    #    config with model.backbone.deploy=True), result.rel_diff ~ 1e-7
"""

import copy
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from ..checkpoints.formats import is_fused
from ..checkpoints.io import CHECKPOINT_EXTENSIONS, dump_checkpoint, state_dict_of
from ..checkpoints.marks import CONFIG_MARK
from ..checkpoints.paths import PathError, atomic_files, check_extension, plan_outputs
from ..loading.checkpoint import load_model, load_strict
from ..loading.config import DeployError, build_model, codebase_of, deploy_config
from ..loading.data import sample_inputs
from ..models.reparam import reparameterize_model
from .flat_outputs import flatten
from .output_check import Reference, describe


@dataclass
class ReparamResult:
    task: str  # 'mmdet', 'mmseg' or 'mmpretrain'
    already_fused: bool  # the checkpoint was fused: nothing written
    params_train: int  # parameters of the model in each form
    params_deploy: int
    out_checkpoint: Optional[str] = None
    out_config: Optional[str] = None
    inputs: str = ''  # what the outputs were compared on
    check: Optional[dict] = None  # the output check (verify.Reference.judge)
    max_abs_diff: Optional[float] = None  # max |deploy - train| (float32 forms)
    output_scale: Optional[float] = None  # max |output| of the train form

    @property
    def rel_diff(self) -> Optional[float]:
        """max |deploy - train| / max |train| over all raw outputs (mode='tensor')."""
        if self.max_abs_diff is None:
            return None
        return self.max_abs_diff / max(self.output_scale, 1e-12)


def tensor_outputs(model: nn.Module, data: dict) -> List[torch.Tensor]:
    """The model's raw outputs (mode='tensor': logits, box / class maps) for one input."""
    return flatten(model(data['inputs'], data.get('data_samples'), mode='tensor'))[0]


def check_fusion(train_model: nn.Module, deploy_model: nn.Module, inputs: List[dict]) -> dict:
    """The shared output check (verify.Reference) of ``deploy_model`` against the train
    form ``train_model`` (not changed), on model inputs such as ``sample_inputs`` gives."""
    reference = Reference(train_model, inputs, tensor_outputs)
    return reference.judge(reference.outputs(deploy_model))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def deploy_config_path(out_checkpoint) -> str:
    """Where the deploy config of ``out_checkpoint`` goes: beside it, extension ``.py``."""
    return os.path.splitext(os.fspath(out_checkpoint))[0] + '.py'


def write_deploy_files(
    state_dict: dict, meta: dict, config_text: str, out_checkpoint
) -> Tuple[str, str]:
    """Write the deploy checkpoint (``meta`` and the fused ``state_dict``, in the format its
    extension names: io.dump_checkpoint) and the deploy config beside it, its first line
    our mark (checkpoints.paths.CONFIG_MARK), as one: both or neither
    (checkpoints.paths.atomic_files); returns (checkpoint path, config path)."""
    out_checkpoint, out_config = os.fspath(out_checkpoint), deploy_config_path(out_checkpoint)
    with atomic_files([(out_checkpoint, 'wb'), (out_config, 'w')]) as (ckpt_file, cfg_file):
        dump_checkpoint(dict(meta=meta, state_dict=state_dict), ckpt_file, out_checkpoint)
        cfg_file.write(
            f'{CONFIG_MARK} (tools/reparameterize.py): the deploy form, '
            f'model.backbone.deploy=True\n'
        )
        cfg_file.write(config_text)
    return out_checkpoint, out_config


def check_output_names(config, checkpoint, out_checkpoint):
    """DeployError, before any work, when the deploy checkpoint or its config (beside it,
    .py) cannot be written without harm (checkpoints.paths.plan_outputs): over an input,
    onto one path, over a file our tools did not write, into a folder that takes no file;
    or when its extension names no checkpoint format (.pth, .safetensors)."""
    if os.fspath(out_checkpoint).lower().endswith('.py'):
        raise DeployError(
            f'The deploy checkpoint {os.fspath(out_checkpoint)!r} ends in .py, '
            f'the name its deploy config takes: name it .pth or .safetensors.'
        )
    try:
        plan_outputs(
            inputs={
                'config': config if not isinstance(config, Config) else None,
                'checkpoint': checkpoint,
            },
            outputs={
                'deploy checkpoint': out_checkpoint,
                'deploy config': deploy_config_path(out_checkpoint),
            },
        )
        check_extension(out_checkpoint, CHECKPOINT_EXTENSIONS, 'deploy checkpoint')
    except PathError as error:
        raise DeployError(str(error)) from None


def reparameterize_checkpoint(
    config, checkpoint: str, out_checkpoint: str, verify: bool = True, num_images: int = 4
) -> ReparamResult:
    """Fuse a trained model's MobileOne blocks and write the deploy checkpoint
    (``meta`` and the fused ``state_dict``; optimizer and scheduler state dropped) and the
    deploy config (``out_checkpoint`` with extension ``.py``), both atomically.

    The deploy config is built and the fused weights are loaded into it strictly before
    anything is written. With ``verify``, the raw outputs of the deploy form are judged on
    ``num_images`` inputs (see ``sample_inputs``) by the shared check (``check_fusion``:
    no further from the float64 train form than the float32 train form is, times
    verify.FACTOR); DeployError when they fail it. A checkpoint that is already fused is
    only checked against the deploy form of the config, and nothing is written.
    """
    check_output_names(config, checkpoint, out_checkpoint)
    if verify and not (isinstance(num_images, int) and num_images >= 1):
        raise DeployError(
            f'num_images must be a whole number of at least 1 to compare the '
            f'outputs, got {num_images!r} (verify=False skips the check).'
        )
    model, cfg, ckpt = load_model(config, checkpoint)
    if is_fused(state_dict_of(ckpt)):
        params = count_params(model)
        return ReparamResult(codebase_of(cfg), True, params, params)

    result = ReparamResult(codebase_of(cfg), False, count_params(model), 0)
    fused = reparameterize_model(copy.deepcopy(model))
    text = deploy_config(cfg).pretty_text
    deploy_model, _ = build_model(Config.fromstring(text, '.py'))
    load_strict(deploy_model, fused.state_dict(), 'The fused model')
    result.params_deploy = count_params(deploy_model)
    if verify:
        inputs, result.inputs = sample_inputs(cfg, model, num_images)
        result.check = check_fusion(model, deploy_model, inputs)
        result.max_abs_diff = result.check.get('max_abs_diff')
        result.output_scale = result.check.get('output_scale')
        if not result.check['passed']:
            raise DeployError(
                f'The deploy form changes the outputs: '
                f'{describe(result.check, "it")}. Nothing written.'
            )

    result.out_checkpoint, result.out_config = write_deploy_files(
        deploy_model.state_dict(), ckpt.get('meta', {}), text, out_checkpoint
    )
    return result
