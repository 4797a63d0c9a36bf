"""Training checkpoints that survive a killed run (mobileone_mm.fixes.durable_checkpoints):
the old checkpoint is deleted only after the new one is saved, deferred removals nest,
--resume falls back to the newest complete checkpoint, a run killed after its first
checkpoint resumes to the same iteration count."""

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pytest
import torch
from helpers import REPO

from mobileone_mm import (
    load_checkpoint_file,
    save_checkpoint,
)


def checkpoint_named(name: str) -> dict:
    """A checkpoint as training writes one (weights and meta), its name in the meta."""
    return dict(state_dict={'weight': torch.zeros(1)}, meta=dict(name=name))


class FakeRunner:
    """What CheckpointHook._save_checkpoint_with_step uses of the Runner."""

    def __init__(self, work_dir, fail: bool):
        from mmengine.logging import MessageHub

        self.work_dir, self.fail = str(work_dir), fail
        self.message_hub = MessageHub.get_instance(f'durable-{work_dir}')

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        if self.fail:  # the process dies while writing the new checkpoint
            raise KeyboardInterrupt('killed while saving')
        save_checkpoint(checkpoint_named(filename), os.path.join(out_dir, filename))


def checkpoint_hook(work_dir):
    from mmengine.fileio import get_file_backend
    from mmengine.hooks import CheckpointHook

    hook = CheckpointHook(interval=1, max_keep_ckpts=1)
    hook.out_dir, hook.file_backend = str(work_dir), get_file_backend(str(work_dir))
    hook.keep_ckpt_ids = deque([1], 1)
    save_checkpoint(checkpoint_named('epoch_1.pth'), work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    return hook


def test_checkpoint_hook_deletes_the_old_checkpoint_only_after_saving(tmp_path):
    """mmengine's CheckpointHook (max_keep_ckpts=1) deletes epoch_1.pth before writing
    epoch_2.pth: a kill in between leaves last_checkpoint naming a deleted file. With
    mobileone_mm.fixes.durable_checkpoints imported, the deletion waits until the new
    checkpoint is written."""
    from mmengine.hooks import CheckpointHook
    from mmengine.runner.runner import find_latest_checkpoint

    import mobileone_mm.fixes.durable_checkpoints  # noqa: F401

    upstream = CheckpointHook._save_checkpoint_with_step.__wrapped__
    (tmp_path / 'upstream').mkdir()
    hook = checkpoint_hook(tmp_path / 'upstream')
    with pytest.raises(KeyboardInterrupt):
        upstream(hook, FakeRunner(tmp_path / 'upstream', fail=True), 2, {})
    assert not (tmp_path / 'upstream' / 'epoch_1.pth').exists()  # the trap, guarded

    (tmp_path / 'ours').mkdir()
    work_dir = tmp_path / 'ours'
    hook = checkpoint_hook(work_dir)
    with pytest.raises(KeyboardInterrupt):
        hook._save_checkpoint_with_step(FakeRunner(work_dir, fail=True), 2, {})
    assert find_latest_checkpoint(str(work_dir)) == str(work_dir / 'epoch_1.pth')
    assert load_checkpoint_file(work_dir / 'epoch_1.pth')['meta']['name'] == 'epoch_1.pth'
    hook = checkpoint_hook(work_dir)
    hook._save_checkpoint_with_step(FakeRunner(work_dir, fail=False), 2, {})
    assert sorted(os.listdir(work_dir)) == ['epoch_2.pth', 'last_checkpoint']
    assert find_latest_checkpoint(str(work_dir)) == str(work_dir / 'epoch_2.pth')


def test_deferred_removals_nest(tmp_path):
    """_save_best_checkpoint removes the previous best, saves the new best, then calls
    _save_checkpoint_with_step: the removals of both wait for the outer call's end."""
    from mmengine.fileio import get_file_backend

    from mobileone_mm.fixes.durable_checkpoints import _defer_removals

    for name in ('best_1.pth', 'epoch_1.pth'):
        save_checkpoint({}, tmp_path / name)
    seen = []

    class Hook:
        file_backend = get_file_backend(str(tmp_path))

        @_defer_removals
        def step(self):
            self.file_backend.remove(str(tmp_path / 'epoch_1.pth'))
            save_checkpoint({}, tmp_path / 'epoch_2.pth')
            seen.append(sorted(os.listdir(tmp_path)))

        @_defer_removals
        def best(self):
            self.file_backend.remove(str(tmp_path / 'best_1.pth'))
            save_checkpoint({}, tmp_path / 'best_2.pth')
            self.step()
            seen.append(sorted(os.listdir(tmp_path)))

    Hook().best()
    assert seen == [['best_1.pth', 'best_2.pth', 'epoch_1.pth', 'epoch_2.pth']] * 2
    assert sorted(os.listdir(tmp_path)) == ['best_2.pth', 'epoch_2.pth']
    assert 'remove' not in vars(Hook.file_backend)


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    """last_checkpoint missing (killed before it was written), empty (killed while it was
    written) or naming a file that is gone: --resume takes the newest epoch_/iter_ file."""
    from mmengine.runner.runner import find_latest_checkpoint

    import mobileone_mm.fixes.durable_checkpoints  # noqa: F401

    assert find_latest_checkpoint(str(tmp_path)) is None
    for i, name in enumerate(['epoch_1.pth', 'epoch_2.pth', 'best_coco_bbox_mAP_epoch_9.pth']):
        save_checkpoint({}, tmp_path / name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    newest = str(tmp_path / 'epoch_2.pth')
    assert find_latest_checkpoint(str(tmp_path)) == newest
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_latest_checkpoint(str(tmp_path)) == newest
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_7.pth'))
    assert find_latest_checkpoint(str(tmp_path)) == newest
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_1.pth')


def mmdet_train_command(*args):
    import mmdet

    script = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'
    return [
        sys.executable,
        str(script),
        str(REPO / 'configs' / 'detection' / 'ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py'),
        *map(str, args),
    ]


@pytest.mark.slow
def test_training_killed_after_first_checkpoint_resumes(tmp_path):
    """Tiny SSDLite training (what `mim train mmdet` runs), SIGKILLed as soon as its first
    checkpoint file appears (which may be before last_checkpoint is written), then run
    again with --resume: it continues from that checkpoint's epoch and iteration, and ends
    where an uninterrupted run would (2 epochs of K iterations: iteration 2K)."""
    from mobileone_mm.devkit.tiny_data import make_tiny_coco

    make_tiny_coco(tmp_path / 'data' / 'tiny_coco', num_train=8, num_val=2)
    work_dir = tmp_path / 'work'
    options = [
        '--cfg-options',
        'train_dataloader.batch_size=4',
        'train_cfg.max_epochs=2',
        'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.save_best=None',
        'default_hooks.logger.interval=1',
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    log = open(tmp_path / 'killed.log', 'w')
    child = subprocess.Popen(
        mmdet_train_command('--work-dir', work_dir, *options),
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    first = work_dir / 'epoch_1.pth'
    deadline = time.time() + 240
    while not first.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    log.close()
    assert first.exists(), (tmp_path / 'killed.log').read_text()[-3000:]
    assert not (work_dir / 'epoch_2.pth').exists()
    iters = load_checkpoint_file(first)['meta']['iter']  # complete: written atomically
    assert iters > 0

    done = subprocess.run(
        mmdet_train_command('--work-dir', work_dir, '--resume', *options),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f'resumed epoch: 1, iter: {iters}' in output, output[-3000:]
    assert 'Traceback' not in output
    final = load_checkpoint_file(work_dir / 'epoch_2.pth')['meta']
    assert (final['epoch'], final['iter']) == (2, 2 * iters)
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / 'epoch_2.pth')
    assert not (work_dir / 'epoch_1.pth').exists()  # max_keep_ckpts=1, after the save
