"""Checkpoint files: safe loading (``weights_only=True`` with an allow-list) and atomic
writes. Nothing here knows about MobileOne; see formats.py for the weight layouts."""

import contextlib
import json
import os
import pickle
import re
import socket
import tempfile
import zipfile
from typing import Dict, Optional

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from ..errors import UserError

StateDict = Dict[str, torch.Tensor]


class CheckpointError(UserError, ValueError):
    """A checkpoint file or state dict that cannot be used, with the reason and the fix."""


def _numpy_core():
    return getattr(np, '_core', None) or np.core


# What mmengine's Runner pickles besides tensors (measured on torch 2.14, numpy 2):
# numpy arrays / scalars / dtypes (numpy 2 pickles dtypes by class, e.g. Float64DType) in
# the message hub, HistoryBuffer, and builtins.getattr, by which HistoryBuffer's statistic
# methods are pickled. torch's weights-only unpickler calls nothing outside this list.
MMENGINE_CHECKPOINT_GLOBALS = [
    np.dtype,
    np.ndarray,
    _numpy_core().multiarray.scalar,
    _numpy_core().multiarray._reconstruct,
    HistoryBuffer,
    getattr,
] + [type(np.dtype(code)) for code in '?bBhHiIlLqQefdFD']


def _torch_detail(error: Exception) -> str:
    """The last line of torch's message that is not its advice about ``weights_only``
    (which never applies here: checkpoints are untrusted), or ''."""
    lines = [
        line.strip()
        for line in str(error).splitlines()
        if line.strip() and 'weights_only' not in line
    ]
    return f': {lines[-1][:200]}' if lines else ''


def _unreadable(path: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f'{path!r} is not a readable PyTorch checkpoint: truncated or '
        f'corrupted, or another kind of file ({type(error).__name__}'
        f'{_torch_detail(error)}). Fetch or write it again.'
    )


def _program_archive(path: str) -> Optional[str]:
    """What kind of saved program ``path`` is, if it is one: 'a TorchScript archive
    (torch.jit.save)' (a zip with ``constants.pkl``, torch's own test) or 'a torch.export
    archive (torch.export.save)' (a zip with ``archive_format``); else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.rpartition('/')[2] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        return None
    if 'constants.pkl' in names:
        return 'a TorchScript archive (torch.jit.save)'
    if 'archive_format' in names:
        return 'a torch.export archive (torch.export.save)'
    return None


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
        line = next((text.strip() for text in detail[1].splitlines() if text.strip()), '')
        if line.startswith(('Can only', 'Trying to', 'Unsupported global')):
            return f'asks for what the weights-only loader does not allow ({line[:160]})'
    return None


def load_checkpoint_file(path: str, map_location='cpu') -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``), and
    check its weights (``check_weights``).

    Raises CheckpointError naming the file and the problem for a missing, empty, truncated
    or foreign file, a saved program (TorchScript, torch.export), a pickle that asks for
    anything but tensors and the types mmengine writes (such a payload is never executed),
    and weights no trained network holds (NaN, inf, a negative BatchNorm variance: the
    first such entry named).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(
            f'Checkpoint {path!r} is a folder, not a file: give the '
            f'checkpoint file in it (a work dir names its newest one in '
            f'last_checkpoint).'
        )
    if not os.path.isfile(path):
        raise CheckpointError(f'Checkpoint {path!r} does not exist.')
    if os.path.getsize(path) == 0:
        raise CheckpointError(
            f'Checkpoint {path!r} is empty (0 bytes): an interrupted '
            f'download or save? Fetch or write it again.'
        )
    if path.endswith('.safetensors'):
        return _load_safetensors(path, map_location)
    program = _program_archive(path)
    if program:
        raise CheckpointError(
            f'{path!r} is {program}, not a checkpoint: it holds a program, which is never '
            f'loaded here. Give the training checkpoint (the .pth file training wrote), or '
            f'save the weights with torch.save(model.state_dict(), PATH).'
        )

    try:
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        IndexError,
    ) as error:
        raise _load_error(path, error) from error
    return _checked(checkpoint, path)


def _load_error(source: str, error: Exception) -> CheckpointError:
    """What to say when torch.load of ``source`` failed with ``error``: a refused pickle
    (named), else an unreadable file; never torch's advice to set weights_only=False."""
    refused = isinstance(error, pickle.UnpicklingError) and _refused_by_weights_only(str(error))
    if refused:
        return CheckpointError(
            f'Refusing to load {source!r}: its pickle {refused}, which a weights file '
            f'never needs (it may carry code; nothing of it was run). Checkpoints are '
            f'loaded with weights_only=True; re-save the state dict from a trusted '
            f'source with torch.save(model.state_dict(), ...).'
        )
    return _unreadable(source, error)


def _checked(checkpoint, source: str) -> dict:
    """``checkpoint`` when it is a dict whose weights pass ``check_weights``."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'{source!r} holds a {type(checkpoint).__name__}, not a checkpoint dict or state dict.'
        )
    check_weights(state_dict_of(checkpoint), f'Checkpoint {source!r}')
    return checkpoint


def _load_safetensors(path: str, map_location) -> dict:
    """A safetensors file (safe by construction: tensors and a JSON header only): the
    tensors, or ``dict(state_dict=..., meta=...)`` for one we wrote (``save_checkpoint``
    keeps the meta as JSON in the header)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework='pt', device=str(map_location)) as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:
        raise CheckpointError(f'{path!r} is not a readable safetensors file: {error}') from error
    check_weights(tensors, f'Checkpoint {path!r}')
    if header.get('written_by') != WRITTEN_BY:
        return tensors
    return dict(state_dict=tensors, meta=json.loads(header.get('meta', '{}')))


def describe_mismatch(missing=(), unexpected=(), shapes=()) -> str:
    """'2 missing keys: a, b; 1 unexpected keys: c' (the first three of each kind)."""
    return '; '.join(
        f'{len(keys)} {name}: {", ".join(keys[:3])}{", ..." * (len(keys) > 3)}'
        for name, keys in (
            ('missing keys', list(missing)),
            ('unexpected keys', list(unexpected)),
            ('shape mismatches', list(shapes)),
        )
        if keys
    )


def check_weights(state_dict: StateDict, what: str = 'The state dict'):
    """CheckpointError naming the first entry of ``state_dict`` (in its order) that no
    trained network holds: a NaN or infinite value, or a negative BatchNorm
    ``running_var``. Training that diverged, or a file damaged in a way the format does
    not catch: loaded, it would give NaN outputs (or, for a variance, NaN fused weights)."""
    for key, value in state_dict.items():
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in 'fc':
            value = torch.from_numpy(np.array(value))
        if not isinstance(value, torch.Tensor) or not (
            value.is_floating_point() or value.is_complex()
        ):
            continue
        finite = torch.isfinite(value)
        if not finite.all():
            nan = int(torch.isnan(value).sum())
            inf = value.numel() - int(finite.sum()) - nan
            found = ' and '.join(f'{n} {name}' for n, name in ((nan, 'NaN'), (inf, 'inf')) if n)
            raise CheckpointError(
                f'{what}: {key!r} holds {found} value(s) (of {value.numel()}): the weights '
                f'are corrupt (a training run that diverged, or a damaged file). Use an '
                f'earlier checkpoint of the run, or fetch the file again.'
            )
        if str(key).endswith('running_var') and (value < 0).any():
            raise CheckpointError(
                f'{what}: BatchNorm variance {key!r} has {int((value < 0).sum())} negative '
                f'value(s) (lowest {float(value.min()):.3g}); a variance is never negative, so '
                f'the weights are corrupt and would give NaN outputs. Use an earlier '
                f'checkpoint of the run, or fetch the file again.'
            )


def load_checkpoint(source: str, map_location='cpu') -> dict:
    """A local path or an http(s) URL (downloaded once into torch's hub cache, atomically,
    by torch), loaded safely (load_checkpoint_file); other schemes (s3://, ...) through
    mmengine's CheckpointLoader."""
    source = os.fspath(source)
    if source.startswith(('http://', 'https://')):
        directory = os.path.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, os.path.basename(source.split('?')[0]))
        if not os.path.exists(path):
            torch.hub.download_url_to_file(source, path, progress=True)
        return load_checkpoint_file(path, map_location)
    if '://' in source:
        from mmengine.runner import CheckpointLoader

        try:
            checkpoint = CheckpointLoader.load_checkpoint(source, map_location)
        except pickle.UnpicklingError as error:  # torch.load there, weights_only=True
            raise _load_error(source, error) from error
        return _checked(checkpoint, source)
    return load_checkpoint_file(source, map_location)


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
        pid = name[len(prefix) :].split('-')[0]
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
        prefix=f'{_temp_prefix(path)}{socket.gethostname()}-{os.getpid()}-', dir=directory
    )
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


# What our checkpoints say in ``meta['written_by']`` (a safetensors file in its header):
# the mark by which a tool knows it may replace the file (checkpoints.paths.plan_outputs).
WRITTEN_BY = 'mobileone_mm'
# An output checkpoint's extension is its format.
CHECKPOINT_EXTENSIONS = ('.pth', '.safetensors')


def _json_value(value):
    """numpy values in a checkpoint's meta (mmengine's) as JSON ones."""
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise CheckpointError(
        f'A {type(value).__name__} in the checkpoint meta cannot be '
        f'written to a safetensors header (JSON): save it as .pth.'
    )


def dump_checkpoint(checkpoint: dict, f, path: str):
    """Write ``checkpoint`` to the open binary file ``f`` in the format that ``path``'s
    extension names: a PyTorch checkpoint for .pth, safetensors (the state dict's tensors,
    ``meta`` as JSON in the header) for .safetensors. A checkpoint dict (with a
    ``state_dict``) is marked as ours, ``meta['written_by'] = WRITTEN_BY``, as is every
    safetensors header; a bare state dict is written as it is in a .pth."""
    path = os.fspath(path)
    meta = dict(checkpoint.get('meta') or {}, written_by=WRITTEN_BY)
    if path.lower().endswith('.pth'):
        torch.save(dict(checkpoint, meta=meta) if 'state_dict' in checkpoint else checkpoint, f)
        return
    if not path.lower().endswith('.safetensors'):
        raise CheckpointError(
            f'Cannot write the checkpoint {path!r}: its extension names no '
            f'checkpoint format; use {" or ".join(CHECKPOINT_EXTENSIONS)}.'
        )
    other = sorted(set(checkpoint) - {'state_dict', 'meta'}) if 'state_dict' in checkpoint else []
    if other:
        raise CheckpointError(
            f'A safetensors file holds weights and meta only, not '
            f'{", ".join(other)}: drop them or save as .pth.'
        )
    from safetensors.torch import save

    tensors = {
        k: v.detach().cpu().contiguous().clone()  # no shared storage (refused)
        for k, v in state_dict_of(checkpoint).items()
    }
    f.write(
        save(
            tensors,
            metadata=dict(written_by=WRITTEN_BY, meta=json.dumps(meta, default=_json_value)),
        )
    )


def save_checkpoint(checkpoint: dict, path: str):
    """``dump_checkpoint`` to ``path``, atomically (see atomic_file)."""
    with atomic_file(path) as f:
        dump_checkpoint(checkpoint, f, path)


def checkpoint_written_here(path: str) -> bool:
    """Whether the checkpoint ``path`` carries our mark (WRITTEN_BY); read without
    loading its tensors (safetensors header; .pth memory-mapped)."""
    try:
        if path.lower().endswith('.safetensors'):
            from safetensors import safe_open

            with safe_open(path, framework='pt') as f:
                return (f.metadata() or {}).get('written_by') == WRITTEN_BY
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # unreadable, foreign, legacy format: not ours
        return False
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return isinstance(meta, dict) and meta.get('written_by') == WRITTEN_BY


def state_dict_of(checkpoint: dict) -> StateDict:
    """The state dict inside a checkpoint ('state_dict' / 'model' entry, or the dict),
    without the ``module.`` prefix of a model wrapped in DistributedDataParallel (as
    mmengine's ``load_checkpoint`` strips it); CheckpointError when it holds no weights (an
    optimizer state alone, a state dict nested in another)."""
    state_dict = next(
        (
            checkpoint[key]
            for key in ('state_dict', 'model')
            if isinstance(checkpoint.get(key), dict)
        ),
        checkpoint,
    )
    if not any(isinstance(value, (torch.Tensor, np.ndarray)) for value in state_dict.values()):
        entries = ', '.join(
            f'{key!r} ({"dict" if isinstance(value, dict) else type(value).__name__})'
            for key, value in state_dict.items()
        )
        raise CheckpointError(
            f'The checkpoint holds no weights: no tensor among the entries '
            f'of its state dict ({entries or "none"}). Give the checkpoint '
            f'that training saved (its weights in a state_dict entry or at '
            f'its top level, not nested deeper).'
        )
    if not any(isinstance(k, str) and k.startswith('module.') for k in state_dict):
        return state_dict
    unwrapped = {
        re.sub(r'^module\.', '', k) if isinstance(k, str) else k: v for k, v in state_dict.items()
    }
    if len(unwrapped) != len(state_dict):
        both = next(k for k in state_dict if f'module.{k}' in state_dict)
        raise CheckpointError(
            f'The state dict holds {both!r} both with and without the '
            f'`module.` prefix of a DistributedDataParallel model: two '
            f"state dicts merged? Save one model's state dict."
        )
    return unwrapped
