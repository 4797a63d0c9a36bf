"""What many test files share: the checkout and the tiny config of each task (the
configs the synthetic data sets train; tests build random models from them), the tiny
classifier's input files, and how a tool in tools/ is loaded and run in this process."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.predict.metadata import export_metadata
from mobileone_mm.runtimes.onnx_graphs import export_onnx

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIGS = {
    'detection': 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
    'segmentation': 'configs/segmentation/'
    'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
    'classification': 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py',
}
CLASSIFIER_CONFIG = str(REPO / TINY_CONFIGS['classification'])
CLASSES = ['disk', 'square', 'triangle', 'star']  # what the tiny configs name


def make_tiny_classifier(folder: Path) -> dict:
    """The files of a random tiny Flowers classifier, written in ``folder``: name -> path
    of its config ('config'), a checkpoint of it as a training run saves one, with the
    class names in its meta ('cls_pth'), our 64x64 ONNX graph of it ('cls_onnx'), a
    random 40x30 photo ('photo_jpg'), and the folder ('dir')."""
    cfg = load_config(CLASSIFIER_CONFIG)
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    checkpoint = dict(
        meta=dict(dataset_meta=dict(classes=CLASSES)),
        state_dict=model.state_dict(),
        optimizer=dict(state={}),
    )
    torch.save(checkpoint, folder / 'cls.pth')
    export_onnx(
        model,
        str(folder / 'cls.onnx'),
        (64, 64),
        metadata=export_metadata(cfg, checkpoint, model, CLASSIFIER_CONFIG),
    )
    photo = np.random.RandomState(0).randint(0, 256, (30, 40, 3), np.uint8)
    Image.fromarray(photo).save(folder / 'photo.jpg')
    return {
        'config': CLASSIFIER_CONFIG,
        'cls_pth': str(folder / 'cls.pth'),
        'cls_onnx': str(folder / 'cls.onnx'),
        'photo_jpg': str(folder / 'photo.jpg'),
        'dir': str(folder),
    }


def snapshot(*folders) -> dict:
    """path -> (inode, size, modification time) of everything in ``folders`` (links
    left out): equal snapshots, nothing written, replaced or deleted there."""
    return {
        str(p): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for folder in folders
        for p in Path(folder).rglob('*')
        if not p.is_symlink()
    }


def load_tool(name: str):
    """tools/NAME.py as a module, loaded afresh."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(tool: str, argv, capsys, monkeypatch):
    """(exit code, the error line or '', stdout, stderr) of tools/TOOL.py's main() in
    this process, with sys.argv as on the command line."""
    monkeypatch.setattr(sys, 'argv', [f'{tool}.py', *map(str, argv)])
    code = 0
    try:
        load_tool(tool).main()
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    if isinstance(code, str):  # sys.exit('tool: message'): a failed check, exit code 1
        return 1, code, captured.out, captured.err
    line = (captured.err.strip().splitlines() or [''])[-1] if code else ''
    return code or 0, line, captured.out, captured.err


class Payload:
    """A pickle that would run a command when loaded (never is: checkpoints are loaded
    weights_only, with an allow-list)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    return (
        (actual.double() - expected.double()).abs().max()
        / expected.double().abs().max().clamp_min(1e-30)
    ).item()
