"""Checkpoint files: safe loading (``weights_only=True`` with an allow-list) and atomic
writes. Nothing here knows about MobileOne; see formats.py for the weight layouts."""
import contextlib
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
    if os.path.isdir(path):
        raise CheckpointError(f'Checkpoint {path!r} is a folder, not a file: give the '
                              f'checkpoint file in it (a work dir names its newest one in '
                              f'last_checkpoint).')
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
        return CheckpointLoader.load_checkpoint(source, map_location)
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
