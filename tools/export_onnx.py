"""Export a trained MobileOne detector / segmentor / classifier to ONNX (fused first),
and check it in onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--dynamic] [--verify]

The graph carries what tools/onnx_infer.py needs in its metadata: the task, the class names
(the checkpoint's meta, else the config's), the config's test-pipeline resizing and the
detector's post-process settings. With --verify, nothing is written unless onnxruntime
and PyTorch agree.
"""

from argtypes import add_export_arguments

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.fusion.output_check import describe_values
from mobileone_mm.runtimes.export import export_onnx_graph


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training (train-form) or deploy checkpoint')
    parser.add_argument('out', help='.onnx file (written atomically)')
    add_export_arguments(parser, dynamic=True, verify=True)
    parser.add_argument(
        '--verify', action='store_true', help='compare onnxruntime with PyTorch on val images'
    )
    args = parser.parse_args(argv)
    report = export_onnx_graph(
        args.config,
        args.checkpoint,
        args.out,
        shape=args.shape,
        dynamic=args.dynamic,
        verify=args.verify,
        num_images=args.num_images,
        score_thr=args.score_thr,
    )
    shape, metadata = report['shape'], report['metadata']
    print(
        f'{report["task"]}: input {shape[0]}x{shape[1]}'
        f'{" (dynamic)" if args.dynamic else ""}, outputs {report["outputs"]}; '
        f'convs: fused PyTorch {report["torch_convs"]}, ONNX {report["onnx_convs"]}; '
        f'classes: {len(metadata["classes"]) or "numbers only"}'
        f'{" (" + metadata["classes_source"] + ")" if metadata["classes"] else ""}'
    )
    for note in metadata['notes']:
        print(f'  note: {note}')
    if report['check'] is not None:
        print(f'verify on {report["images"]}: {describe_values(report["check"])}')
    print(f'written: {args.out}')


if __name__ == '__main__':
    main()
