"""SaveDeployCheckpointHook: each time mmengine's CheckpointHook saves a new best
checkpoint (``save_best``), also save its deploy form beside it.

    custom_hooks = [dict(type='mobileone_mm.SaveDeployCheckpointHook')]
    # work_dir/best_coco_bbox_mAP_epoch_8.pth         (CheckpointHook, train form)
    # work_dir/best_coco_bbox_mAP_epoch_8_deploy.pth  (fused state_dict and meta)
    # work_dir/best_coco_bbox_mAP_epoch_8_deploy.py   (the config, backbone.deploy=True)

The files are those ``tools/reparameterize.py`` writes, without its output check (run the
tool for that); the previous best's deploy files are removed like the previous best.
"""
import copy
import os
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import load_state_dict

from ..checkpoints.io import load_checkpoint_file, state_dict_of
from ..models.reparam import reparameterize_model
from ..registry import HOOKS
from .reparameterize import deploy_config, deploy_config_path, write_deploy_files


@HOOKS.register_module()
class SaveDeployCheckpointHook(Hook):
    priority = 'LOWEST'  # after CheckpointHook ('VERY_LOW') has written the best checkpoint

    def __init__(self):
        self.best_ckpt: Optional[str] = None  # the best checkpoint last saved in deploy form

    def after_val_epoch(self, runner, metrics=None):
        best_ckpt = runner.message_hub.get_info('best_ckpt')
        if not best_ckpt or best_ckpt == self.best_ckpt or not is_main_process():
            return
        # Deferred: deploy.py imports the codebases only when it is used.
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        # The weights of the file just written (EMA weights, where an EMAHook swapped them
        # in for saving), not the live ones.
        model = copy.deepcopy(model).cpu().eval()
        load_state_dict(model, state_dict_of(load_checkpoint_file(best_ckpt)), strict=True)
        fused = reparameterize_model(model)
        meta = dict(epoch=runner.epoch, iter=runner.iter, source=os.path.basename(best_ckpt))
        checkpoint, config = write_deploy_files(
            fused.state_dict(), meta, deploy_config(runner.cfg).pretty_text,
            self.deploy_checkpoint(best_ckpt))
        if self.best_ckpt is not None:
            old_checkpoint = self.deploy_checkpoint(self.best_ckpt)
            for path in (old_checkpoint, deploy_config_path(old_checkpoint)):
                if os.path.exists(path):
                    os.remove(path)
        self.best_ckpt = best_ckpt
        runner.logger.info(f'The deploy form of {best_ckpt} is saved to {checkpoint} '
                           f'(config {config}).')

    @staticmethod
    def deploy_checkpoint(best_ckpt: str) -> str:
        return os.path.splitext(best_ckpt)[0] + '_deploy.pth'
