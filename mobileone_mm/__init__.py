"""mobileone-mm: MobileOne as a re-parameterizable backbone for OpenMMLab."""
from .cpu_dist import enable_cpu_distributed
from .durable import enable_durable_checkpoints
from .hooks import SaveDeployCheckpointHook
from .inference import optimize_for_inference
from .mobileone import ARCH_SETTINGS, MobileOne, MobileOneBlock
from .registry import HOOKS, MODELS
from .reparam import reparameterize_model
from .weights import (CheckpointError, convert_state_dict, load_checkpoint_file,
                      register_safe_checkpoint_loader, save_checkpoint)

__version__ = '0.1.0'

# mmengine on torch >= 2.6 cannot load its own training checkpoints (weights_only);
# importing this package (as configs do through custom_imports) makes it load them
# safely, with an allow-list, instead of unpickling anything.
register_safe_checkpoint_loader()
# `--launcher pytorch` on a machine without a GPU: gloo, no device_ids, SyncBN over gloo
# (cpu_dist.py says what mmengine would trip on). Does nothing when CUDA is available.
enable_cpu_distributed()
# A training run killed at any moment leaves a work dir that --resume continues from
# (durable.py: atomic checkpoint writes, old checkpoints deleted only after the new one).
enable_durable_checkpoints()

__all__ = ['ARCH_SETTINGS', 'MODELS', 'MobileOne', 'MobileOneBlock', 'CheckpointError',
           'convert_state_dict', 'load_checkpoint_file', 'optimize_for_inference',
           'reparameterize_model',
           'SaveDeployCheckpointHook', 'save_checkpoint', '__version__']
