"""SaveDeployCheckpointHook: each time mmengine's CheckpointHook saves a new best
checkpoint (``save_best``), also save its deploy form beside it.

    custom_hooks = [dict(type='mobileone_mm.SaveDeployCheckpointHook')]
    # work_dir/best_coco_bbox_mAP_epoch_8.pth         (CheckpointHook, train form)
    # work_dir/best_coco_bbox_mAP_epoch_8_deploy.pth  (fused state_dict and meta)
    # work_dir/best_coco_bbox_mAP_epoch_8_deploy.py   (the config, backbone.deploy=True)

The files are those ``tools/reparameterize.py`` writes, after the same output check
(``reparameterize.check_fusion``) on the first ``num_images`` images of the val set, and
the best checkpoint read back as every tool reads one (``load_strict``): a deploy form
that fails either is not written, and the run goes on with a warning in the log (a
training run is not stopped for its deploy copy). The previous best's deploy files are
removed like the previous best.
"""

import copy
import os
from typing import List, Optional

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..checkpoints.io import CheckpointError, load_checkpoint_file, state_dict_of
from ..checkpoints.paths import PathError, plan_outputs
from ..loading.checkpoint import load_strict
from ..loading.config import deploy_config
from ..models.reparam import reparameterize_model
from ..registry import HOOKS
from .output_check import describe
from .reparameterize import check_fusion, deploy_config_path, write_deploy_files


@HOOKS.register_module()
class SaveDeployCheckpointHook(Hook):
    """Args:
    verify: check the deploy form's outputs before writing it (see the module).
    num_images: val images the check runs on.
    """

    priority = 'LOWEST'  # after CheckpointHook ('VERY_LOW') has written the best checkpoint

    def __init__(self, verify: bool = True, num_images: int = 2):
        if not (isinstance(num_images, int) and num_images >= 1):
            raise ValueError(
                f'SaveDeployCheckpointHook: num_images must be a whole number '
                f'of at least 1, got {num_images!r} (verify=False skips the '
                f'check).'
            )
        self.verify, self.num_images = verify, num_images
        self.best_ckpt: Optional[str] = None  # the best checkpoint last saved in deploy form

    def after_val_epoch(self, runner, metrics=None):
        best_ckpt = runner.message_hub.get_info('best_ckpt')
        if not best_ckpt or best_ckpt == self.best_ckpt or not is_main_process():
            return
        deploy_checkpoint = self.deploy_checkpoint(best_ckpt)
        try:  # a user's file named like one of the two is never replaced
            plan_outputs(
                outputs={
                    'deploy checkpoint': deploy_checkpoint,
                    'deploy config': deploy_config_path(deploy_checkpoint),
                }
            )
        except PathError as error:
            runner.logger.warning(f'The deploy form of {best_ckpt} is not saved: {error}')
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        # The weights of the file just written (EMA weights, where an EMAHook swapped them
        # in for saving), not the live ones.
        model = copy.deepcopy(model).cpu().eval()
        try:
            checkpoint = load_checkpoint_file(best_ckpt)
            load_strict(model, state_dict_of(checkpoint), f'Checkpoint {best_ckpt!r}')
        except CheckpointError as error:
            runner.logger.warning(f'The deploy form of {best_ckpt} is not saved: {error}')
            return
        fused = reparameterize_model(copy.deepcopy(model))
        if self.verify:
            check = check_fusion(model, fused, self.val_inputs(runner, model))
            if not check['passed']:
                runner.logger.warning(
                    f'The deploy form of {best_ckpt} is not saved: {describe(check, "it")}.'
                )
                return
        # The best checkpoint's meta (dataset_meta: the class names the inferencers show).
        meta = dict(checkpoint.get('meta') or {}, source=os.path.basename(best_ckpt))
        deploy_checkpoint, config = write_deploy_files(
            fused.state_dict(), meta, deploy_config(runner.cfg).pretty_text, deploy_checkpoint
        )
        if self.best_ckpt is not None:
            old_checkpoint = self.deploy_checkpoint(self.best_ckpt)
            for path in (old_checkpoint, deploy_config_path(old_checkpoint)):
                if os.path.exists(path):
                    os.remove(path)
        self.best_ckpt = best_ckpt
        runner.logger.info(
            f'The deploy form of {best_ckpt} is saved to {deploy_checkpoint} (config {config}).'
        )

    def val_inputs(self, runner, model: nn.Module) -> List[dict]:
        """The first ``num_images`` images of the val set, one model input each, through
        the model's data preprocessor."""
        with torch.no_grad():
            data = model.data_preprocessor(next(iter(runner.val_dataloader)), False)
        samples = data.get('data_samples')
        return [
            dict(
                inputs=data['inputs'][i : i + 1],
                data_samples=None if samples is None else samples[i : i + 1],
            )
            for i in range(min(self.num_images, len(data['inputs'])))
        ]

    @staticmethod
    def deploy_checkpoint(best_ckpt: str) -> str:
        return os.path.splitext(best_ckpt)[0] + '_deploy.pth'
