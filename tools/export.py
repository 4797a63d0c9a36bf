"""Export a trained MobileOne detector / segmentor / classifier (fused first) to a
runtime, and check the artefact before writing it.

    python tools/export.py CONFIG CHECKPOINT OUT --runtime RUNTIME [--precision fp32|int8]
                           [--shape H W] [--verify]

RUNTIME: onnxruntime (OUT.onnx), openvino (OUT.xml + OUT.bin), executorch (OUT.pte),
ncnn (OUT.ncnn.param + OUT.ncnn.bin), coreml (OUT.mlpackage). Each artefact carries what
tools/infer.py needs (task, input size, class names, test pipeline, detection
post-process settings) in the runtime's metadata slot or a .json beside it. With
--verify, nothing is written unless the artefact passes: fp32 against the float64 train
form (the project's output check), int8 against float32 (cosine and task decisions) on
val images; int8 is calibrated on the config's train images (--calib-split val for its
val set). Core ML artefacts run only on Apple systems: not checked here.
"""

from argtypes import add_export_arguments, positive_int

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.fusion.output_check import describe_values
from mobileone_mm.loading.data import SPLITS
from mobileone_mm.runtimes import PRECISIONS, RUNTIMES, export_to_runtime


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training (train-form) or deploy checkpoint')
    parser.add_argument('out', help='the artefact (written atomically)')
    parser.add_argument('--runtime', required=True, choices=list(RUNTIMES))
    parser.add_argument(
        '--precision',
        default='fp32',
        choices=PRECISIONS,
        help='fp32 (default), int8 (onnxruntime, openvino, executorch), fp16 (coreml)',
    )
    parser.add_argument(
        '--verify', action='store_true', help='check the artefact on val images before writing it'
    )
    add_export_arguments(parser, dynamic=False, verify=True)
    parser.add_argument(
        '--calib-images', type=positive_int, default=32, help='int8 calibration images (default 32)'
    )
    parser.add_argument('--calib-split', choices=SPLITS, default='train')
    args = parser.parse_args(argv)
    report = export_to_runtime(
        args.config,
        args.checkpoint,
        args.out,
        args.runtime,
        args.precision,
        shape=args.shape,
        verify=args.verify,
        num_images=args.num_images,
        calib_images=args.calib_images,
        calib_split=args.calib_split,
        score_thr=args.score_thr,
    )
    shape = report['shape']
    print(
        f'{report["task"]} for {report["runtime"]} {report["precision"]}: input '
        f'{shape[0]}x{shape[1]}, outputs {report["outputs"]}'
        + (f'; calibrated on {report["calibration"]}' if report['calibration'] else '')
    )
    for note in report['notes']:
        print(f'  note: {note}')
    if report['check'] is not None:
        print(f'verify on {report["images"]}: {describe_values(report["check"])}')
    print(f'written: {", ".join(report["paths"])}')


if __name__ == '__main__':
    main()
