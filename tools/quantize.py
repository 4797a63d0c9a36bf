"""Quantize a trained MobileOne detector / segmentor / classifier to an int8 ONNX graph
(fused first, static quantization calibrated on the config's own images), and check it
against the float32 graph.

    python tools/quantize.py CONFIG CHECKPOINT OUT.onnx [--calib-images N] [--verify]

The graph has the input, outputs and metadata of tools/export_onnx.py's (plus an
``int8`` entry saying how it was quantized), so tools/onnx_infer.py runs it. Calibration
images come from the config's train set (--calib-split val for its val set), read and
resized by the config's test pipeline as onnx_infer does. The int8 outputs are checked
against float32 on val images (cosine similarity, task decisions kept); nothing is
written when the check fails. --verify also scores the float32 and the int8 graph on the
whole val set with the config's own metric (mmdet's COCO mAP, mmseg's mIoU, mmpretrain's
accuracy) and prints both.
"""

from argtypes import add_export_arguments, non_negative_int, positive_int

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.loading.data import SPLITS
from mobileone_mm.runtimes.evaluate import quantize_to_file
from mobileone_mm.runtimes.int8_check import describe_int8
from mobileone_mm.runtimes.onnxruntime_int8 import METHODS


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training (train-form) or deploy checkpoint')
    parser.add_argument('out', help='.onnx file (written atomically)')
    parser.add_argument(
        '--calib-images', type=positive_int, default=32, help='calibration images (default 32)'
    )
    parser.add_argument('--calib-split', choices=SPLITS, default='train')
    parser.add_argument(
        '--method', choices=METHODS, default='minmax', help='how activation ranges are calibrated'
    )
    add_export_arguments(parser, dynamic=True, verify=False)
    parser.add_argument(
        '--float-layers',
        type=non_negative_int,
        default=0,
        metavar='K',
        help='also keep the K layers int8 hurts most in float (measured '
        'one by one on calibration images)',
    )
    parser.add_argument(
        '--check-images',
        type=positive_int,
        default=8,
        help='val images the int8 outputs are checked on',
    )
    parser.add_argument(
        '--verify',
        action='store_true',
        help="score float32 and int8 on the val set with the config's metric",
    )
    args = parser.parse_args(argv)
    report = quantize_to_file(
        args.config,
        args.checkpoint,
        args.out,
        calib_images=args.calib_images,
        calib_split=args.calib_split,
        method=args.method,
        shape=args.shape,
        dynamic=args.dynamic,
        check_images=args.check_images,
        float_layers=args.float_layers,
        evaluate=args.verify,
    )
    shape = report['shape']
    print(
        f'{report["task"]}: input {shape[0]}x{shape[1]}'
        f'{" (dynamic)" if args.dynamic else ""}; calibrated on {report["calibration"]}; '
        f'{len(report["float_nodes"])} layer(s) kept float: '
        f'{", ".join(report["float_nodes"]) or "none"}'
    )
    print(f'class names: {report["classes_source"]}')
    for note in report['notes']:
        print(f'  note: {note}')
    print(describe_int8(report['check'], f'check on {report["check_images"]}'))
    if args.verify:
        for key, value in report['fp32'].items():
            print(
                f'{key}: float32 {value:.4f}, int8 {report["int8"][key]:.4f}, '
                f'difference {report["int8"][key] - value:+.4f}'
            )
    print(f'written: {args.out}')


if __name__ == '__main__':
    main()
