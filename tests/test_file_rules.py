"""The file rules of every tool that writes, one table per rule, one row per case, each run
as a user runs the tool (its main() in this process, with sys.argv):

1. A tool never replaces or deletes a file it did not write (outputs and the files
   written beside them alike): it refuses before any work, naming the file and the fix;
   a file it wrote earlier (our mark inside: checkpoint meta, a config's first line, ONNX
   metadata, a picture's text chunk, a data set's manifest) it replaces.
2. An output's extension names its format: a checkpoint is a PyTorch .pth or a real
   .safetensors file; any other extension is refused with the list.
3. A refused or failed run leaves nothing on disk and changes no file.

Every row checks rule 3 too: what its folder held is unchanged (same inode, size and
time) unless the row is meant to write, and a success writes exactly ``writes``.
"""

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Tuple

import pytest
import torch
from helpers import CLASSES, REPO, run_main, snapshot
from PIL import Image

from mobileone_mm.checkpoints.io import TEMP_MARK, load_checkpoint_file
from mobileone_mm.loading.checkpoint import load_model
from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.runtimes import RUNTIMES
from mobileone_mm.runtimes.common import artefact_files

DEPLOY_CFG = str(REPO / 'configs/mmdeploy/classification_onnxruntime_static.py')


# ------------------------------------------------ the files of a user, beside the outputs
def users_files(out: Path, classifier):
    """What a user keeps where outputs may be aimed (none of it written by our tools)."""
    config = classifier['config']
    (out / 'cf').mkdir()
    (out / 'cf' / 'parent.py').write_text(f"_base_ = '{config}'\n")
    (out / 'cf' / 'child.py').write_text("_base_ = './parent.py'\n")
    (out / 'proj').mkdir()
    (out / 'proj' / 'train.py').write_text(f"_base_ = '{config}'\n# my experiment\n")
    (out / 'work_dirs' / 'exp').mkdir(parents=True)  # mmengine dumps the config there
    (out / 'work_dirs' / 'exp' / 'exp.py').write_text(load_config(config).pretty_text)
    torch.save(dict(state_dict={'w': torch.ones(2)}, meta=dict(note='mine')), out / 'mine.pth')
    from safetensors.torch import save_file

    save_file({'w': torch.ones(2)}, str(out / 'mine.safetensors'))
    users_graph(out / 'mine.onnx', classifier)
    shutil.copy(classifier['photo_jpg'], out / 'holiday.jpg')
    Image.open(classifier['photo_jpg']).save(out / 'holiday.png')
    (out / 'pictures').mkdir()
    Image.open(classifier['photo_jpg']).save(out / 'pictures' / 'photo.png')  # the photo's
    (out / 'notes.txt').write_text('a file where a folder goes\n')
    (out / 'data').mkdir()
    (out / 'data' / 'train.txt').write_text('my own list\n')


def users_graph(path: Path, classifier):
    """A graph of the user's: our tiny classifier's, its metadata without our mark."""
    import onnx

    graph = onnx.load(classifier['cls_onnx'])
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key != 'written_by']
    del graph.metadata_props[:]
    for key, value in kept:
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


@dataclass
class Row:
    tool: str
    args: Tuple[str, ...]
    error: Optional[str] = None  # pattern of the one-line refusal, or
    ok: Optional[str] = None  # pattern of the output of a success
    writes: Tuple[str, ...] = ()  # what a success writes or replaces in {out} (a folder: its files)
    deletes: Tuple[str, ...] = ()  # files a success deletes (its own earlier ones)
    data: bool = False  # the config's tiny data set in {out}/data
    first: Optional[Tuple[str, Tuple[str, ...]]] = None  # (tool, args) run before the row
    prepare: Optional[Callable] = field(default=None, repr=False)  # prepare(out, classifier)
    check: Optional[Callable] = field(default=None, repr=False)  # check(out, classifier)
    slow: bool = False
    runtime: Optional[str] = None  # the runtime the row exports to (installed or skip)


def files_at(path: Path) -> list:
    """``path``, or every file in it when it is a folder."""
    return [p for p in path.rglob('*') if p.is_file()] if path.is_dir() else [path]


def run_row(row, classifier, out, capsys, monkeypatch):
    if row.runtime:
        from mobileone_mm.errors import UserError
        from mobileone_mm.runtimes import get_runtime

        try:
            get_runtime(row.runtime)
        except UserError as error:  # not installed: names the extra to install
            pytest.skip(str(error))
    users_files(out, classifier)
    monkeypatch.chdir(out)  # no data folder here: checks use random inputs
    fill = dict(out=out, **classifier)
    if row.data:
        from mobileone_mm.devkit.tiny_data import make_tiny_flowers

        make_tiny_flowers(out / 'data' / 'tiny_flowers', num_train=2, num_val=2)
    if row.first:
        tool, args = row.first
        code, message, _, _ = run_main(tool, [a.format(**fill) for a in args], capsys, monkeypatch)
        assert code == 0, message
    if row.prepare:
        row.prepare(out, classifier)
    before, inputs = snapshot(out), snapshot(classifier['dir'])
    code, message, stdout, _ = run_main(
        row.tool, [a.format(**fill) for a in row.args], capsys, monkeypatch
    )
    assert snapshot(classifier['dir']) == inputs, 'an input changed'
    after = snapshot(out)
    if row.error:
        assert code != 0 and '\n' not in message, (code, message)
        assert re.search(row.error, message), message
        assert after == before, 'a file was written, replaced or deleted'
    else:
        assert code == 0, message
        assert re.search(row.ok, stdout), stdout
        changed = sorted(p for p in after if Path(p).is_file() and after[p] != before.get(p))
        assert changed == sorted(str(p) for w in row.writes for p in files_at(out / w))
        assert sorted(p for p in before if p not in after) == sorted(
            str(out / d) for d in row.deletes
        )
        if row.check:
            row.check(out, classifier)
    assert not [p for p in out.rglob('*') if TEMP_MARK in p.name]


# ------------------------------------------------- rule 1: never replace a file of the user
NOT_OURS = r'already exists and was not written by this tool .*not replaced. Choose another name'
NOT_A_FOLDER = r"'[^']*notes.txt' is a file, not a folder: give a folder"
REPARAM = ('{config}', '{cls_pth}')


def user_file_in_our_data_set(out, classifier):
    (out / 'set' / 'jpg' / 'my_photo.jpg').write_bytes(b'my photo')


def our_data_set_has_these_files(names):
    def check(out, classifier):
        listed = json.loads((out / 'set' / 'tiny_flowers_files.json').read_text())['files']
        assert sorted(listed) == sorted(names)
        assert sorted(
            p.relative_to(out / 'set').as_posix() for p in (out / 'set').rglob('*') if p.is_file()
        ) == sorted(names + ['tiny_flowers_files.json'])

    return check


def manifest_lists_a_file_outside_the_set(out, classifier):
    listed = out / 'set' / 'tiny_flowers_files.json'
    entries = json.loads(listed.read_text())
    listed.write_text(json.dumps(dict(entries, files=entries['files'] + ['../mine.pth'])))


TINY = ('flowers', '--out', '{out}/set', '--num-train', '2', '--num-val', '1')
TINY_FILES = [
    'jpg/train_00000.jpg',
    'jpg/train_00001.jpg',
    'jpg/val_00000.jpg',
    'train.txt',
    'val.txt',
]


def export_to(name: str, runtime: str) -> Tuple[str, ...]:
    """tools/export.py's arguments: the tiny classifier at 64x64 to {out}/NAME."""
    return (*REPARAM, '{out}/' + name, '--runtime', runtime, '--shape', '64', '64')


# What a user may keep where a file of a runtime's artefact goes, by what artefact_files
# calls the file: a file of the user's own bytes, or where one can come close to ours,
# that one. Each writes it at ``path``.
def users_file(path: Path, classifier):
    path.write_bytes(b'mine\n')


def users_json(path: Path, classifier):
    """JSON that names a writer, not us."""
    path.write_bytes(b'{"written_by": "me"}')


def users_ir_of_our_graph(path: Path, classifier):
    """An IR the user converted from our ONNX graph: OpenVINO keeps the graph's metadata
    (our mark among it) in rt_info 'framework', not in our slot."""
    import openvino as ov

    ov.save_model(ov.convert_model(classifier['cls_onnx']), str(path))


def users_program(path: Path, classifier):
    """An ExecuTorch program of the user's (a ReLU, no metadata of ours)."""
    from executorch.exir import to_edge

    program = to_edge(torch.export.export(torch.nn.ReLU(), (torch.ones(2),))).to_executorch()
    path.write_bytes(program.buffer)


def users_mlpackage(path: Path, classifier):
    """A Core ML package of the user's: ours (the row's first run wrote it at ``path``)
    without our mark."""
    import coremltools

    spec = coremltools.utils.load_spec(str(path))
    del spec.description.metadata.userDefined['written_by']
    theirs = path.with_name('theirs.mlpackage')
    coremltools.utils.save_spec(
        spec, str(theirs), weights_dir=str(path / 'Data' / 'com.apple.CoreML' / 'weights')
    )
    shutil.rmtree(path)
    theirs.rename(path)


USERS_FILES = {  # the others: users_file
    'onnxruntime model': users_graph,
    'openvino model': users_ir_of_our_graph,
    'ncnn metadata sidecar': users_json,
    'executorch model': users_program,
    'coreml model': users_mlpackage,
}
MADE_FROM_OURS = ('coreml model',)  # the row exports first, the user's file is made of it
SLOW_EXPORTS = ('executorch',)  # exported twice: a slow row


def runtime_rows() -> dict:
    """The rows of every runtime in the table (runtimes.RUNTIMES), over every file of its
    artefact (artefact_files: the model and the files beside it, planned with it and
    judged by its mark): a file of the user's there is refused, named; the export run
    again onto its own artefact replaces every one of those files and writes no other
    (what is planned is what is written)."""
    rows = {}
    for runtime, entry in RUNTIMES.items():
        name = 'm' + entry.suffix
        export = export_to(name, runtime)
        files = artefact_files(name, runtime)
        for what, path in files.items():
            make = USERS_FILES.get(what, users_file)
            row_id = re.sub('[ _]', '-', f'export-{what}-over-the-{make.__name__}')
            rows[row_id] = Row(
                'export',
                export,
                first=('export', export) if what in MADE_FROM_OURS else None,
                prepare=lambda out, classifier, path=path, make=make: make(out / path, classifier),
                error=f"{what} '.*{re.escape(path)}' " + NOT_OURS,
                runtime=runtime,
            )
        rows[f'export-{runtime}-again-onto-its-own-output'] = Row(
            'export',
            export,
            first=('export', export),
            ok=r'written: .*' + re.escape(name),
            writes=tuple(files.values()),
            slow=runtime in SLOW_EXPORTS,
            runtime=runtime,
        )
    return rows


NEVER_REPLACE = {
    # bad case 1: the deploy config (.py beside the .pth) over a config of the user's
    'rep-deploy-config-over-the-inherited-base': Row(
        'reparameterize',
        ('{out}/cf/child.py', '{cls_pth}', '{out}/cf/parent.pth'),
        error=r"deploy config '.*cf/parent.py' " + NOT_OURS,
    ),
    'rep-deploy-config-over-the-users-config': Row(
        'reparameterize',
        (*REPARAM, '{out}/proj/train.pth'),
        error=r"deploy config '.*proj/train.py' " + NOT_OURS,
    ),
    'rep-deploy-config-over-mmengines-dump': Row(
        'reparameterize',
        (*REPARAM, '{out}/work_dirs/exp/exp.pth'),
        error=r"deploy config '.*work_dirs/exp/exp.py' " + NOT_OURS,
    ),
    'rep-checkpoint-over-the-users-checkpoint': Row(
        'reparameterize',
        (*REPARAM, '{out}/mine.pth'),
        error=r"deploy checkpoint '.*mine.pth' " + NOT_OURS,
    ),
    'rep-checkpoint-over-the-users-safetensors': Row(
        'reparameterize',
        (*REPARAM, '{out}/mine.safetensors'),
        error=r"deploy checkpoint '.*mine.safetensors' " + NOT_OURS,
    ),
    'conv-over-the-users-checkpoint': Row(
        'convert_weights',
        ('{cls_pth}', '{out}/mine.pth'),
        error=r"converted checkpoint '.*mine.pth' " + NOT_OURS,
    ),
    'exp-over-the-users-graph': Row(
        'export_onnx', (*REPARAM, '{out}/mine.onnx'), error=r"ONNX model '.*mine.onnx' " + NOT_OURS
    ),
    'quant-over-the-users-graph': Row(
        'quantize', (*REPARAM, '{out}/mine.onnx'), error=r"ONNX model '.*mine.onnx' " + NOT_OURS
    ),
    'mmdeploy-over-the-users-graph': Row(
        'mmdeploy_export',
        (DEPLOY_CFG, *REPARAM, '{out}/mine.onnx'),
        error=r"ONNX model '.*mine.onnx' " + NOT_OURS,
    ),
    'mmdeploy-work-dir-is-a-file': Row(
        'mmdeploy_export',
        (DEPLOY_CFG, *REPARAM, '{out}/m.onnx', '--test', '--work-dir', '{out}/notes.txt'),
        error=r'work dir \(--work-dir\) ' + NOT_A_FOLDER,
    ),
    'inf-picture-over-the-users-png': Row(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/holiday.png'),
        error=r"picture '.*holiday.png' " + NOT_OURS,
    ),
    'inf-picture-over-the-users-jpg': Row(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/holiday.jpg'),
        error=r"picture '.*holiday.jpg' " + NOT_OURS,
    ),
    'inf-picture-over-a-user-file-of-a-format-without-mark': Row(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/notes.txt'),
        error=r"'.*notes.txt' .*files named .txt carry no mark of our tools",
    ),
    'demo-picture-over-the-users-picture': Row(
        'image_demo',
        (*REPARAM, '{photo_jpg}', '--out-dir', '{out}/pictures'),
        error=r"picture of .*photo.jpg '.*pictures/photo.png' " + NOT_OURS,
    ),
    # --out where a folder goes (argparse takes --out for --out-dir)
    'demo-out-dir-is-a-file': Row(
        'image_demo',
        (*REPARAM, '{photo_jpg}', '--out', '{out}/notes.txt'),
        error=r'picture folder \(--out-dir\) ' + NOT_A_FOLDER,
    ),
    'tiny-out-is-a-file': Row(
        'make_tiny_datasets',
        ('flowers', '--out', '{out}/notes.txt'),
        error=r'output folder ' + NOT_A_FOLDER,
    ),
    # bad case 5: --overwrite deletes only what the tool wrote (its manifest lists it)
    'tiny-overwrite-a-users-list': Row(
        'make_tiny_datasets',
        ('flowers', '--out', '{out}/data', '--overwrite'),
        error=r"'.*data/train.txt' was not written by this tool \(it is not in "
        r"'.*tiny_flowers_files.json'.*--overwrite deletes only those files",
    ),
    'tiny-overwrite-a-user-file-in-our-set': Row(
        'make_tiny_datasets',
        (*TINY, '--overwrite'),
        first=('make_tiny_datasets', TINY),
        prepare=user_file_in_our_data_set,
        error=r"'.*set/jpg/my_photo.jpg' was not written by this tool",
    ),
    'tiny-manifest-of-the-user': Row(
        'make_tiny_datasets',
        (*TINY, '--overwrite'),
        prepare=lambda out, classifier: (
            (out / 'set').mkdir()
            or (out / 'set' / 'tiny_flowers_files.json').write_text('{"files": ["../mine.pth"]}')
        ),
        error=r"tiny_flowers_files.json' is where this tool lists the files it wrote, but it "
        r'was not written by this tool',
    ),
    'tiny-without-overwrite': Row(
        'make_tiny_datasets',
        TINY,
        first=('make_tiny_datasets', TINY),
        error=r'already exists: .*--overwrite',
    ),
    # ... and a file the tool wrote it replaces: running again onto its own output works
    'tiny-overwrite-its-own-set': Row(
        'make_tiny_datasets',
        ('flowers', '--out', '{out}/set', '--num-train', '1', '--num-val', '1', '--overwrite'),
        first=('make_tiny_datasets', TINY),
        ok=r'written to',
        writes=(
            'set/jpg/train_00000.jpg',
            'set/jpg/val_00000.jpg',
            'set/train.txt',
            'set/val.txt',
            'set/tiny_flowers_files.json',
        ),
        deletes=('set/jpg/train_00001.jpg',),
        check=our_data_set_has_these_files(
            ['jpg/train_00000.jpg', 'jpg/val_00000.jpg', 'train.txt', 'val.txt']
        ),
    ),
    'tiny-overwrite-deletes-nothing-outside-the-set': Row(
        'make_tiny_datasets',
        (*TINY, '--overwrite'),
        first=('make_tiny_datasets', TINY),
        prepare=manifest_lists_a_file_outside_the_set,
        ok=r'written to',
        writes=tuple(f'set/{name}' for name in TINY_FILES + ['tiny_flowers_files.json']),
    ),
    'conv-again-onto-its-own-output': Row(
        'convert_weights',
        ('{cls_pth}', '{out}/c.pth'),
        first=('convert_weights', ('{cls_pth}', '{out}/c.pth')),
        ok=r'-> .*c.pth',
        writes=('c.pth',),
    ),
    'inf-again-onto-its-own-png': Row(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/vis.png'),
        first=('onnx_infer', ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/vis.png')),
        ok=r'picture: .*vis.png',
        writes=('vis.png',),
    ),
    'inf-again-onto-its-own-jpg': Row(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/vis.jpg'),
        first=('onnx_infer', ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/vis.jpg')),
        ok=r'picture: .*vis.jpg',
        writes=('vis.jpg',),
    ),
    'rep-again-onto-its-own-output': Row(
        'reparameterize',
        (*REPARAM, '{out}/d.pth', '--no-verify'),
        first=('reparameterize', (*REPARAM, '{out}/d.pth', '--no-verify')),
        ok=r'written: .*d.pth',
        writes=('d.pth', 'd.py'),
    ),
    'exp-again-onto-its-own-output': Row(
        'export_onnx',
        (*REPARAM, '{out}/m.onnx', '--shape', '64', '64'),
        first=('export_onnx', (*REPARAM, '{out}/m.onnx', '--shape', '64', '64')),
        ok=r'written: .*m.onnx',
        writes=('m.onnx',),
    ),
    'mmdeploy-again-onto-its-own-output': Row(
        'mmdeploy_export',
        (DEPLOY_CFG, *REPARAM, '{out}/e.onnx'),
        first=('mmdeploy_export', (DEPLOY_CFG, *REPARAM, '{out}/e.onnx')),
        ok=r'wrote .*e.onnx',
        writes=('e.onnx',),
        slow=True,
    ),
    'demo-again-onto-its-own-pictures': Row(
        'image_demo',
        (*REPARAM, '{photo_jpg}', '--out-dir', '{out}/vis'),
        first=('image_demo', (*REPARAM, '{photo_jpg}', '--out-dir', '{out}/vis')),
        ok=r'pictures: .*vis',
        writes=('vis/photo.png',),
        slow=True,
    ),
    'quant-again-onto-its-own-output': Row(
        'quantize',
        (
            *REPARAM,
            '{out}/q.onnx',
            '--shape',
            '64',
            '64',
            '--calib-images',
            '1',
            '--check-images',
            '1',
        ),
        first=(
            'quantize',
            (
                *REPARAM,
                '{out}/q.onnx',
                '--shape',
                '64',
                '64',
                '--calib-images',
                '1',
                '--check-images',
                '1',
            ),
        ),
        data=True,
        ok=r'written: .*q.onnx',
        writes=('q.onnx',),
        slow=True,
    ),
    # the runtimes' artefacts
    **runtime_rows(),
}


@pytest.mark.parametrize(
    'row',
    [
        pytest.param(row, id=name, marks=[pytest.mark.slow] if row.slow else [])
        for name, row in NEVER_REPLACE.items()
    ],
)
def test_never_replace_a_file_not_written_here(row, tiny_classifier, tmp_path, capsys, monkeypatch):
    run_row(row, tiny_classifier, tmp_path, capsys, monkeypatch)


# ---------------------------------------------------- rule 2: the extension is the format
NO_FORMAT = r"has extension '{}': use .pth or .safetensors"


def is_safetensors(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte length, then the JSON), read by hand:
    not through the code under test."""
    data = path.read_bytes()
    (length,) = struct.unpack('<Q', data[:8])
    return json.loads(data[8 : 8 + length])


def converted_as_safetensors(out, classifier):
    header = is_safetensors(out / 'c.safetensors')
    assert json.loads(header['__metadata__']['meta'])['source_format'] == 'mmpretrain'
    reference = load_checkpoint_file(classifier['cls_pth'])['state_dict']
    loaded = load_checkpoint_file(out / 'c.safetensors')
    assert loaded['meta']['arch'] == 'MobileOne-s0'
    assert loaded['state_dict'].keys() == reference.keys()
    assert all(torch.equal(loaded['state_dict'][k], v) for k, v in reference.items())


def converted_as_pytorch(out, classifier):
    assert torch.load(out / 'c.pth', weights_only=True)['meta']['written_by'] == 'mobileone_mm'


def deploy_form_as_safetensors(out, classifier):
    is_safetensors(out / 'd.safetensors')
    model, _, ckpt = load_model(str(out / 'd.py'), str(out / 'd.safetensors'))  # strict
    assert model.backbone.deploy
    assert ckpt['meta']['dataset_meta']['classes'] == CLASSES
    from mobileone_mm.checkpoints.marks import written_here

    assert written_here(out / 'd.safetensors') and written_here(out / 'd.py')


EXTENSION_IS_FORMAT = {
    # bad case 6
    'rep-checkpoint-named-onnx': Row(
        'reparameterize', (*REPARAM, '{out}/d.onnx'), error=NO_FORMAT.format(r'\.onnx')
    ),
    'rep-checkpoint-named-bin': Row(
        'reparameterize', (*REPARAM, '{out}/d.bin'), error=NO_FORMAT.format(r'\.bin')
    ),
    'conv-checkpoint-named-onnx': Row(
        'convert_weights', ('{cls_pth}', '{out}/c.onnx'), error=NO_FORMAT.format(r'\.onnx')
    ),
    'conv-checkpoint-named-tar': Row(
        'convert_weights', ('{cls_pth}', '{out}/c.pth.tar'), error=NO_FORMAT.format(r'\.tar')
    ),
    'conv-safetensors-is-safetensors': Row(
        'convert_weights',
        ('{cls_pth}', '{out}/c.safetensors'),
        ok=r'-> .*c.safetensors',
        writes=('c.safetensors',),
        check=converted_as_safetensors,
    ),
    'rep-safetensors-is-safetensors': Row(
        'reparameterize',
        (*REPARAM, '{out}/d.safetensors', '--no-verify'),
        ok=r'written: .*d.safetensors',
        writes=('d.safetensors', 'd.py'),
        check=deploy_form_as_safetensors,
    ),
    'conv-pth-is-a-pytorch-checkpoint': Row(
        'convert_weights',
        ('{cls_pth}', '{out}/c.pth'),
        ok=r'-> .*c.pth',
        writes=('c.pth',),
        check=converted_as_pytorch,
    ),
    'exp-graph-named-pth': Row(
        'export_onnx', (*REPARAM, '{out}/m.pth'), error=r"has extension '.pth': use .onnx"
    ),
    'inf-picture-named-onnx': Row(
        'onnx_infer',
        ('{cls_onnx}', '{photo_jpg}', '--out', '{out}/v.onnx'),
        error=r"unknown format '.onnx'; use .png or .jpg",
    ),
}


@pytest.mark.parametrize(
    'row',
    [
        pytest.param(row, id=name, marks=[pytest.mark.slow] if row.slow else [])
        for name, row in EXTENSION_IS_FORMAT.items()
    ],
)
def test_an_outputs_extension_is_its_format(row, tiny_classifier, tmp_path, capsys, monkeypatch):
    run_row(row, tiny_classifier, tmp_path, capsys, monkeypatch)


# ------------------------------------------------------- rule 3: a failed run leaves nothing
def test_a_failed_data_set_leaves_nothing(tmp_path, monkeypatch, capsys):
    """make_tiny_datasets stopped half-way (a failing image write): the folder is as it was,
    the user's file in it too; a later run writes the set."""
    from mobileone_mm.devkit import tiny_data as tiny_data

    (tmp_path / 'readme.txt').write_text('mine\n')
    real, calls = tiny_data._save_jpg, []

    def fails_on_the_third(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError('disk full')
        real(image, path)

    monkeypatch.setattr(tiny_data, '_save_jpg', fails_on_the_third)
    for make in (tiny_data.make_tiny_flowers, tiny_data.make_tiny_coco):
        for out in (tmp_path, tmp_path / 'new' / 'folder'):
            calls.clear()
            with pytest.raises(OSError, match='disk full'):
                make(out, num_train=3, num_val=1)
            assert sorted(os.listdir(tmp_path)) == ['readme.txt']
    monkeypatch.setattr(tiny_data, '_save_jpg', real)
    tiny_data.make_tiny_flowers(tmp_path, num_train=3, num_val=1)
    assert sorted(os.listdir(tmp_path)) == [
        'jpg',
        'readme.txt',
        'tiny_flowers_files.json',
        'train.txt',
        'val.txt',
    ]


def test_deploy_hook_leaves_a_users_file_alone(tiny_classifier, tmp_path):
    """SaveDeployCheckpointHook (a training run's deploy copy of its best checkpoint) does
    not write over a file of the user's named like its deploy config: it warns, the run
    goes on; with the name free it writes both files."""
    from mmengine.config import Config
    from mmengine.logging import MessageHub, MMLogger

    from mobileone_mm.fusion.hooks import SaveDeployCheckpointHook

    class Runner:  # what the hook reads of mmengine's Runner
        cfg = Config.fromfile(tiny_classifier['config'])
        model, _ = build_model(cfg)
        logger = MMLogger.get_instance('file_rules_hook', log_level='WARNING')
        message_hub = MessageHub.get_instance('file_rules_hook')

    best = tmp_path / 'best_accuracy_epoch_1.pth'
    shutil.copy(tiny_classifier['cls_pth'], best)
    Runner.message_hub.update_info('best_ckpt', str(best))
    users = tmp_path / 'best_accuracy_epoch_1_deploy.py'
    users.write_text('# my notes\n')
    SaveDeployCheckpointHook(verify=False).after_val_epoch(Runner())
    assert users.read_text() == '# my notes\n'
    assert sorted(os.listdir(tmp_path)) == [best.name, users.name]
    users.unlink()
    SaveDeployCheckpointHook(verify=False).after_val_epoch(Runner())
    assert sorted(os.listdir(tmp_path)) == sorted(
        [best.name, users.name, 'best_accuracy_epoch_1_deploy.pth']
    )
