# What every config here shares: the package and the stack fixes it imports. Listed beside
# the codebase's own base (`_base_ = ['mmdet::...', '../_base_/mobileone.py']`): mmengine
# refuses a key two bases both define, and no mmdet / mmseg / mmpretrain base defines
# custom_imports. A child config's custom_imports replaces this list (a list is replaced,
# not merged): to add a module, write imports=_base_.custom_imports.imports + [...].
#
# The backbone is stated once per codebase, in the S0 config of each family that the
# other archs inherit, not here: it is merged into the codebase's own model (mmpretrain
# swaps the type of its MobileOne; mmdet and mmseg replace ResNet / CSPNeXt / MobileNetV2
# with _delete_), and a base cannot hold `model` beside a codebase base that has one.
custom_imports = dict(
    imports=[
        'mobileone_mm',  # registers mobileone_mm.MobileOne
        # the stack fixes (docs/stack.md); a config that states its own custom_imports
        # without one of these lines leaves that fix out
        'mobileone_mm.fixes.safe_loading',  # mmengine loads its checkpoints on torch>=2.6
        'mobileone_mm.fixes.durable_checkpoints',  # a killed run resumes from its work dir
        'mobileone_mm.fixes.cpu_distributed',  # --launcher pytorch and SyncBN without GPU
    ],
    allow_failed_imports=False,
)
