"""Checkpoint files (safe loading, atomic writes) and the published weight layouts."""

from .formats import convert_state_dict
from .io import CheckpointError, atomic_file, load_checkpoint_file, save_checkpoint

__all__ = [
    'CheckpointError',
    'atomic_file',
    'convert_state_dict',
    'load_checkpoint_file',
    'save_checkpoint',
]
