"""RecipeLoggerHook: the training log shows a training recipe at work, one line per
epoch and one per validation:

    custom_hooks = [dict(type='mobileone_mm.RecipeLoggerHook')]
    # Epoch 3 recipe: trained on 56x56 images; RandomResizedCrop.scale=(56, 56),
    #     RandAugment.magnitude_level=4.9; weight_decay 7.75e-05, 0
    # Validation on the EMA weights (EMAHook, 30 updates): 0.028 (relative) from the
    #     trained weights

Each value is read where it acts, not from the config: the image sizes from the
batches the epoch trained on, the crop size and augmentation strength from the train
dataset's pipeline as SwitchRecipeHook left it, the weight decay from the optimizer's
parameter groups (the distinct values, largest first: CosineAnnealingParamScheduler on
``weight_decay`` moves them), and the validated weights from the model an EMAHook
swapped them into.
"""

from typing import List, Optional

import torch
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper

from ..registry import HOOKS

# Transform attributes that a recipe changes from stage to stage.
PIPELINE_SETTINGS = ('scale', 'crop_size', 'magnitude_level')


def train_pipeline(dataset):
    """The pipeline of a dataset, through dataset wrappers (as SwitchRecipeHook finds
    it); None when there is none."""
    while not hasattr(dataset, 'pipeline'):
        if hasattr(dataset, 'datasets'):
            dataset = dataset.datasets[0]
        elif hasattr(dataset, 'dataset'):
            dataset = dataset.dataset
        else:
            return None
    return dataset.pipeline


def describe_pipeline(pipeline) -> str:
    """'RandomResizedCrop.scale=(56, 56), RandAugment.magnitude_level=4.9': the recipe
    settings (PIPELINE_SETTINGS) of the transforms of an mmcv Compose."""
    settings = [
        f'{type(t).__name__}.{name}={_short(getattr(t, name))}'
        for t in getattr(pipeline, 'transforms', [])
        for name in PIPELINE_SETTINGS
        if hasattr(t, name)
    ]
    return ', '.join(settings) or 'no crop or augmentation setting'


def _short(value) -> str:
    return f'{value:.3g}' if isinstance(value, float) else repr(value)


def weight_decays(optim_wrapper) -> List[float]:
    """The distinct weight decays of the optimizer's parameter groups, largest first."""
    return sorted(
        {group.get('weight_decay', 0.0) for group in optim_wrapper.param_groups}, reverse=True
    )


def relative_distance(model: torch.nn.Module, other: torch.nn.Module) -> float:
    """||params(model) - params(other)|| / ||params(other)||."""
    with torch.no_grad():
        diff = sum(
            ((a.double() - b.double()) ** 2).sum()
            for a, b in zip(model.parameters(), other.parameters())
        )
        norm = sum((b.double() ** 2).sum() for b in other.parameters())
    return (diff / norm).sqrt().item() if norm > 0 else 0.0


@HOOKS.register_module()
class RecipeLoggerHook(Hook):
    """Log the recipe of each training epoch and what each validation runs on (module
    docstring). Runs after EMAHook (it reads the weights EMAHook swapped in) and before
    ParamSchedulerHook (it reads the weight decay the epoch used)."""

    priority = 'BELOW_NORMAL'

    def __init__(self):
        self.sizes: set = set()  # (height, width) of the epoch's train images
        # the weight decays of the epoch's first and last iteration
        self.first_decays: Optional[List[float]] = None
        self.last_decays: Optional[List[float]] = None

    def before_train_epoch(self, runner):
        self.sizes, self.first_decays, self.last_decays = set(), None, None

    def before_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None):
        self.sizes.update(tuple(x.shape[-2:]) for x in (data_batch or {}).get('inputs', []))
        self.last_decays = weight_decays(runner.optim_wrapper)
        if self.first_decays is None:
            self.first_decays = self.last_decays

    def after_train_epoch(self, runner):
        sizes = ', '.join(f'{h}x{w}' for h, w in sorted(self.sizes)) or 'no'
        decays = [self.first_decays] + [self.last_decays] * (self.last_decays != self.first_decays)
        decays = (
            ' -> '.join(
                ', '.join(f'{d:.3g}' for d in values) for values in decays if values is not None
            )
            or 'unknown'
        )
        pipeline = describe_pipeline(train_pipeline(runner.train_dataloader.dataset))
        runner.logger.info(
            f'Epoch {runner.epoch + 1} recipe: trained on {sizes} images; '
            f'{pipeline}; weight_decay {decays}'
        )

    def before_val_epoch(self, runner):
        ema = next((h for h in runner.hooks if isinstance(h, EMAHook)), None)
        if ema is None or not hasattr(ema, 'ema_model'):
            return
        # EMAHook (a higher priority) has swapped the averaged weights into the model and
        # the trained ones into its ema_model.
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        runner.logger.info(
            f'Validation on the EMA weights ({type(ema).__name__}, '
            f'{int(ema.ema_model.steps)} updates): '
            f'{relative_distance(model, ema.ema_model.module):.2g} (relative) from the '
            f'trained weights'
        )
