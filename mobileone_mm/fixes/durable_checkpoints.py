"""Crash-safe training checkpoints: a run killed at any moment (SIGKILL, OOM killer, a
pre-empted job) leaves a work dir that ``--resume`` continues from.

mmengine 0.10.7 can lose every checkpoint of a run killed at the wrong moment:

1. ``LocalBackend.put`` / ``put_text`` (``mmengine/fileio/backends/local_backend.py``),
   which ``mmengine.runner.checkpoint.save_checkpoint`` uses, open the target and write
   into it: a kill mid-write leaves a torn ``epoch_N.pth`` / ``iter_N.pth``.
2. ``CheckpointHook._save_checkpoint_with_step`` (``mmengine/hooks/checkpoint_hook.py``)
   deletes the oldest checkpoint *before* saving the new one when ``max_keep_ckpts`` is
   set (our tiny configs and many mmdet configs keep 1), and ``_save_best_checkpoint``
   deletes the previous best before saving the new best: a kill in between leaves
   ``last_checkpoint`` naming a deleted file, and ``--resume`` fails.
3. ``last_checkpoint`` is written after the checkpoint, with a plain ``open(..., 'w')``:
   a kill in between (or during that write) leaves it missing, stale or empty, and
   ``--resume`` starts over or fails.

Importing this module (a config lists it in ``custom_imports``; ``import mobileone_mm``
alone does not) runs ``enable_durable_checkpoints()``, which makes local ``put`` /
``put_text`` atomic (temp file, fsync, rename: ``checkpoints.io.atomic_file``; every local
write of mmengine's file backend, checkpoints and logs alike), defers the hook's
deletions until the new checkpoint and ``last_checkpoint`` are written, and lets
``--resume`` fall back to the newest complete ``epoch_*.pth`` / ``iter_*.pth`` of the work
dir when ``last_checkpoint`` is missing, empty or names a file that is gone. Nothing in
site-packages is edited.
"""

import functools
import logging
import os
import re
from typing import Optional

from ..checkpoints.io import atomic_file

_ENABLED = False
CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def newest_checkpoint(work_dir: str) -> Optional[str]:
    """The most recently written ``epoch_N.pth`` / ``iter_N.pth`` of ``work_dir`` (every
    file there is complete: they are written atomically), or None."""
    try:
        names = [n for n in os.listdir(work_dir) if CHECKPOINT_NAME.match(n)]
    except FileNotFoundError:
        return None
    paths = [os.path.join(work_dir, n) for n in names]
    return max(paths, key=lambda p: (os.path.getmtime(p), p)) if paths else None


def find_latest_checkpoint(path: str) -> Optional[str]:
    """mmengine's ``find_latest_checkpoint`` (the file ``last_checkpoint`` names), or,
    when that is missing, empty or names a file that does not exist, the newest
    checkpoint of the folder."""
    from mmengine.logging import print_log

    save_file = os.path.join(path, 'last_checkpoint')
    named = None
    if os.path.exists(save_file):
        with open(save_file) as f:
            named = f.read().strip() or None
    if named is not None and (os.path.exists(named) or '://' in named):
        return named
    fallback = newest_checkpoint(path)
    reason = (
        f'{save_file} names {named}, which does not exist' if named else f'no usable {save_file}'
    )
    print_log(
        f'mobileone_mm: {reason}; resuming from the newest checkpoint of the work dir: {fallback}'
        if fallback
        else f'mobileone_mm: {reason} and no '
        f'epoch_*.pth / iter_*.pth in {path}: nothing to resume.',
        logger='current',
        level=logging.WARNING,
    )
    return fallback


def _identity(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _defer_removals(method):
    """Run a CheckpointHook method with its file deletions postponed until it returns, so
    that the new checkpoint (and last_checkpoint) exist before the old one goes. A file
    written anew during the call (the same name saved again) is kept."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        backend = self.file_backend
        if 'remove' in vars(backend):  # nested (the best checkpoint saves a step too)
            return method(self, *args, **kwargs)
        removals = []
        # an instance attribute shadows LocalBackend.remove for the call
        backend.remove = lambda path: removals.append((path, _identity(path)))
        try:
            result = method(self, *args, **kwargs)
        finally:
            del backend.remove
        for path, identity in removals:
            if identity is not None and _identity(path) == identity:
                backend.remove(path)
        return result

    return wrapper


def _atomic_put(self, obj: bytes, filepath):
    with atomic_file(os.fspath(filepath), 'wb') as f:
        f.write(obj)


def _atomic_put_text(self, obj: str, filepath, encoding: str = 'utf-8'):
    _atomic_put(self, obj.encode(encoding), filepath)


def enable_durable_checkpoints() -> bool:
    """Make mmengine's checkpointing crash-safe (see the module docstring). Idempotent."""
    global _ENABLED
    if _ENABLED:
        return True
    import mmengine.runner.runner as runner_module
    from mmengine.fileio.backends import LocalBackend
    from mmengine.hooks import CheckpointHook

    LocalBackend.put = _atomic_put
    LocalBackend.put_text = _atomic_put_text
    CheckpointHook._save_checkpoint_with_step = _defer_removals(
        CheckpointHook._save_checkpoint_with_step
    )
    CheckpointHook._save_best_checkpoint = _defer_removals(CheckpointHook._save_best_checkpoint)
    runner_module.find_latest_checkpoint = find_latest_checkpoint
    _ENABLED = True
    return True


enable_durable_checkpoints()
