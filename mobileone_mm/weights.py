"""Checkpoints: safe loading, atomic saving, and the published MobileOne weight formats.

Formats recognised by ``convert_state_dict`` (all converted to mmpretrain's classifier
layout ``backbone.*`` + ``head.fc.*``, which is also ours):

* mmpretrain / ours: ``backbone.stage{0..4}.{i}.branch_conv_list.{j}.conv``,
  ``branch_scale``, ``branch_norm``, ``se.conv1.conv`` / ``se.conv2.conv``,
  ``branch_reparam`` (deploy form), ``head.fc``; also a bare backbone (``stage0.*``).
* Apple ml-mobileone, unfused and fused (``.pth.tar``, optional ``module.`` prefix):
  ``stage{0..4}.{i}.rbr_conv.{j}.conv/bn``, ``rbr_scale``, ``rbr_skip``, ``reparam_conv``,
  ``se.reduce`` / ``se.expand``, ``linear``.
* timm ``mobileone_s*`` (``.pth``, ``.bin`` or ``.safetensors``): ``stem``,
  ``stages.{s}.{i}``, ``conv_kxk.{j}.conv/bn``, ``conv_scale``, ``identity``,
  ``reparam_conv``, ``attn.fc1`` / ``attn.fc2``, ``head.fc``.

Every file is unpickled with ``weights_only=True``; mmengine training checkpoints need a
few extra types (numpy arrays / scalars, mmengine's HistoryBuffer), which are allowed
for our loader only. Importing ``mobileone_mm`` registers that loader for mmengine's local
and http(s) schemes, so ``load_from``, ``--resume``, ``init_cfg=Pretrained`` and
``mim test --checkpoint`` work on torch >= 2.6 without ever unpickling arbitrary objects.
"""
import contextlib
import os
import pickle
import re
import socket
import tempfile
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from mmengine.logging import MMLogger, print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import CheckpointLoader

from .mobileone import (ARCH_SETTINGS, BASE_WIDTHS, NUM_STAGES, MobileOne, arch_name,
                        resolve_arch, stem_channels)

StateDict = Dict[str, torch.Tensor]

# Published ImageNet-1k checkpoints (targets, not reproduced here; see README).
MMPRETRAIN_URLS = {
    's0': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
          'mobileone-s0_8xb32_in1k_20221110-0bc94952.pth',
    's1': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
          'mobileone-s1_8xb32_in1k_20221110-ceeef467.pth',
    's2': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
          'mobileone-s2_8xb32_in1k_20221110-9c7ecb97.pth',
    's3': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
          'mobileone-s3_8xb32_in1k_20221110-c95eb3bf.pth',
    's4': 'https://download.openmmlab.com/mmclassification/v0/mobileone/'
          'mobileone-s4_8xb32_in1k_20221110-28d888cb.pth',
}
APPLE_URL = ('https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/'
             'mobileone_{arch}{suffix}.pth.tar')  # suffix '_unfused' or ''
TIMM_HUB_ID = 'timm/mobileone_{arch}.apple_in1k'


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be used, with the reason and the fix."""


# ----------------------------------------------------------------------------- loading
def _numpy_core():
    return getattr(np, '_core', None) or np.core


# What mmengine's Runner pickles besides tensors (measured on torch 2.14, numpy 2):
# numpy arrays / scalars / dtypes (numpy 2 pickles dtypes by class, e.g. Float64DType) in
# the message hub, HistoryBuffer, and builtins.getattr, by which HistoryBuffer's statistic
# methods are pickled. torch's weights-only unpickler calls nothing outside this list.
MMENGINE_CHECKPOINT_GLOBALS = [
    np.dtype, np.ndarray, _numpy_core().multiarray.scalar,
    _numpy_core().multiarray._reconstruct, HistoryBuffer, getattr,
] + [type(np.dtype(code)) for code in '?bBhHiIlLqQefdFD']


def _unreadable(path: str, error: Exception) -> CheckpointError:
    return CheckpointError(f'{path!r} is not a readable PyTorch checkpoint: truncated or '
                           f'corrupted, or another kind of file ({type(error).__name__}: '
                           f'{str(error).strip().splitlines()[-1]}). Fetch or write it again.')


def _refused_by_weights_only(message: str) -> Optional[str]:
    """What torch's weights-only unpickler refused ('asks for `os.system`', ...), or None
    when the error is not a refusal (a truncated or foreign file)."""
    unsafe = re.search(r"(?:GLOBAL |got <class ')([\w.]+)", message)
    if unsafe:
        return f'asks for `{unsafe.group(1)}`'
    call = re.search(r'call reduce for unrecognized function (<[^>]*>|\S+)', message)
    if call:
        return f'calls `{call.group(1)}`'
    detail = message.split('WeightsUnpickler error:', 1)
    if len(detail) == 2:
        line = next((l.strip() for l in detail[1].splitlines() if l.strip()), '')
        if line.startswith(('Can only', 'Trying to', 'Unsupported global')):
            return f'asks for what the weights-only loader does not allow ({line[:160]})'
    return None


def load_checkpoint_file(path: str, map_location='cpu') -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``).

    Raises CheckpointError naming the file and the problem for a missing, empty, truncated
    or foreign file, and for a pickle that asks for anything but tensors and the types
    mmengine writes (such a payload is never executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'Checkpoint {path!r} does not exist.')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'Checkpoint {path!r} is empty (0 bytes): an interrupted '
                              f'download or save? Fetch or write it again.')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except Exception as error:
            raise CheckpointError(f'{path!r} is not a readable safetensors file: '
                                  f'{error}') from error

    try:
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_by_weights_only(str(error))
        if refused:
            raise CheckpointError(
                f'Refusing to load {path!r}: its pickle {refused}, which a weights file '
                f'never needs (it may carry code; nothing of it was run). Checkpoints are '
                f'loaded with weights_only=True; re-save the state dict from a trusted '
                f'source with torch.save(model.state_dict(), ...).') from error
        raise _unreadable(path, error) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError) as error:
        raise _unreadable(path, error) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path!r} holds a {type(checkpoint).__name__}, not a '
                              f'checkpoint dict or state dict.')
    return checkpoint


def load_from_local(filename: str, map_location=None) -> dict:
    return load_checkpoint_file(filename, map_location or 'cpu')


def load_from_http(url: str, map_location=None) -> dict:
    """Download once into torch's hub cache (atomically, by torch), then load safely."""
    directory = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, os.path.basename(url.split('?')[0]))
    if not os.path.exists(path):
        torch.hub.download_url_to_file(url, path, progress=True)
    return load_checkpoint_file(path, map_location or 'cpu')


def register_safe_checkpoint_loader():
    """Route mmengine's local and http(s) checkpoint loading through the safe loader."""
    # mmengine logs "Loads checkpoint by {loader name[10:]} backend": local / http.
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http,
                                     force=True)


TEMP_MARK = '.tmp-'  # temp files: .<name>.tmp-<host>-<pid>-<random>


def _temp_prefix(path: str) -> str:
    return '.' + os.path.basename(path) + TEMP_MARK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: str) -> list:
    """Remove the temp files that writers of ``path`` on this host left when they were
    killed (their process is gone); returns the removed paths. Temp files of live writers
    and of other hosts (a shared file system) are left alone."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path) + socket.gethostname() + '-'
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split('-')[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'wb'):
    """Open a temp file beside ``path``; on success it is flushed, synced and renamed to
    ``path``: readers see the old file or the new one, never a torn one.

    The temp file is ``.<name>.tmp-<host>-<pid>-<random>`` in the same folder. An error
    removes it; a writer killed outright (SIGKILL, power loss) cannot, so each write first
    removes what killed writers of the same file left (``remove_stale_temp_files``)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f'{_temp_prefix(path)}{socket.gethostname()}-{os.getpid()}-', dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: dict, path: str):
    """torch.save, atomically (see atomic_file)."""
    with atomic_file(path) as f:
        torch.save(checkpoint, f)


def state_dict_of(checkpoint: dict) -> StateDict:
    """The state dict inside a checkpoint ('state_dict' / 'model' entry, or the dict)."""
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


# -------------------------------------------------------------------------- conversion
def _rename(state_dict: StateDict, rules) -> StateDict:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


APPLE_RULES = [
    (r'^module\.', ''),
    (r'^linear\.', 'head.fc.'),
    (r'\.rbr_conv\.(\d+)\.bn\.', r'.branch_conv_list.\1.norm.'),
    (r'\.rbr_conv\.', '.branch_conv_list.'),
    (r'\.rbr_scale\.bn\.', '.branch_scale.norm.'),
    (r'\.rbr_scale\.', '.branch_scale.'),
    (r'\.rbr_skip\.', '.branch_norm.'),
    (r'\.reparam_conv\.', '.branch_reparam.'),
    (r'\.se\.reduce\.', '.se.conv1.conv.'),
    (r'\.se\.expand\.', '.se.conv2.conv.'),
    (r'^(stage\d)', r'backbone.\1'),
]
TIMM_RULES = [
    (r'^module\.', ''),
    (r'^stem\.', 'backbone.stage0.'),
    (r'^stages\.(\d+)\.', lambda m: f'backbone.stage{int(m.group(1)) + 1}.'),
    (r'\.conv_kxk\.(\d+)\.bn\.', r'.branch_conv_list.\1.norm.'),
    (r'\.conv_kxk\.', '.branch_conv_list.'),
    (r'\.conv_scale\.bn\.', '.branch_scale.norm.'),
    (r'\.conv_scale\.', '.branch_scale.'),
    (r'\.identity\.', '.branch_norm.'),
    (r'\.reparam_conv\.', '.branch_reparam.'),
    (r'\.attn\.fc1\.', '.se.conv1.conv.'),
    (r'\.attn\.fc2\.', '.se.conv2.conv.'),
]


def detect_format(state_dict: StateDict) -> str:
    """'mmpretrain', 'apple' or 'timm'; CheckpointError for anything else."""
    keys = [re.sub(r'^module\.', '', k) for k in state_dict]
    if any(re.match(r'(backbone\.)?stage0\.(branch_|se\.)', k) for k in keys):
        return 'mmpretrain'
    if any(re.match(r'stage0\.(rbr_|reparam_conv)', k) for k in keys):
        return 'apple'
    if any(k.startswith('stem.') for k in keys) and any(
            re.match(r'stages\.\d+\.\d+\.(conv_kxk|reparam_conv)', k) for k in keys):
        return 'timm'
    sample = ', '.join(list(state_dict)[:4]) or 'no keys at all'
    raise CheckpointError(
        f'Not a MobileOne checkpoint: its keys ({sample}, ...) match none of the known '
        f'formats (mmpretrain `backbone.stage0.branch_*`, Apple `stage0.rbr_*`, timm '
        f'`stem.conv_kxk`). Is it the checkpoint of another model?')


def convert_state_dict(state_dict: StateDict,
                       arch: Optional[str] = None) -> Tuple[StateDict, str]:
    """Any published MobileOne state dict -> (mmpretrain classifier layout, source format).

    Keys other than the backbone's and the classifier's pass through unchanged. When
    ``arch`` is given, the weights must be of that arch (CheckpointError otherwise).
    """
    fmt = detect_format(state_dict)
    if fmt == 'apple':
        converted = _rename(state_dict, APPLE_RULES)
    elif fmt == 'timm':
        converted = _rename({k: v for k, v in state_dict.items()
                             if not k.startswith('final_conv.')}, TIMM_RULES)
    elif any(k.startswith('stage0.') for k in state_dict):  # a bare backbone
        converted = {f'backbone.{k}' if k.startswith('stage') else k: v
                     for k, v in state_dict.items()}
    else:
        converted = dict(state_dict)
    if arch is not None:
        check_arch(backbone_state_dict(converted), resolve_arch(arch))
    return converted, fmt


def backbone_state_dict(state_dict: StateDict) -> StateDict:
    """The ``backbone.*`` entries of a converted state dict, prefix removed."""
    return {k[len('backbone.'):]: v for k, v in state_dict.items()
            if k.startswith('backbone.')}


def is_fused(state_dict: StateDict) -> bool:
    return any('.branch_reparam.' in k for k in state_dict)


def infer_arch(backbone: StateDict) -> dict:
    """The arch dict of a backbone state dict (our keys), from the tensor shapes.
    num_conv_branches is None for a fused state dict (fusion erases it)."""
    arch = dict(num_blocks=[], width_factor=[], num_conv_branches=[], num_se_blocks=[])
    fused = is_fused(backbone)
    try:
        for s in range(1, NUM_STAGES + 1):
            blocks = {int(k.split('.')[1]) for k in backbone if k.startswith(f'stage{s}.')}
            last = max(blocks)
            conv = 'branch_reparam' if fused else 'branch_conv_list.0.conv'
            width = backbone[f'stage{s}.{last}.{conv}.weight'].shape[0]
            arch['num_blocks'].append((last + 1) // 2)
            arch['width_factor'].append(width / BASE_WIDTHS[s - 1])
            arch['num_conv_branches'].append(None if fused else len({
                k.split('.')[3] for k in backbone
                if k.startswith(f'stage{s}.0.branch_conv_list.')}))
            arch['num_se_blocks'].append(len({
                int(k.split('.')[1]) // 2 for k in backbone
                if k.startswith(f'stage{s}.') and '.se.conv1.' in k}))
    except (KeyError, ValueError) as error:
        raise CheckpointError(f'Incomplete MobileOne state dict: cannot read stage {s} '
                              f'({error!r} missing).') from error
    return arch


def arch_matches(found: dict, arch: dict) -> bool:
    """Whether an inferred arch is ``arch``; a fused state dict (num_conv_branches None)
    says nothing about the branch counts, so they are not compared then."""
    return all(found[k] == arch[k] for k in found
               if not (k == 'num_conv_branches' and None in found[k]))


def describe_arch(arch: dict) -> str:
    if None in arch['num_conv_branches']:  # fused: name the table arch it can be
        for name in ARCH_SETTINGS:
            if arch_matches(arch, resolve_arch(name)):
                return f'MobileOne-{name} (fused)'
    return f'MobileOne-{arch_name(arch)}'


def check_arch(backbone: StateDict, model_arch: dict):
    """CheckpointError naming both archs when the weights are not of ``model_arch``."""
    found = infer_arch(backbone)
    stem = backbone.get('stage0.branch_reparam.weight',
                        backbone.get('stage0.branch_conv_list.0.conv.weight'))
    if not arch_matches(found, model_arch) or (
            stem is not None and stem.shape[0] != stem_channels(model_arch)):
        raise CheckpointError(
            f'The checkpoint holds {describe_arch(found)} weights but the model is '
            f'MobileOne-{arch_name(model_arch)}: set arch to match the checkpoint or use a '
            f'{arch_name(model_arch)} checkpoint.')


def fuse_state_dict(backbone: StateDict, arch: dict) -> StateDict:
    """Train-form backbone weights -> the deploy-form state dict of the same arch."""
    model = MobileOne(arch, init_cfg=None)
    model.load_state_dict(backbone)
    model.eval().switch_to_deploy()
    return model.state_dict()


def load_pretrained(backbone: MobileOne, checkpoint: str, prefix: Optional[str] = None,
                    map_location='cpu'):
    """Load ImageNet (or any MobileOne) weights in any known format into ``backbone``.

    ``prefix`` selects a sub-model of the checkpoint (e.g. 'backbone.'); a classifier,
    detector or segmentor checkpoint without prefix contributes its ``backbone.*``.
    Train-form weights load into a deploy-form backbone by fusing them first; fused
    weights cannot be un-fused, so they need ``deploy=True``.
    """
    logger = MMLogger.get_current_instance()
    state_dict = state_dict_of(CheckpointLoader.load_checkpoint(checkpoint, map_location))
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()
                      if k.startswith(prefix)}
        if not state_dict:
            raise CheckpointError(f'No key of {checkpoint!r} starts with prefix {prefix!r}.')
    converted, fmt = convert_state_dict(state_dict)
    weights = backbone_state_dict(converted)
    check_arch(weights, backbone.arch)
    if is_fused(weights) and not backbone.deploy:
        raise CheckpointError(
            f'{checkpoint!r} holds fused (deploy-form) weights, which cannot be split back '
            f'into branches: build the backbone with deploy=True, or use the unfused '
            f'checkpoint for training.')
    if backbone.deploy and not is_fused(weights):
        weights = fuse_state_dict(weights, backbone.arch)
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing:
        print_log(f'MobileOne: keys missing in {checkpoint}: {missing}', logger, 30)
    if unexpected:
        print_log(f'MobileOne: unexpected keys in {checkpoint}: {unexpected}', logger, 30)
    print_log(f'MobileOne-{backbone.arch_name}: loaded {len(weights) - len(unexpected)} '
              f'tensors ({fmt} format) from {checkpoint}', logger)
