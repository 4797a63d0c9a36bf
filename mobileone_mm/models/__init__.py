"""The network: arch table, block and backbone, fusion math, pretrained loading."""

from .arch import ARCH_SETTINGS, atrous_settings, check_arch, infer_arch
from .mobileone import MobileOne
from .mobileone_block import MobileOneBlock
from .reparam import reparameterize_model

__all__ = [
    'ARCH_SETTINGS',
    'MobileOne',
    'MobileOneBlock',
    'atrous_settings',
    'check_arch',
    'infer_arch',
    'reparameterize_model',
]
