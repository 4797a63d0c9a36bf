"""Bad and unusual inputs, one table row each, grouped by entry point: the four CLIs (run
in-process through their main() with sys.argv) and the Python API. A row gives the input,
the entry point and what must happen: a one-line error matching a pattern (no traceback:
an unexpected exception fails the row), or success with a given output. Every row also
checks that nothing was written and no input changed, unless it is meant to write.

Add a row to cover a new case. The inputs: the tiny Flowers classifier of conftest.py
(its config, checkpoint and 64x64 ONNX graph, a photo; built once), and broken copies of
them and a few odd photos, built once in this module.
"""

import copy
import functools
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import pytest
import torch
from helpers import CLASSES, Payload, run_main, snapshot
from helpers import CLASSIFIER_CONFIG as CONFIG
from PIL import Image

from mobileone_mm import CheckpointError, MobileOne, convert_state_dict, optimize_for_inference
from mobileone_mm.checkpoints.io import TEMP_MARK, load_checkpoint_file
from mobileone_mm.checkpoints.paths import PathError, atomic_files, check_input_file, plan_outputs
from mobileone_mm.fusion.reparameterize import reparameterize_checkpoint, write_deploy_files
from mobileone_mm.loading.config import DeployError, ExportError, build_model, load_config
from mobileone_mm.models.arch import resolve_arch
from mobileone_mm.predict.metadata import class_names
from mobileone_mm.predict.photos import PredictError, preprocess, read_photo
from mobileone_mm.runtimes.onnx_graphs import export_onnx


def save_image(path, size, mode='RGB', fmt=None):
    rng = np.random.RandomState(sum(size))
    shape = (size[1], size[0]) + ((len(mode),) if len(mode) > 1 else ())
    Image.fromarray(rng.randint(0, 256, shape).astype(np.uint8), mode).save(path, fmt)


def with_metadata(source, target, **changes):
    """A copy of an ONNX file with metadata entries changed (value None: removed)."""
    import onnx

    graph = onnx.load(source)
    entries = {p.key: p.value for p in graph.metadata_props}
    entries.update(changes)
    del graph.metadata_props[:]
    for key, value in entries.items():
        if value is not None:
            graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, target)


@pytest.fixture(scope='module')
def files(tiny_classifier, tmp_path_factory):
    """name -> path of every input the rows use (see the module docstring); 'dir' is
    this module's folder."""
    d = tmp_path_factory.mktemp('inputs')
    state = torch.load(tiny_classifier['cls_pth'], weights_only=True)['state_dict']
    data = Path(tiny_classifier['cls_pth']).read_bytes()
    (d / 'empty.pth').write_bytes(b'')
    (d / 'truncated.pth').write_bytes(data[: len(data) // 3])
    (d / 'notes.txt').write_text('not a checkpoint\n')
    (d / 'ckdir').mkdir()
    torch.save({'state_dict': {}, 'x': Payload(d / 'pwned')}, d / 'payload.pth')
    torch.save({'conv1.weight': torch.ones(1), 'fc.weight': torch.ones(1)}, d / 'foreign.pth')
    torch.save(
        {k: v for k, v in state.items() if 'stage3.5.branch_norm.running_var' not in k},
        d / 'partial.pth',
    )
    torch.save({k: v.numpy() for k, v in state.items()}, d / 'numpy.pth')
    torch.save({**state, 'backbone.note': 'hello'}, d / 'stringval.pth')
    torch.save(dict(optimizer=dict(state={}, param_groups=[])), d / 'optimizer_only.pth')
    torch.save(dict(state_dict=dict(state_dict=state)), d / 'nested.pth')
    (d / 'copy.py').write_text(f"_base_ = '{CONFIG}'\n")
    (d / 'syntax.py').write_text(f"_base_ = '{CONFIG}'\nmodel = dict(\n")
    (d / 'inherits_syntax.py').write_text("_base_ = './syntax.py'\n")
    (d / 'noscope.py').write_text("model = dict(type='NoSuchModel')\n")
    (d / 'resnet.py').write_text(
        "default_scope = 'mmpretrain'\n"
        "model = dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=18),\n"
        "             neck=dict(type='GlobalAveragePooling'),\n"
        "             head=dict(type='LinearClsHead', num_classes=4, in_channels=512))\n"
    )
    # photos
    save_image(d / 'photo.png', (40, 30))
    save_image(d / 'gray.png', (33, 21), 'L')
    save_image(d / 'rgba.png', (25, 40), 'RGBA')
    save_image(d / 'one.png', (1, 1))
    save_image(d / 'thin.png', (20, 500))
    save_image(d / 'big.jpg', (300, 200))
    jpeg, png = (d / 'big.jpg').read_bytes(), (d / 'photo.png').read_bytes()
    (d / 'truncated.jpg').write_bytes(jpeg[: len(jpeg) // 2])
    (d / 'truncated.png').write_bytes(png[: len(png) // 2])
    (d / 'text.jpg').write_text('not an image\n')
    (d / 'empty.jpg').write_bytes(b'')
    # ONNX files
    onnx_data = Path(tiny_classifier['cls_onnx']).read_bytes()
    (d / 'garbage.onnx').write_bytes(b'\x12\x34' * 50)
    (d / 'truncated.onnx').write_bytes(onnx_data[: len(onnx_data) // 2])
    with torch.no_grad():
        torch.onnx.export(
            torch.nn.Conv2d(3, 4, 3),
            (torch.zeros(1, 3, 8, 8),),
            str(d / 'plain.onnx'),
            dynamo=False,
            input_names=['image'],
        )
    with_metadata(tiny_classifier['cls_onnx'], d / 'badtask.onnx', task='"painting"')
    with_metadata(tiny_classifier['cls_onnx'], d / 'badshape.onnx', input_shape='[32, 48]')
    with_metadata(tiny_classifier['cls_onnx'], d / 'badclasses.onnx', classes='["a", "b", "c"]')
    with_metadata(tiny_classifier['cls_onnx'], d / 'dettask.onnx', task='"detection"')
    with_metadata(tiny_classifier['cls_onnx'], d / 'notjson.onnx', classes='[not json')
    with_metadata(tiny_classifier['cls_onnx'], d / 'noshape.onnx', input_shape=None)
    with_metadata(tiny_classifier['cls_onnx'], d / 'nopreprocess.onnx', preprocess=None)
    return dict(
        tiny_classifier,
        dir=str(d),
        **{name.replace('.', '_'): str(d / name) for name in os.listdir(d)},
    )


# What every row's own output folder holds before it runs: outputs may be aimed at them.
def prepare_output_folder(out: Path, files):
    (out / 'afile').write_text('a file, not a folder\n')
    (out / 'adir').mkdir()
    (out / 'deploy.py').mkdir()  # where the deploy config of deploy.pth would go
    (out / 'link.png').symlink_to(files['photo_png'])
    shutil.copy(files['photo_png'], out / 'photo.png')


# ---------------------------------------------------------------------------- CLIs
@dataclass
class Cli:
    tool: str
    args: Tuple[str, ...]
    error: Optional[str] = None  # pattern of the one-line error, or
    ok: Optional[str] = None  # pattern of the output of a success
    writes: Tuple[str, ...] = ()  # files a success writes in {out}
    check: Optional[Callable] = field(default=None, repr=False)  # more checks (out, files)
    slow: bool = False  # a whole run (model built, checked, written)


def picture_size(out, files):
    assert Image.open(out / 'vis.png').size == Image.open(files['big_jpg']).size


def converted_numpy(out, files):
    state = load_checkpoint_file(out / 'c.pth')['state_dict']
    assert all(isinstance(v, torch.Tensor) for v in state.values())


CLI_CASES = {
    # tools/reparameterize.py ------------------------------------------------------
    'rep-missing-checkpoint': Cli(
        'reparameterize',
        ('{config}', '{dir}/nope.pth', '{out}/d.pth'),
        error=r"Checkpoint '.*nope.pth' does not exist",
    ),
    'rep-checkpoint-folder': Cli(
        'reparameterize',
        ('{config}', '{ckdir}', '{out}/d.pth'),
        error=r'ckdir.* is a folder, not a file.*last_checkpoint',
    ),
    'rep-empty-checkpoint': Cli(
        'reparameterize', ('{config}', '{empty_pth}', '{out}/d.pth'), error=r'is empty \(0 bytes\)'
    ),
    'rep-truncated-checkpoint': Cli(
        'reparameterize',
        ('{config}', '{truncated_pth}', '{out}/d.pth'),
        error=r'truncated or corrupted',
    ),
    'rep-text-checkpoint': Cli(
        'reparameterize',
        ('{config}', '{notes_txt}', '{out}/d.pth'),
        error=r'not a readable PyTorch checkpoint',
    ),
    'rep-payload-checkpoint': Cli(
        'reparameterize',
        ('{config}', '{payload_pth}', '{out}/d.pth'),
        error=r'Refusing to load .*system.*nothing of it was run',
    ),
    'rep-foreign-checkpoint': Cli(
        'reparameterize',
        ('{config}', '{foreign_pth}', '{out}/d.pth'),
        error=r'does not fit the model: \d+ missing keys',
    ),
    'rep-other-model-config': Cli(
        'reparameterize',
        ('{resnet_py}', '{foreign_pth}', '{out}/d.pth'),
        error=r'ResNet.*no re-parameterizable block',
    ),
    'rep-missing-config': Cli(
        'reparameterize',
        ('{dir}/nope.py', '{cls_pth}', '{out}/d.pth'),
        error=r"Config '.*nope.py' does not exist",
    ),
    'rep-config-folder': Cli(
        'reparameterize',
        ('{ckdir}', '{cls_pth}', '{out}/d.pth'),
        error=r'Config .*ckdir.* is a folder',
    ),
    'rep-config-syntax-error': Cli(
        'reparameterize',
        ('{syntax_py}', '{cls_pth}', '{out}/d.pth'),
        error=r"Config '.*syntax.py' has a syntax error at line 2",
    ),
    'rep-base-config-syntax-error': Cli(
        'reparameterize',
        ('{inherits_syntax_py}', '{cls_pth}', '{out}/d.pth'),
        error=r"A config that '.*inherits_syntax.py' inherits \(_base_\) has a syntax error",
    ),
    'rep-unknown-codebase': Cli(
        'reparameterize',
        ('{noscope_py}', '{cls_pth}', '{out}/d.pth'),
        error=r'Cannot tell which codebase.*default_scope',
    ),
    # bad case 2: the deploy config would be written over the deploy checkpoint
    'rep-out-ends-in-py': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/model.py'),
        error=r"'.*model.py' ends in .py.*name it .pth",
    ),
    'rep-out-is-the-checkpoint': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{cls_pth}'),
        error=r'would overwrite the checkpoint .*an input',
    ),
    'rep-config-out-is-the-config': Cli(
        'reparameterize',
        ('{copy_py}', '{cls_pth}', '{dir}/copy.pth'),
        error=r'deploy config .* would overwrite the config',
    ),
    'rep-out-is-a-folder': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/adir'),
        error=r'deploy checkpoint .*adir.* is a folder',
    ),
    'rep-out-ends-in-separator': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/new/'),
        error=r'is a folder: give a file name',
    ),
    'rep-out-config-is-a-folder': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/deploy.pth'),
        error=r"deploy config '.*deploy.py' is a folder",
    ),
    'rep-out-under-a-file': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/afile/d.pth'),
        error=r"afile' is a file, not a folder",
    ),
    'rep-out-unwritable-folder': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '/proc/mobileone/d.pth'),
        error=r"folder '/proc' does not take new files",
    ),
    # bad case 8
    'rep-num-images-0': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/d.pth', '--num-images', '0'),
        error=r'--num-images: must be 1 or more, got 0',
    ),
    'rep-num-images-negative': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/d.pth', '--num-images', '-2'),
        error=r'--num-images: must be 1 or more',
    ),
    'rep-num-images-text': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/d.pth', '--num-images', 'four'),
        error=r"--num-images: invalid positive_int value: 'four'",
    ),
    # issue 24, a new user's table: more check images than memory holds, said before
    'rep-num-images-beyond-memory': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/d.pth', '--num-images', '100000000'),
        error=r'100000000 random \d+x\d+ check images needs '
        r'at least [\d.]+ GiB of memory .*use fewer '
        r'images',
    ),
    'rep-missing-argument': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}'),
        error=r'the following arguments are required: out_checkpoint',
    ),
    'rep-works': Cli(
        'reparameterize',
        ('{config}', '{cls_pth}', '{out}/new/d.pth', '--num-images', '1'),
        ok=r'written: .*d.pth\n +.*d.py',
        writes=('new/d.pth', 'new/d.py'),
        slow=True,
    ),
    # tools/export_onnx.py ---------------------------------------------------------
    # bad case 3: the checkpoint given as the output
    'exp-out-is-the-checkpoint': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{cls_pth}'),
        error=r'would overwrite the checkpoint .*cls.pth',
    ),
    'exp-out-wrong-extension': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.pth'),
        error=r"ONNX output '.*m.pth' has extension '.pth': "
        r'use .onnx',
    ),
    'exp-out-is-the-config': Cli(
        'export_onnx', ('{copy_py}', '{cls_pth}', '{copy_py}'), error=r'would overwrite the config'
    ),
    'exp-out-is-an-onnx-input': Cli(
        'export_onnx',
        ('{config}', '{cls_onnx}', '{cls_onnx}'),
        error=r'would overwrite the checkpoint',
    ),
    'exp-out-no-extension': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/model'),
        error=r'has no extension: use .onnx',
    ),
    'exp-out-is-a-folder': Cli(
        'export_onnx', ('{config}', '{cls_pth}', '{out}/x.onnx/'), error=r'is a folder'
    ),
    'exp-out-under-a-file': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/afile/m.onnx'),
        error=r'is a file, not a folder',
    ),
    'exp-out-unwritable': Cli(
        'export_onnx', ('{config}', '{cls_pth}', '/proc/m.onnx'), error=r'does not take new files'
    ),
    'exp-shape-zero': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--shape', '0', '0'),
        error=r'--shape: must be 1 or more, got 0',
    ),
    'exp-shape-negative': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--shape', '-32', '64'),
        error=r'--shape: must be 1 or more, got -32',
    ),
    'exp-shape-float': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--shape', '64.5', '64'),
        error=r"--shape: invalid positive_int value: '64.5'",
    ),
    'exp-shape-one-value': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--shape', '64'),
        error=r'--shape: expected 2 arguments',
    ),
    'exp-num-images-0': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--verify', '--num-images', '0'),
        error=r'--num-images: must be 1 or more, got 0',
    ),
    # issue 24, a new user's table: a NaN threshold compared no detection and passed
    'exp-score-thr-nan': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--verify', '--score-thr', 'nan'),
        error=r'--score-thr: must be between 0 and 1, got nan',
    ),
    'exp-missing-checkpoint': Cli(
        'export_onnx', ('{config}', '{dir}/nope.pth', '{out}/m.onnx'), error=r'does not exist'
    ),
    'exp-checkpoint-folder': Cli(
        'export_onnx', ('{config}', '{ckdir}', '{out}/m.onnx'), error=r'is a folder, not a file'
    ),
    'exp-payload-checkpoint': Cli(
        'export_onnx', ('{config}', '{payload_pth}', '{out}/m.onnx'), error=r'Refusing to load'
    ),
    'exp-truncated-checkpoint': Cli(
        'export_onnx',
        ('{config}', '{truncated_pth}', '{out}/m.onnx'),
        error=r'truncated or corrupted',
    ),
    'exp-foreign-checkpoint': Cli(
        'export_onnx',
        ('{config}', '{foreign_pth}', '{out}/m.onnx'),
        error=r'does not fit the model',
    ),
    # issue 24, a new user's table: a checkpoint without weights (was 1097 missing keys)
    'exp-optimizer-only-checkpoint': Cli(
        'export_onnx',
        ('{config}', '{optimizer_only_pth}', '{out}/m.onnx'),
        error=r'holds no weights: no tensor among the entries '
        r"of its state dict \('optimizer' \(dict\)\)",
    ),
    'exp-state-dict-nested-twice': Cli(
        'export_onnx',
        ('{config}', '{nested_pth}', '{out}/m.onnx'),
        error=r"holds no weights: .*\('state_dict' \(dict\)\)"
        r'.*not nested deeper',
    ),
    'exp-missing-config': Cli(
        'export_onnx',
        ('{dir}/nope.py', '{cls_pth}', '{out}/m.onnx'),
        error=r"Config '.*nope.py' does not exist",
    ),
    'exp-config-syntax-error': Cli(
        'export_onnx',
        ('{syntax_py}', '{cls_pth}', '{out}/m.onnx'),
        error=r"'.*syntax.py' has a syntax error at line 2",
    ),
    # bad case 7: class names from the checkpoint's meta reach the graph
    'exp-works-with-class-names': Cli(
        'export_onnx',
        ('{config}', '{cls_pth}', '{out}/m.onnx', '--shape', '48', '64'),
        ok=r"input 48x64.*classes: 4 \(the checkpoint's meta\)"
        r'\nwritten: .*m.onnx',
        writes=('m.onnx',),
    ),
    # tools/onnx_infer.py ----------------------------------------------------------
    'inf-model-missing': Cli(
        'onnx_infer',
        ('{dir}/nope.onnx', '{photo_jpg}'),
        error=r"ONNX model '.*nope.onnx' does not exist",
    ),
    'inf-model-folder': Cli(
        'onnx_infer', ('{ckdir}', '{photo_jpg}'), error=r'ONNX model .* is a folder'
    ),
    'inf-model-empty': Cli(
        'onnx_infer', ('{empty_pth}', '{photo_jpg}'), error=r'ONNX model .* is empty'
    ),
    'inf-model-is-a-checkpoint': Cli(
        'onnx_infer',
        ('{cls_pth}', '{photo_jpg}'),
        error=r'is a PyTorch checkpoint, not an ONNX model: '
        r'export it first',
    ),
    'inf-model-garbage': Cli(
        'onnx_infer', ('{garbage_onnx}', '{photo_jpg}'), error=r'is not a readable ONNX model'
    ),
    'inf-model-truncated': Cli(
        'onnx_infer', ('{truncated_onnx}', '{photo_jpg}'), error=r'is not a readable ONNX model'
    ),
    'inf-model-text': Cli(
        'onnx_infer', ('{notes_txt}', '{photo_jpg}'), error=r'is not a readable ONNX model'
    ),
    'inf-model-without-metadata': Cli(
        'onnx_infer',
        ('{plain_onnx}', '{photo_jpg}'),
        error=r'has no mobileone-mm metadata.*export_onnx',
    ),
    'inf-model-unknown-task': Cli(
        'onnx_infer', ('{badtask_onnx}', '{photo_jpg}'), error=r"has task 'painting'"
    ),
    'inf-metadata-shape-disagrees': Cli(
        'onnx_infer',
        ('{badshape_onnx}', '{photo_jpg}'),
        error=r'input_shape \[32, 48\] in the metadata but '
        r'the graph takes 64x64',
    ),
    'inf-metadata-without-shape': Cli(
        'onnx_infer', ('{noshape_onnx}', '{photo_jpg}'), error=r'input_shape None'
    ),
    'inf-metadata-classes-disagree': Cli(
        'onnx_infer', ('{badclasses_onnx}', '{photo_jpg}'), error=r'3 class names for 4 classes'
    ),
    'inf-metadata-task-disagrees': Cli(
        'onnx_infer',
        ('{dettask_onnx}', '{photo_jpg}'),
        error=r"outputs \['logits'\] \(a detection graph.*"
        r'no level_sizes',
    ),
    'inf-metadata-not-json': Cli(
        'onnx_infer', ('{notjson_onnx}', '{photo_jpg}'), error=r'metadata that is not ours'
    ),
    'inf-photo-missing': Cli(
        'onnx_infer', ('{cls_onnx}', '{dir}/nope.jpg'), error=r"photo '.*nope.jpg' does not exist"
    ),
    'inf-photo-folder': Cli('onnx_infer', ('{cls_onnx}', '{ckdir}'), error=r'photo .* is a folder'),
    'inf-photo-empty': Cli('onnx_infer', ('{cls_onnx}', '{empty_jpg}'), error=r'photo .* is empty'),
    'inf-photo-truncated-jpeg': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{truncated_jpg}'),
        error=r'cannot be decoded in full .*truncated or corrupt',
    ),
    'inf-photo-truncated-png': Cli(
        'onnx_infer', ('{cls_onnx}', '{truncated_png}'), error=r'cannot be decoded in full'
    ),
    'inf-photo-not-an-image': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{text_jpg}'),
        error=r'is not an image that OpenCV or Pillow can read',
    ),
    'inf-photo-is-the-model': Cli(
        'onnx_infer', ('{cls_onnx}', '{cls_onnx}'), error=r'is not an image'
    ),
    'inf-photo-broken-link': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{out}/dangling.png'),
        error=r'does not exist \(a symbolic link to nothing\)',
    ),
    # bad case 4: the picture written over the photo
    'inf-out-is-the-photo': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{out}/photo.png', '--out', '{out}/photo.png'),
        error=r'would overwrite the photo',
    ),
    'inf-out-links-to-the-photo': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_png}', '--out', '{out}/link.png'),
        error=r'would overwrite the photo',
    ),
    'inf-out-is-the-model': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{cls_onnx}'),
        error=r'would overwrite the ONNX model',
    ),
    'inf-out-unknown-extension': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/vis.xyz'),
        error=r"unknown format '.xyz'; use .png or .jpg",
    ),
    'inf-out-no-extension': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/vis'),
        error=r'no extension; use .png',
    ),
    'inf-out-folder': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/adir'),
        error=r'picture .* is a folder',
    ),
    'inf-out-under-a-file': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/afile/v.png'),
        error=r'is a file, not a folder',
    ),
    'inf-score-thr-above-1': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--score-thr', '2'),
        error=r'--score-thr: must be between 0 and 1, got 2',
    ),
    'inf-score-thr-nan': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--score-thr', 'nan'),
        error=r'--score-thr: must be between 0 and 1',
    ),
    # bad case 6: the picture at the photo's size, the photo's own frame
    'inf-works-picture-at-photo-size': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{big_jpg}', '--out', '{out}/vis.png'),
        ok=r'classification on .*big.jpg \(300x200, network input 64x64.*\n'
        r'  (disk|square|triangle|star): \d\.\d{3}\n',
        writes=('vis.png',),
        check=picture_size,
    ),
    'inf-works-grey': Cli('onnx_infer', ('{cls_onnx}', '{gray_png}'), ok=r'\(33x21'),
    'inf-works-rgba': Cli('onnx_infer', ('{cls_onnx}', '{rgba_png}'), ok=r'\(25x40'),
    'inf-1x1-photo-says-it-is-upscaled': Cli(
        'onnx_infer', ('{cls_onnx}', '{one_png}'), ok=r'note: the photo was upscaled 73x'
    ),
    'inf-thin-photo-says-it-is-stretched': Cli(
        'onnx_infer',
        ('{cls_onnx}', '{thin_png}'),
        ok=r'\(20x500.*\n.*note: .*centre crop keeps '
        r'64x64 of the resized 73x1825 photo \(3 %\)',
    ),
    'inf-old-graph-without-pipeline': Cli(
        'onnx_infer',
        ('{nopreprocess_onnx}', '{photo_jpg}'),
        ok=r'note: .*resized to the graph input',
    ),
    # tools/convert_weights.py -----------------------------------------------------
    # bad case 5: a training checkpoint converted onto itself
    'conv-out-is-the-input': Cli(
        'convert_weights',
        ('{cls_pth}', '{cls_pth}'),
        error=r'would overwrite the checkpoint to convert',
    ),
    'conv-missing-input': Cli(
        'convert_weights', ('{dir}/nope.pth', '{out}/c.pth'), error=r'does not exist'
    ),
    'conv-input-folder': Cli('convert_weights', ('{ckdir}', '{out}/c.pth'), error=r'is a folder'),
    'conv-foreign-weights': Cli(
        'convert_weights', ('{foreign_pth}', '{out}/c.pth'), error=r'Not a MobileOne checkpoint'
    ),
    'conv-payload': Cli(
        'convert_weights', ('{payload_pth}', '{out}/c.pth'), error=r'Refusing to load'
    ),
    'conv-partial-weights': Cli(
        'convert_weights',
        ('{partial_pth}', '{out}/c.pth'),
        error=r'Incomplete MobileOne state dict: '
        r'stage3.5.branch_norm without running_var',
    ),
    'conv-string-value': Cli(
        'convert_weights',
        ('{stringval_pth}', '{out}/c.pth'),
        error=r"entry 'backbone.note' is a str, not a tensor",
    ),
    'conv-wrong-arch': Cli(
        'convert_weights',
        ('{cls_pth}', '{out}/c.pth', '--arch', 's1'),
        error=r'MobileOne-s0 weights but the model is MobileOne-s1',
    ),
    'conv-unknown-arch': Cli(
        'convert_weights',
        ('{cls_pth}', '{out}/c.pth', '--arch', 's9'),
        error=r"--arch: invalid choice: 's9'",
    ),
    'conv-out-folder': Cli('convert_weights', ('{cls_pth}', '{out}/adir'), error=r'is a folder'),
    'conv-out-under-a-file': Cli(
        'convert_weights', ('{cls_pth}', '{out}/afile/c.pth'), error=r'is a file, not a folder'
    ),
    'conv-numpy-values-work': Cli(
        'convert_weights',
        ('{numpy_pth}', '{out}/c.pth'),
        ok=r'mmpretrain format, MobileOne-s0',
        writes=('c.pth',),
        check=converted_numpy,
    ),
    # tools/make_tiny_datasets.py ---------------------------------------------------
    # issue 24, a new user's table: numpy's traceback "expected non-negative integer"
    'tiny-seed-negative': Cli(
        'make_tiny_datasets',
        ('flowers', '--out', '{out}/d', '--seed', '-5'),
        error=r'--seed: must be 0 or more, got -5',
    ),
}


@pytest.mark.parametrize(
    'case',
    [
        pytest.param(case, id=name, marks=[pytest.mark.slow] if case.slow else [])
        for name, case in CLI_CASES.items()
    ],
)
def test_cli(case, files, tiny_classifier, tmp_path, capsys, monkeypatch):
    prepare_output_folder(tmp_path, files)
    (tmp_path / 'dangling.png').symlink_to(tmp_path / 'gone.png')
    monkeypatch.chdir(tmp_path)  # no data folder here: checks use random inputs
    argv = [a.format(out=tmp_path, **files) for a in case.args]
    inputs = snapshot(files['dir'], tiny_classifier['dir'])
    outputs = snapshot(tmp_path)
    code, message, out, err = run_main(case.tool, argv, capsys, monkeypatch)
    assert snapshot(files['dir'], tiny_classifier['dir']) == inputs, 'an input changed'
    assert not (Path(files['dir']) / 'pwned').exists()
    if case.error:
        # a mistake: exit code 2 and one line, from argparse (after its usage) or from
        # the tools' error boundary (mobileone_mm.errors.run_tool: that line alone)
        assert code == 2 and '\n' not in message and 'Traceback' not in err, (code, err)
        if message.startswith(f'{case.tool}.py: error: '):
            assert err.startswith('usage: '), err
        else:
            assert message.startswith(f'{case.tool}: '), err  # the line, and no other:
            assert [line for line in err.splitlines() if line.startswith(case.tool)] == [message]
        assert re.search(case.error, message), message
        assert snapshot(tmp_path) == outputs, 'something was written'
    else:
        assert code == 0, message
        assert re.search(case.ok, out), out
        written = sorted(p for p in set(snapshot(tmp_path)) - set(outputs) if Path(p).is_file())
        assert written == sorted(str(tmp_path / w) for w in case.writes)
        if case.check:
            case.check(tmp_path, files)
    assert not [p for p in tmp_path.rglob('*') if TEMP_MARK in p.name]


# ---------------------------------------------------------------------- Python API
@dataclass
class Api:
    call: Callable  # call(files, tmp_path)
    error: Optional[type] = None  # exception type, with
    match: str = ''  # a pattern of its message; or, for a success,
    ok: Optional[Callable] = None  # a check ok(returned value, tmp_path)


ARCH = dict(
    num_blocks=[1, 1, 1, 1],
    width_factor=[0.25] * 4,
    num_conv_branches=[1] * 4,
    num_se_blocks=[0] * 4,
)


def tiny(**changes):
    return MobileOne(dict(ARCH, **changes)).eval()


@functools.lru_cache
def _state(path):
    return load_checkpoint_file(path)['state_dict']


def state_of(files):
    return dict(_state(files['cls_pth']))


def without(files, fragment):
    return {k: v for k, v in state_of(files).items() if fragment not in k}


def traced_channel_error(files, tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tiny()

        def forward(self, x):
            return self.backbone(x[:, :1])

    torch.jit.trace(Wrapper(), torch.zeros(1, 3, 32, 32))


def nan_at_new_shape(files, tmp_path):
    fast = optimize_for_inference(tiny(), torch.randn(1, 3, 32, 32), backend='eager')
    fast(torch.full((1, 3, 48, 32), float('nan')))


def pretrained_into_one_channel(files, tmp_path):
    MobileOne(
        's0', in_channels=1, init_cfg=dict(type='Pretrained', checkpoint=files['cls_pth'])
    ).init_weights()


def mmengine_load(path):
    """What `mim test CONFIG --checkpoint PATH` does with the checkpoint (mmengine's
    loader, through the safe-loading fix every shipped config imports)."""
    from mmengine.runner import CheckpointLoader

    import mobileone_mm.fixes.safe_loading  # noqa: F401

    return CheckpointLoader.load_checkpoint(path, map_location='cpu')


def write_deploy_files_failing_late(files, tmp_path):
    """The config text is not text: the second file fails after the checkpoint is written
    to its temp file; neither may appear."""
    write_deploy_files({'w': torch.ones(1)}, {}, None, tmp_path / 'd.pth')


API_CASES = {
    'arch-width-nan': Api(
        lambda f, t: tiny(width_factor=[float('nan')] * 4),
        ValueError,
        r"arch\['width_factor'\] must be finite numbers",
    ),
    'arch-width-inf': Api(
        lambda f, t: tiny(width_factor=[1, 1, float('inf'), 1]),
        ValueError,
        r'must be finite numbers',
    ),
    'arch-width-negative': Api(
        lambda f, t: tiny(width_factor=[1, 1, -1, 1]), ValueError, r'gives stage 3 no channels'
    ),
    'arch-numpy-ints': Api(
        lambda f, t: resolve_arch(
            dict(ARCH, num_blocks=[np.int64(1)] * 4, width_factor=[np.float32(0.25)] * 4)
        ),
        ok=lambda arch, t: arch['num_blocks'] == [1] * 4 and type(arch['num_blocks'][0]) is int,
    ),
    'arch-numpy-array': Api(
        lambda f, t: tiny(num_blocks=np.array([1, 2, 1, 1])),
        ok=lambda m, t: m.arch['num_blocks'] == [1, 2, 1, 1],
    ),
    'arch-bools': Api(
        lambda f, t: tiny(num_se_blocks=[False] * 4), ValueError, r'must be 4 numbers'
    ),
    'arch-text': Api(lambda f, t: tiny(num_blocks='1111'), ValueError, r'must be 4 numbers'),
    'arch-bytes': Api(
        lambda f, t: tiny(num_blocks=b'\x01\x01\x01\x01'), ValueError, r'must be 4 numbers'
    ),
    'input-float64': Api(
        lambda f, t: tiny()(torch.zeros(1, 3, 32, 32, dtype=torch.float64)),
        TypeError,
        r'weights are torch.float32 but the input is torch.float64'
        r'.*x.to\(torch.float32\)',
    ),
    'input-uint8': Api(
        lambda f, t: tiny()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
        TypeError,
        r"got torch.uint8: pass it through the model's data "
        r'preprocessor',
    ),
    'input-int64': Api(
        lambda f, t: tiny()(torch.zeros(1, 3, 32, 32, dtype=torch.long)),
        TypeError,
        r'normalised floating-point image',
    ),
    'input-float64-model-float64': Api(
        lambda f, t: tiny().double()(torch.zeros(1, 3, 32, 32, dtype=torch.float64)),
        ok=lambda outs, t: outs[0].dtype == torch.float64,
    ),
    'input-shape-while-tracing': Api(
        traced_channel_error, ValueError, r'got \(1, 1, 32, 32\) \(or build'
    ),
    'convert-partial': Api(
        lambda f, t: convert_state_dict(without(f, 'stage2.0.branch_scale.norm.running_mean')),
        CheckpointError,
        r'stage2.0.branch_scale.norm without running_mean',
    ),
    'convert-missing-stage': Api(
        lambda f, t: convert_state_dict(without(f, 'stage4.')), CheckpointError, r'no stage4'
    ),
    'convert-missing-block': Api(
        lambda f, t: convert_state_dict(without(f, 'stage2.3.')),
        CheckpointError,
        r'stage2 without block\(s\) \[3\]',
    ),
    'convert-conv-without-bn': Api(
        lambda f, t: convert_state_dict(without(f, 'stage1.0.branch_conv_list.1.norm.')),
        CheckpointError,
        r'branch_conv_list.1.conv without its BN',
    ),
    'convert-numpy-values': Api(
        lambda f, t: convert_state_dict({k: v.numpy() for k, v in state_of(f).items()}),
        ok=lambda r, t: all(isinstance(v, torch.Tensor) for v in r[0].values()),
    ),
    'convert-whole-checkpoint': Api(
        lambda f, t: convert_state_dict(load_checkpoint_file(f['cls_pth'])),
        CheckpointError,
        r"whole checkpoint: pass its 'state_dict' entry",
    ),
    'convert-list-value': Api(
        lambda f, t: convert_state_dict({**state_of(f), 'head.fc.weight': [1, 2]}),
        CheckpointError,
        r"'head.fc.weight' is a list, not a tensor",
    ),
    'pretrained-into-one-channel': Api(
        pretrained_into_one_channel,
        CheckpointError,
        r'stem for 3-channel images but the backbone has '
        r'in_channels=1.*adapt_input_conv',
    ),
    'checkpoint-folder': Api(
        lambda f, t: load_checkpoint_file(f['ckdir']), CheckpointError, r'is a folder, not a file'
    ),
    'optimize-nan-example': Api(
        lambda f, t: optimize_for_inference(tiny(), torch.full((1, 3, 32, 32), float('nan'))),
        ValueError,
        r'The example \(1, 3, 32, 32\) holds NaN or inf',
    ),
    'optimize-float64-example': Api(
        lambda f, t: optimize_for_inference(tiny(), torch.zeros(1, 3, 32, 32, dtype=torch.float64)),
        TypeError,
        r'the example is torch.float64 on cpu: pass x.float',
    ),
    'optimize-int-example': Api(
        lambda f, t: optimize_for_inference(tiny(), torch.zeros(1, 3, 32, 32, dtype=torch.long)),
        TypeError,
        r'runs float32 CPU tensors',
    ),
    'optimize-nan-at-new-shape': Api(
        nan_at_new_shape, ValueError, r'first input of this shape \(1, 3, 48, 32\) holds NaN'
    ),
    'reparameterize-num-images-0': Api(
        lambda f, t: reparameterize_checkpoint(CONFIG, f['cls_pth'], t / 'd.pth', num_images=0),
        DeployError,
        r'num_images must be a whole number of at least 1',
    ),
    'export-shape-zero': Api(
        lambda f, t: export_onnx(tiny(), t / 'x.onnx', (0, 0)),
        ValueError,
        r'two whole numbers \(height, width\) of at least 1',
    ),
    'export-shape-negative': Api(
        lambda f, t: export_onnx(tiny(), t / 'x.onnx', (-1, 64)), ValueError, r'got \(-1, 64\)'
    ),
    'export-shape-float': Api(
        lambda f, t: export_onnx(tiny(), t / 'x.onnx', (64.0, 64)), ValueError, r'two whole numbers'
    ),
    'export-not-a-task-model': Api(
        lambda f, t: export_onnx(tiny(), t / 'x.onnx', (32, 32)),
        ExportError,
        r'Cannot export a MobileOne: expected an '
        r'mmdet detector',
    ),
    'mmengine-loader-folder': Api(
        lambda f, t: mmengine_load(f['ckdir']), CheckpointError, r'is a folder, not a file'
    ),
    'mmengine-loader-payload': Api(
        lambda f, t: mmengine_load(f['payload_pth']), CheckpointError, r'Refusing to load'
    ),
    'config-syntax-error': Api(
        lambda f, t: load_config(f['syntax_py']),
        DeployError,
        r"'.*syntax.py' has a syntax error at line 2: '\(' was never "
        r'closed',
    ),
    'plan-two-outputs-one-path': Api(
        lambda f, t: plan_outputs(
            outputs={'picture': t / 'a.png', 'mask': t / 'x' / '..' / 'a.png'}
        ),
        PathError,
        r'picture and the mask would both be written to',
    ),
    'plan-output-links-to-input': Api(
        lambda f, t: plan_outputs(
            inputs={'photo': f['photo_png']}, outputs={'picture': t / 'link.png'}
        ),
        PathError,
        r'would overwrite the photo',
    ),
    'plan-output-is-a-device': Api(
        lambda f, t: plan_outputs(outputs={'picture': '/dev/null'}),
        PathError,
        r'not a regular file',
    ),
    'plan-empty-output': Api(
        lambda f, t: plan_outputs(outputs={'picture': ''}), PathError, r'picture path is empty'
    ),
    'plan-urls-are-not-files': Api(
        lambda f, t: plan_outputs(
            inputs={'checkpoint': 'https://example.com/x.pth'}, outputs={'out': t / 'x.pth'}
        ),
        ok=lambda planned, t: planned == {'out': str(t / 'x.pth')},
    ),
    'input-broken-link': Api(
        lambda f, t: check_input_file(t / 'dangling.png', 'photo'),
        PathError,
        r'symbolic link to nothing',
    ),
    'photo-too-elongated': Api(
        lambda f, t: preprocess(
            np.zeros((1, 3000, 3), np.uint8), [dict(op='resize', size=[512, 128], keep_ratio=True)]
        ),
        PredictError,
        r'too elongated .* would become 512x0 pixels',
    ),
    'photo-stretched-is-said': Api(
        lambda f, t: (
            preprocess(
                np.zeros((500, 20, 3), np.uint8),
                [dict(op='resize', size=[320, 320], keep_ratio=False)],
            )[1].notes
        ),
        ok=lambda notes, t: (
            notes == ['the photo was stretched 25.0x more along one axis than the other']
        ),
    ),
    'photo-upscaled-is-said': Api(
        lambda f, t: (
            preprocess(
                np.zeros((2, 2, 3), np.uint8), [dict(op='resize', size=[512, 128], keep_ratio=True)]
            )[1].notes
        ),
        ok=lambda notes, t: (
            notes
            == ['the photo was upscaled 64x: it is much smaller than the images the model saw']
        ),
    ),
    'photo-truncated': Api(
        lambda f, t: read_photo(f['truncated_jpg']), PredictError, r'truncated or corrupt'
    ),
    'deploy-files-both-or-neither': Api(write_deploy_files_failing_late, TypeError, r''),
}


@pytest.mark.parametrize('case', list(API_CASES.values()), ids=list(API_CASES))
def test_api(case, files, tmp_path):
    prepare_output_folder(tmp_path, files)
    (tmp_path / 'dangling.png').symlink_to(tmp_path / 'gone.png')
    before = snapshot(tmp_path)
    if case.error:
        with pytest.raises(case.error, match=case.match) as raised:
            case.call(files, tmp_path)
        assert '\n' not in str(raised.value)
        assert snapshot(tmp_path) == before, 'something was written'
    else:
        assert case.ok(case.call(files, tmp_path), tmp_path)
    assert not [p for p in tmp_path.rglob('*') if TEMP_MARK in p.name]


# ------------------------------------------------------------- beyond single rows
def test_atomic_files_keep_the_old_files_when_one_fails(tmp_path):
    """Both or neither, also over existing files: a failure while writing the second
    file leaves both old files as they were."""
    (tmp_path / 'a.pth').write_text('old a')
    (tmp_path / 'a.py').write_text('old config')
    with pytest.raises(RuntimeError):
        with atomic_files([(tmp_path / 'a.pth', 'w'), (tmp_path / 'a.py', 'w')]) as (a, b):
            a.write('new a')
            raise RuntimeError('disk full')
    assert (tmp_path / 'a.pth').read_text() == 'old a'
    assert (tmp_path / 'a.py').read_text() == 'old config'
    with atomic_files([(tmp_path / 'a.pth', 'w'), (tmp_path / 'a.py', 'w')]) as (a, b):
        a.write('new a')
        b.write('new config')
    assert sorted(os.listdir(tmp_path)) == ['a.pth', 'a.py']
    assert (tmp_path / 'a.py').read_text() == 'new config'


def test_class_names_come_from_the_checkpoint_then_the_config(files):
    """Bad case 7: the names that reach the ONNX metadata, by source."""
    cfg = load_config(CONFIG)
    model, _ = build_model(cfg)
    meta = dict(meta=dict(dataset_meta=dict(classes=['a', 'b', 'c', 'd'])))
    assert class_names(cfg, meta, model) == (['a', 'b', 'c', 'd'], "the checkpoint's meta")
    assert class_names(cfg, {}, model) == (CLASSES, "the config's test dataset metainfo")
    names, why = class_names(cfg, dict(meta=dict(dataset_meta=dict(classes=['x']))), model)
    assert names == [] and '1 class names but the model predicts 4' in why
    cfg.test_dataloader.dataset.pop('metainfo')
    assert class_names(cfg, {}, model) == ([], 'no class names in the checkpoint or the config')


@pytest.mark.slow
def test_export_verify_failure_writes_nothing(files, tmp_path, capsys, monkeypatch):
    """export_onnx --verify: the graph is written only when onnxruntime and PyTorch
    agree (before, a failed check left the file). Here the graph comes from a model
    with one weight changed."""
    import mobileone_mm.runtimes.export as library

    real = library.build_onnx

    def wrong_graph(model, *args, **kwargs):
        altered = copy.deepcopy(model)
        with torch.no_grad():
            altered.head.fc.weight.mul_(1.5)
        return real(altered, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(library, 'build_onnx', wrong_graph)
    code, message, _, _ = run_main(
        'export_onnx',
        [CONFIG, files['cls_pth'], str(tmp_path / 'm.onnx'), '--verify', '--num-images', '1'],
        capsys,
        monkeypatch,
    )
    assert code == 1 and message.endswith('Nothing written.'), message
    assert os.listdir(tmp_path) == []


def test_reparameterize_writes_both_files_or_neither(files, tmp_path, monkeypatch):
    """The deploy config fails to write after the checkpoint did (before, the checkpoint
    stayed without its config)."""
    import mobileone_mm.fusion.reparameterize as deploy

    real = deploy.atomic_files

    def failing_config(targets):
        manager = real(targets)

        class Failing:
            def __enter__(self):
                ckpt_file, cfg_file = manager.__enter__()
                cfg_file.write = lambda text: (_ for _ in ()).throw(OSError('disk full'))
                return ckpt_file, cfg_file

            def __exit__(self, *exc):
                return manager.__exit__(*exc)

        return Failing()

    monkeypatch.setattr(deploy, 'atomic_files', failing_config)
    with pytest.raises(OSError, match='disk full'):
        reparameterize_checkpoint(CONFIG, files['cls_pth'], tmp_path / 'd.pth', verify=False)
    assert os.listdir(tmp_path) == []
