"""Opt-in corrections to the pinned OpenMMLab stack, one module each. Importing
``mobileone_mm`` applies none of them; importing a module applies that one (configs list
them in ``custom_imports``):

* ``mobileone_mm.fixes.safe_loading``: mmengine loads its own checkpoints on torch >= 2.6,
  with ``weights_only=True`` and an allow-list (never unpickling arbitrary objects).
* ``mobileone_mm.fixes.durable_checkpoints``: a training run killed at any moment leaves a
  work dir that ``--resume`` continues from.
* ``mobileone_mm.fixes.cpu_distributed``: ``--launcher pytorch`` (and SyncBN) without a GPU.

docs/stack.md explains each trap and its fix.
"""
