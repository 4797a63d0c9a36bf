"""Export a trained MobileOne detector / segmentor / classifier to ONNX (fused first),
and check it in onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--dynamic] [--verify]

The graph carries what tools/onnx_infer.py needs in its metadata: the task, the class names
(the checkpoint's meta, else the config's), the config's test-pipeline resizing and the
detector's post-process settings. With --verify, nothing is written unless onnxruntime
and PyTorch agree.
"""

import copy
import sys

from argtypes import positive_int, score_threshold

from mobileone_mm.checkpoints.io import atomic_file
from mobileone_mm.checkpoints.paths import check_extension, plan_outputs
from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.fusion.output_check import describe
from mobileone_mm.loading.checkpoint import load_model
from mobileone_mm.loading.config import input_shape_of
from mobileone_mm.predict.metadata import export_metadata, fixed_input_shape
from mobileone_mm.runtimes.artefact_check import verify_onnx
from mobileone_mm.runtimes.export import check_images
from mobileone_mm.runtimes.onnx_graphs import build_onnx


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training (train-form) or deploy checkpoint')
    parser.add_argument('out', help='.onnx file (written atomically)')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        metavar=('H', 'W'),
        help="input size (default: the config's test size)",
    )
    parser.add_argument(
        '--dynamic',
        action='store_true',
        help='free batch size (and image size for classifiers/segmentors)',
    )
    parser.add_argument(
        '--verify', action='store_true', help='compare onnxruntime with PyTorch on val images'
    )
    parser.add_argument('--num-images', type=positive_int, default=8)
    parser.add_argument(
        '--score-thr', type=score_threshold, default=0.3, help='detections compared by --verify'
    )
    args = parser.parse_args(argv)
    plan_outputs(
        inputs={'config': args.config, 'checkpoint': args.checkpoint},
        outputs={'ONNX model': args.out},
    )
    check_extension(args.out, ['.onnx'], 'ONNX output')
    model, cfg, ckpt = load_model(args.config, args.checkpoint)
    metadata = export_metadata(cfg, ckpt, model, args.config)
    shape = args.shape or fixed_input_shape(metadata['preprocess']) or input_shape_of(cfg)
    train_form = copy.deepcopy(model) if args.verify else None  # build_onnx fuses
    graph, info = build_onnx(model, shape, dynamic=args.dynamic, metadata=metadata)
    print(
        f'{info["task"]}: input {shape[0]}x{shape[1]}'
        f'{" (dynamic)" if args.dynamic else ""}, outputs {info["outputs"]}; '
        f'convs: fused PyTorch {info["torch_convs"]}, ONNX {info["onnx_convs"]}; '
        f'classes: {len(metadata["classes"]) or "numbers only"}'
        f'{" (" + metadata["classes_source"] + ")" if metadata["classes"] else ""}'
    )
    for note in metadata['notes']:
        print(f'  note: {note}')
    # A failed check is a result, not an input mistake: exit code 1 (run_tool: 2).
    if info['torch_convs'] != info['onnx_convs']:
        sys.exit(
            'export_onnx: the graph has another number of convolutions than the '
            'fused model: some branch structure was not fused. Nothing written.'
        )
    if args.verify:
        verify(args, train_form, cfg, graph, shape)
    with atomic_file(args.out) as f:
        f.write(graph)
    print(f'written: {args.out}')


def verify(args, train_form, cfg, graph: bytes, shape):
    images, source = check_images(cfg, shape, args.num_images)
    report = verify_onnx(train_form, graph, images, score_thr=args.score_thr)
    print(
        f'verify on {source}: '
        + ', '.join(
            f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}' for k, v in report.items()
        )
    )
    if not report['passed']:
        sys.exit(
            f'export_onnx: onnxruntime and PyTorch disagree: '
            f'{describe(report, "the graph")}. Nothing written.'
        )


if __name__ == '__main__':
    main()
