"""ImageNet (or any MobileOne) weights into a backbone, whatever their published format:
what ``init_cfg=dict(type='Pretrained', checkpoint=...)`` does for MobileOne; and such a
checkpoint converted to mmpretrain's layout on disk (``convert_checkpoint``,
tools/convert_weights.py)."""

from typing import Optional

from mmengine.logging import MMLogger, print_log

from ..checkpoints.formats import backbone_state_dict, convert_state_dict, is_fused
from ..checkpoints.io import (
    CHECKPOINT_EXTENSIONS,
    CheckpointError,
    describe_mismatch,
    load_checkpoint,
    load_checkpoint_file,
    save_checkpoint,
    state_dict_of,
)
from ..checkpoints.paths import check_extension, plan_outputs
from .arch import check_arch, describe_arch, infer_arch, resolve_arch


def convert_checkpoint(src: str, dst: str, arch: Optional[str] = None) -> dict:
    """tools/convert_weights.py: the MobileOne checkpoint ``src`` in any published format
    (mmpretrain, Apple fused / unfused, timm; ``convert_state_dict``) written to ``dst``
    in mmpretrain's classifier layout, which the backbone, mmpretrain and the configs
    load. ``dst`` is planned before anything is read (``checkpoints.paths.plan_outputs``:
    never over ``src`` or a file our tools did not write) and its extension names the
    format (.pth or .safetensors); it is written atomically, with the source format, the
    arch and ``src`` in its meta. ``arch`` ('s0'..'s4'): CheckpointError when the weights
    are of another arch.

    Returns what was converted: format (the source's), arch (``describe_arch``), tensors
    (how many were written)."""
    plan_outputs(inputs={'checkpoint to convert': src}, outputs={'converted checkpoint': dst})
    check_extension(dst, CHECKPOINT_EXTENSIONS, 'converted checkpoint')
    state_dict, fmt = convert_state_dict(state_dict_of(load_checkpoint_file(src)))
    backbone = backbone_state_dict(state_dict)
    if arch:
        check_arch(backbone, resolve_arch(arch))
    found = describe_arch(infer_arch(backbone))
    save_checkpoint(
        dict(state_dict=state_dict, meta=dict(source_format=fmt, arch=found, source=src)), dst
    )
    return dict(format=fmt, arch=found, tensors=len(state_dict))


def load_pretrained(
    backbone, checkpoint: str, prefix: Optional[str] = None, map_location='cpu', strict: bool = True
):
    """Load ImageNet (or any MobileOne) weights in any known format into ``backbone``.

    ``prefix`` selects a sub-model of the checkpoint (e.g. 'backbone.'); a classifier,
    detector or segmentor checkpoint without prefix contributes its ``backbone.*``.
    Train-form weights load into a deploy-form backbone by fusing them first; fused
    weights cannot be un-fused, so they need ``deploy=True``.

    The file goes through the safe loader (``checkpoints.io.load_checkpoint``: no code
    run, no NaN or negative variance), and the load is strict, as every load of weights
    here: every backbone tensor from the checkpoint, none left over (CheckpointError
    naming the keys); keys outside the backbone (a classifier's head) are not the
    backbone's. ``strict=False`` (``init_cfg=dict(type='Pretrained', ..., strict=False)``)
    is for a checkpoint meant to cover part of the backbone: what it lacks keeps its
    init, and the missing and unexpected keys are logged by name, as mmengine does.
    """
    logger = MMLogger.get_current_instance()
    state_dict = state_dict_of(load_checkpoint(checkpoint, map_location))
    if prefix:
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise CheckpointError(f'No key of {checkpoint!r} starts with prefix {prefix!r}.')
    converted, fmt = convert_state_dict(state_dict, complete=strict)
    weights = backbone_state_dict(converted)
    check_arch(weights, backbone.arch)
    if is_fused(weights) and not backbone.deploy:
        raise CheckpointError(
            f'{checkpoint!r} holds fused (deploy-form) weights, which cannot be split back '
            f'into branches: build the backbone with deploy=True, or use the unfused '
            f'checkpoint for training.'
        )
    _check_input_channels(weights, backbone, checkpoint)
    # Train-form weights into a deploy-form backbone: each block fuses its branches on
    # load (MobileOneBlock._load_from_state_dict).
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if (missing or unexpected) and strict:
        raise CheckpointError(
            f'{checkpoint!r} does not fit the MobileOne-{backbone.arch_name} backbone: '
            f'{describe_mismatch(missing, unexpected)}. Use a complete checkpoint of this '
            f'arch (or strict=False in the Pretrained init_cfg, for weights meant to cover '
            f'part of it).'
        )
    if missing:
        print_log(f'MobileOne: keys missing in {checkpoint}: {missing}', logger, 30)
    if unexpected:
        print_log(f'MobileOne: unexpected keys in {checkpoint}: {unexpected}', logger, 30)
    print_log(
        f'MobileOne-{backbone.arch_name}: loaded {len(weights) - len(unexpected)} '
        f'tensors ({fmt} format) from {checkpoint}',
        logger,
    )


def _check_input_channels(weights, backbone, checkpoint: str):
    """CheckpointError with the fix when the stem's weights take other input channels
    than the backbone (ImageNet weights: 3, into in_channels=1, say)."""
    key = next(
        (
            k
            for k in ('stage0.branch_reparam.weight', 'stage0.branch_conv_list.0.conv.weight')
            if k in weights
        ),
        None,
    )
    if key is None or weights[key].shape[1] == backbone.in_channels:
        return
    raise CheckpointError(
        f'{checkpoint!r} holds a stem for {weights[key].shape[1]}-channel images but the '
        f'backbone has in_channels={backbone.in_channels}. Use in_channels='
        f'{weights[key].shape[1]} and give it {weights[key].shape[1]}-channel images (mmcv '
        f"loads grey photos as 3 channels with LoadImageFromFile's default "
        f"color_type='color'), or adapt the stem's weights yourself (sum them over the "
        f"input channels, as timm's adapt_input_conv does) and load that state dict."
    )
