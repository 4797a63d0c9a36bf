"""mobileone-mm: MobileOne as a re-parameterizable backbone for OpenMMLab."""
from .mobileone import ARCH_SETTINGS, MobileOne, MobileOneBlock
from .registry import MODELS
from .reparam import reparameterize_model
from .weights import (CheckpointError, convert_state_dict, load_checkpoint_file,
                      register_safe_checkpoint_loader, save_checkpoint)

__version__ = '0.1.0'

# mmengine on torch >= 2.6 cannot load its own training checkpoints (weights_only);
# importing this package (as configs do through custom_imports) makes it load them
# safely, with an allow-list, instead of unpickling anything.
register_safe_checkpoint_loader()

__all__ = ['ARCH_SETTINGS', 'MODELS', 'MobileOne', 'MobileOneBlock', 'CheckpointError',
           'convert_state_dict', 'load_checkpoint_file', 'reparameterize_model',
           'save_checkpoint', '__version__']
