"""CPU latency of MobileOne (ours: train, fused, optimize_for_inference in fp32 and int8)
against timm's and mmpretrain's fused MobileOne and mmdet's MobileNetV2, whole SSDLite /
DeepLabV3 models (PyTorch, onnxruntime fp32 and int8), every deploy runtime at each
precision on the S0 / S1 classifiers and SSDLite-S0 (not with --quick), a training step
(ours, ours with the branches stacked, mmpretrain's), the CPU model with its int8 / bf16
instruction sets, and the fp32 peak of the best GEMM / conv kernels (MKL, oneDNN,
onnxruntime). Writes OUT/benchmark.json, benchmark.md (the tables of docs/speed.md) and
benchmark.png, and prints the tables with PASS / FAIL for each speed target.

    python tools/benchmark.py [--quick] [--threads N] [--out DIR] [--archs s0 s1] [--sizes 320]

Run it on an otherwise idle machine (how long it takes: docs/speed.md).
"""

import os

from argtypes import positive_int

from mobileone_mm.devkit.benchmark import ARCHS, run_and_report
from mobileone_mm.errors import run_tool, tool_parser


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument(
        '--quick',
        action='store_true',
        help='S0 and S1 at 320x320 (fp32 and int8), few runs, small '
        'DeepLabV3 input, S0 training step at batch 2',
    )
    parser.add_argument(
        '--threads',
        type=positive_int,
        default=None,
        help=f"torch and onnxruntime threads (default: torch's, {os.cpu_count()} here)",
    )
    parser.add_argument('--out', default='work_dirs/benchmark', help='output folder')
    parser.add_argument('--archs', nargs='+', choices=ARCHS, help='override the preset')
    parser.add_argument('--sizes', nargs='+', type=positive_int, help='override the preset')
    parser.add_argument('--runs', type=positive_int, help='most timed rounds per group')
    args = parser.parse_args(argv)
    result, paths = run_and_report(
        args.out,
        'quick' if args.quick else 'full',
        threads=args.threads,
        archs=args.archs,
        sizes=args.sizes,
        runs=args.runs,
    )
    with open(paths['md']) as f:
        print('\n' + f.read())
    print('written: ' + ', '.join(paths.values()))
    failed = [t['key'] for t in result['targets'] if not t['passed']]
    print(
        f'targets: {len(result["targets"]) - len(failed)} passed'
        + (f', failed: {", ".join(failed)}' if failed else '')
    )


if __name__ == '__main__':
    main()
