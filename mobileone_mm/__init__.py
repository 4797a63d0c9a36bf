"""mobileone-mm: MobileOne as a re-parameterizable backbone for OpenMMLab.

Importing the package registers its modules (``mobileone_mm.MobileOne``,
``mobileone_mm.SaveDeployCheckpointHook``, ``mobileone_mm.RecipeLoggerHook``) and changes
nothing else. The stack fixes are opt-in modules of ``mobileone_mm.fixes``, listed in a
config's ``custom_imports``.
"""

from .checkpoints import CheckpointError, convert_state_dict, load_checkpoint_file, save_checkpoint
from .fusion.hooks import SaveDeployCheckpointHook
from .models import (
    ARCH_SETTINGS,
    MobileOne,
    MobileOneBlock,
    atrous_settings,
    check_arch,
    reparameterize_model,
)
from .registry import HOOKS, MODELS
from .runtimes.optimize import optimize_for_inference
from .training import RecipeLoggerHook

__version__ = '0.2.0'

__all__ = [
    'ARCH_SETTINGS',
    'HOOKS',
    'MODELS',
    'CheckpointError',
    'MobileOne',
    'MobileOneBlock',
    'RecipeLoggerHook',
    'SaveDeployCheckpointHook',
    'atrous_settings',
    'check_arch',
    'convert_state_dict',
    'load_checkpoint_file',
    'optimize_for_inference',
    'reparameterize_model',
    'save_checkpoint',
    '__version__',
]
