"""`make demo` (tools/demo.py), the README's second command, run for real: every command
it runs and every number it reads from their output. The demo once crashed at its summary
table, after every step had passed, because it read two numbers from a line export_onnx
had stopped printing; no test ran it.

The detection task runs end to end (`--quick`: 4 train and 2 val images, one training
iteration) through the summary table. The segmentation task runs the same commands on
mmseg; what it alone reads from a command's output, the mIoU `mim test mmseg` prints, is
held here to the real command's output on a random model (its full run would double the
test's time: each command is mostly its own imports, ~10 s on this 2-core machine).
"""

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from helpers import REPO
from PIL import Image

from mobileone_mm.devkit.tiny_data import make_tiny_ade20k
from mobileone_mm.loading.config import build_model, load_config

spec = importlib.util.spec_from_file_location('tool_demo', REPO / 'tools' / 'demo.py')
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)

# The README's commands, in the order the demo runs them for a task.
STEPS = [
    'make_tiny_datasets.py',
    'mim train mmdet',
    'mim test mmdet',
    'reparameterize.py',
    'mim test mmdet',
    'export_onnx.py --verify',
    'onnx_infer.py',
]
NUMBER = r'(-?[\d.]+)'


def step_name(command: str) -> str:
    """'mim test mmdet' / 'export_onnx.py --verify' for a command the demo echoed."""
    words = shlex.split(command)
    if Path(words[0]).name == 'mim':
        return ' '.join(['mim', *words[1:3]])
    return ' '.join([Path(words[1]).name, *(w for w in words[2:] if w == '--verify')])


def logged_metrics(work_dir: Path) -> list:
    """What `mim test` runs wrote under work_dir, in the order they ran: the metrics
    mmengine's test loop dumps to ``<timestamp>/<timestamp>.json``, not the printed ones."""
    return [json.loads(log.read_text()) for log in sorted(work_dir.glob('*/*.json'))]


@pytest.mark.slow
def test_demo_runs_every_command_to_its_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo moves into --root; back after the test
    demo.main(
        ['--quick', '--archs', 's0', '--runs', '1', '--tasks', 'detection', '--root', str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert [step_name(line[2:]) for line in out.splitlines() if line.startswith('$ ')] == STEPS

    assert re.search(r'^s0 .*\d\.\de-\d\d$', out, re.M), out  # the backbones' table row
    (row,) = re.findall(
        r'^\| detection \| bbox mAP \| ' + r' \| '.join([NUMBER] * 5) + r' \|$', out, re.M
    )
    train, deploy, minutes, torch_ms, onnx_ms = map(float, row)
    # The metrics the demo read from `mim test`'s output are those the test runs logged.
    logged = logged_metrics(tmp_path / 'work_dirs' / 'demo_detection' / 'test')
    assert [train, deploy] == [float(f'{m["coco/bbox_mAP"]:.4f}') for m in logged], logged
    assert minutes >= 0 and torch_ms > 0 and onnx_ms > 0, row

    (files,) = re.findall(r'^detection files: (.*)$', out, re.M)
    files = files.split(', ')
    assert [Path(f).name for f in files[1:]] == [
        'deploy.pth',
        'deploy.py',
        'detection.onnx',
        'vis.png',
    ]
    assert Path(files[0]).name.startswith('best_coco_bbox_mAP_epoch_1'), files
    assert all(Path(f).is_file() for f in files), files
    with Image.open(files[-1]) as picture:  # onnx_infer's drawing
        assert picture.size[0] > 0


@pytest.mark.slow
def test_demo_reads_the_miou_mim_test_prints(tmp_path, monkeypatch):
    """The segmentation task's mIoU, read by the demo's own `mim_test` from a real
    `mim test mmseg` run (a random model on the tiny ADE20K set), is the one the run
    logged; and the val image the demo hands onnx_infer is where the data set tool
    writes it."""
    monkeypatch.chdir(tmp_path)  # the config's data root is relative
    settings = demo.TASKS['segmentation']
    make_tiny_ade20k(settings['data'][1], num_train=1, num_val=2)
    assert sorted(Path(settings['image']).glob('*.jpg'))
    config = str(REPO / settings['config'])
    model, _ = build_model(load_config(config))
    torch.save(dict(state_dict=model.state_dict()), 'random.pth')

    miou = demo.mim_test(settings, config, 'random.pth', str(tmp_path / 'test'))
    (logged,) = logged_metrics(tmp_path / 'test')
    assert miou == float(f'{logged["mIoU"]:.4f}'), logged
