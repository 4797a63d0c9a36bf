"""The ``mobileone_mm`` registry scope: children of mmengine's root MODELS and HOOKS.

mmdet, mmseg and mmpretrain configs reach it across scopes with
``type='mobileone_mm.MobileOne'`` once ``custom_imports=dict(imports=['mobileone_mm'])``
has imported the package.
"""

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mobileone_mm', locations=['mobileone_mm'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mobileone_mm', locations=['mobileone_mm.fusion.hooks']
)
