"""The end-to-end demo on built-in synthetic data (`make demo`), every step a command
of the README:

1. backbones: each arch loads ImageNet-format weights (a timm checkpoint with random
   weights: nothing can be downloaded here), fuses, and is checked unchanged; params,
   GMACs and latency of train form vs fused form.
2. detection: tiny COCO set -> `mim train mmdet` SSDLite-S0 -> `mim test` -> deploy form
   (tools/reparameterize.py) -> `mim test` again -> ONNX with --verify -> onnx_infer.py.
3. segmentation: the same with DeepLabV3-S0 on tiny ADE20K.
4. a summary table.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from argtypes import positive_int

from mobileone_mm import ARCH_SETTINGS, MobileOne
from mobileone_mm.devkit.analysis import compare_forms, graph_latency
from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.models.pretrained import load_pretrained

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASKS = {
    'detection': dict(
        codebase='mmdet',
        data=('coco', 'data/tiny_coco'),
        config='configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
        metric=r'coco/bbox_mAP: ([\d.]+)',
        metric_name='bbox mAP',
        # --quick: one epoch of one iteration (4 train images, repeated twice per epoch,
        # in batches of 8) on a set of 4 train and 2 val images
        quick_data=['--num-train', '4', '--num-val', '2'],
        quick=['train_cfg.max_epochs=1', 'train_cfg.val_interval=1'],
        image='data/tiny_coco/val2017',
    ),
    'segmentation': dict(
        codebase='mmseg',
        data=('ade20k', 'data/ade'),
        config='configs/segmentation/deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
        metric=r'mIoU: ([\d.]+)',
        metric_name='mIoU',
        quick_data=['--num-train', '4', '--num-val', '2'],
        quick=[
            'train_cfg.max_iters=1',
            'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1',
        ],
        image='data/ade/ADEChallengeData2016/images/validation',
    ),
}


def step(text: str):
    print(f'\n==> [demo {time.strftime("%H:%M:%S")}] {text}', flush=True)


def run(*command: str) -> str:
    """Run a command in the current folder, echo its output as it comes, return it."""
    print('$ ' + ' '.join(command), flush=True)
    lines = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=dict(os.environ, PYTHONUNBUFFERED='1'),
    ) as process:
        for line in process.stdout:
            print(line, end='', flush=True)
            lines.append(line)
    if process.returncode:
        sys.exit(f'demo: {command[0]} failed (exit {process.returncode})')
    return ''.join(lines)


def backbones(archs, runs: int):
    print(
        f'MobileOne backbones at 224x224, batch 1, {torch.get_num_threads()} threads, '
        f'latency = median of {runs} runs'
    )
    header = (
        f'{"arch":5} {"params train":>13} {"params fused":>13} {"GMACs train":>12} '
        f'{"GMACs fused":>12} {"ms train":>9} {"ms fused":>9} {"speed-up":>9} '
        f'{"max rel diff":>13}'
    )
    print(header + '\n' + '-' * len(header))
    import timm

    with tempfile.TemporaryDirectory() as folder:
        for arch in archs:
            checkpoint = Path(folder) / f'mobileone_{arch}_timm.pth'
            torch.save(timm.create_model(f'mobileone_{arch}').state_dict(), checkpoint)
            backbone = MobileOne(arch, out_indices=(0, 1, 2, 3))
            load_pretrained(backbone, str(checkpoint))  # what init_cfg=Pretrained runs
            row = compare_forms(backbone, (224, 224), runs=runs)
            assert row['max_rel_diff'] <= 1e-5, f'{arch}: fused outputs differ {row}'
            print(
                f'{arch:5} {row["train_params"]:>13,} {row["fused_params"]:>13,} '
                f'{row["train_gmacs"]:>12.3f} {row["fused_gmacs"]:>12.3f} '
                f'{row["train_ms"]:>9.1f} {row["fused_ms"]:>9.1f} '
                f'{row["train_ms"] / row["fused_ms"]:>8.1f}x {row["max_rel_diff"]:>13.1e}'
            )


def in_repo(path: str) -> str:
    """A file of the repository as the commands name it: as in the README when they run
    at the repository root, else by its full path."""
    return path if Path.cwd() == REPO else str(REPO / path)


def mim_test(settings: dict, config: str, checkpoint: str, work_dir: str) -> float:
    """`mim test` a task's checkpoint; returns the metric it prints."""
    output = run(
        str(BIN / 'mim'),
        'test',
        settings['codebase'],
        config,
        '--checkpoint',
        checkpoint,
        '--work-dir',
        work_dir,
    )
    return float(re.findall(settings['metric'], output)[-1])


def task(name: str, settings: dict, runs: int, quick: bool = False) -> dict:
    """Make the data, train, test, fuse, test, export and draw one task, in the current
    folder (data/ and work_dirs/ there); returns its summary row. ``quick``: a few images
    and one iteration, a smoke test of the whole path."""
    python, mim = str(BIN / 'python'), str(BIN / 'mim')
    work = Path.cwd() / 'work_dirs' / f'demo_{name}'
    config, codebase = in_repo(settings['config']), settings['codebase']
    kind, data_dir = settings['data']
    step(f'{name}: synthetic data set')
    run(
        python,
        in_repo('tools/make_tiny_datasets.py'),
        kind,
        '--out',
        data_dir,
        '--overwrite',
        *(settings['quick_data'] if quick else []),
    )
    step(f'{name}: mim train {codebase} (minutes on a 2-core CPU)')
    start = time.time()
    run(
        mim,
        'train',
        codebase,
        config,
        '--work-dir',
        str(work),
        *(['--cfg-options', *settings['quick']] if quick else []),
    )
    train_minutes = (time.time() - start) / 60
    checkpoint = (work / 'last_checkpoint').read_text().strip()
    best = sorted(work.glob('best_*.pth'))
    checkpoint = str(best[-1]) if best else checkpoint

    step(f'{name}: mim test, train form')
    train_metric = mim_test(settings, config, checkpoint, str(work / 'test'))
    step(f'{name}: re-parameterize (tools/reparameterize.py), then mim test, deploy form')
    deploy = str(work / 'deploy.pth')
    run(python, in_repo('tools/reparameterize.py'), config, checkpoint, deploy)
    deploy_metric = mim_test(settings, str(work / 'deploy.py'), deploy, str(work / 'test'))
    step(f'{name}: ONNX export with --verify, and onnx_infer.py on a val image')
    onnx_file = str(work / f'{name}.onnx')
    run(python, in_repo('tools/export_onnx.py'), config, checkpoint, onnx_file, '--verify')
    times = graph_latency(str(work / 'deploy.py'), deploy, onnx_file, runs=runs)
    image = str(sorted((Path.cwd() / settings['image']).glob('*.jpg'))[0])
    picture = str(work / 'vis.png')
    run(python, in_repo('tools/onnx_infer.py'), onnx_file, image, '--out', picture)
    return dict(
        task=name,
        metric=settings['metric_name'],
        train=train_metric,
        deploy=deploy_metric,
        **times,
        minutes=train_minutes,
        files=[checkpoint, deploy, str(work / 'deploy.py'), onnx_file, picture],
    )


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument(
        '--archs', nargs='+', default=sorted(ARCH_SETTINGS), choices=sorted(ARCH_SETTINGS)
    )
    parser.add_argument('--runs', type=positive_int, default=20, help='latency runs per model')
    parser.add_argument(
        '--tasks',
        nargs='*',
        default=list(TASKS),
        choices=list(TASKS),
        help='end-to-end tasks to run (none: backbones only)',
    )
    parser.add_argument(
        '--quick',
        action='store_true',
        help='a few images and one training iteration (checks the path, not the metric)',
    )
    parser.add_argument(
        '--root',
        type=Path,
        default=REPO,
        help='folder to run the commands in, which gets data/ and work_dirs/ '
        '(default: the repository, as in the README)',
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f'--root {args.root}: no such folder')
    os.chdir(args.root)
    start = time.time()
    step('backbones: load, fuse, compare')
    backbones(args.archs, args.runs)
    rows = [task(name, TASKS[name], args.runs, args.quick) for name in args.tasks]
    if rows:
        step(f'summary ({(time.time() - start) / 60:.0f} minutes in all)')
        print(
            '| task | metric | train form | deploy form | train min | PyTorch ms | '
            'onnxruntime ms |\n|---|---|---|---|---|---|---|'
        )
        for r in rows:
            print(
                f'| {r["task"]} | {r["metric"]} | {r["train"]:.4f} | {r["deploy"]:.4f} | '
                f'{r["minutes"]:.1f} | {r["torch_ms"]:.1f} | {r["onnx_ms"]:.1f} |'
            )
        for r in rows:
            print(f'{r["task"]} files: ' + ', '.join(r['files']))


if __name__ == '__main__':
    main()
