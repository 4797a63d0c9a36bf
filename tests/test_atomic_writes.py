"""Atomic writes: a writer SIGKILLed mid-way leaves the old file or the new one, temp
files of live or foreign writers are kept, an error keeps the old file."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mobileone_mm import (
    load_checkpoint_file,
    save_checkpoint,
)
from mobileone_mm.checkpoints.io import TEMP_MARK, atomic_file, remove_stale_temp_files

WRITER = textwrap.dedent("""
    import os, sys, time, torch
    import mobileone_mm.fixes.durable_checkpoints
    from mobileone_mm.checkpoints.io import atomic_file, save_checkpoint
    kind, path, version = sys.argv[1], sys.argv[2], int(sys.argv[3])
    checkpoint = dict(version=version, state_dict={
        f'w{i}': torch.full((1 << 19, ), float(version)) for i in range(32)})  # 64 MB
    print('writing', flush=True)
    if kind == 'ours':
        save_checkpoint(checkpoint, path)
    elif kind == 'mmengine':  # the Runner's writer, made atomic by the durable fix
        from mmengine.runner.checkpoint import save_checkpoint as mm_save
        mm_save(checkpoint, path)
    else:  # slow chunks: the kill lands mid-write
        import io
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with atomic_file(path) as f:
            for start in range(0, len(data), len(data) // 40):
                f.write(data[start:start + len(data) // 40])
                time.sleep(0.01)
    print('done', flush=True)
""")


def _temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['ours', 'mmengine', 'chunked'])
def test_writer_killed_midway_leaves_old_or_new_file(kind, tmp_path):
    """A process writing a 64 MB checkpoint over an existing one is SIGKILLed at a
    (seeded) random moment after it starts writing, four times: the target always loads
    and holds the previous version or the new one, whole. Killed writers leave
    `.model.pth.tmp-<host>-<pid>-*` files, which the next write removes."""
    folder = tmp_path / 'ckpt'
    target = folder / 'model.pth'
    save_checkpoint(dict(version=0, state_dict={'w0': torch.zeros(4)}), target)
    script = tmp_path / 'writer.py'
    script.write_text(WRITER)
    rng = random.Random(f'kill-{kind}')
    current, outcomes = 0, []
    for version in range(1, 5):
        child = subprocess.Popen(
            [sys.executable, str(script), kind, str(target), str(version)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS='1'),
        )
        assert child.stdout.readline().strip() == 'writing'
        time.sleep(rng.uniform(0.0, 0.5 if kind == 'chunked' else 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        left = _temp_files(folder)
        assert all(name.startswith('.model.pth.tmp-') for name in left), left
        checkpoint = load_checkpoint_file(target)  # never torn: it loads
        assert checkpoint['version'] in (current, version)
        assert all(
            torch.all(w == float(checkpoint['version'])) for w in checkpoint['state_dict'].values()
        )
        outcomes.append(
            'new' if checkpoint['version'] == version else 'old+temp' if left else 'old'
        )
        current = checkpoint['version']
    if kind == 'chunked':
        assert 'old+temp' in outcomes, outcomes  # the kills did land mid-write
    save_checkpoint(dict(version=99, state_dict={'w0': torch.ones(1)}), target)  # cleans up
    assert sorted(p.name for p in folder.iterdir()) == ['model.pth']
    assert load_checkpoint_file(target)['version'] == 99


def test_stale_temp_files_of_live_or_foreign_writers_are_kept(tmp_path):
    target = tmp_path / 'model.pth'
    import socket

    host = socket.gethostname()
    live = tmp_path / f'.model.pth{TEMP_MARK}{host}-{os.getpid()}-abc'
    foreign = tmp_path / f'.model.pth{TEMP_MARK}otherhost-1-abc'
    dead_child = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    )
    dead = tmp_path / f'.model.pth{TEMP_MARK}{host}-{dead_child.stdout.strip()}-abc'
    unrelated = tmp_path / '.other.pth.tmp-x'
    for path in (live, foreign, dead, unrelated):
        path.write_bytes(b'partial')
    assert remove_stale_temp_files(target) == [str(dead)]
    assert live.exists() and foreign.exists() and unrelated.exists()


def test_atomic_file_error_keeps_the_old_file(tmp_path):
    target = tmp_path / 'config.py'
    target.write_text('old = 1\n')
    with pytest.raises(RuntimeError):
        with atomic_file(target, 'w') as f:
            f.write('new = ')
            raise RuntimeError('interrupted')
    assert target.read_text() == 'old = 1\n'
    assert os.listdir(tmp_path) == ['config.py']
