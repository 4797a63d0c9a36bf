"""A trained checkpoint to mmdeploy's end2end.onnx (ONNX Runtime), on torch >= 2.9 too, and
optionally its metric on the config's test set through mmdeploy's task processor.

    python tools/mmdeploy_export.py DEPLOY_CFG CONFIG CHECKPOINT OUT.onnx [--image IMG]
        [--test] [--work-dir DIR] [--device cpu]

DEPLOY_CFG is one of configs/mmdeploy/*.py (or mmdeploy's own). mmdeploy fuses the
MobileOne backbone itself; the checkpoint may be a training one or a deploy one. This is
mmdeploy's tools/deploy.py + tools/test.py for ONNX Runtime, run in this process, where
mobileone_mm.runtimes.mmdeploy_route makes torch.onnx.export use the TorchScript exporter.
"""

import json

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.runtimes.mmdeploy_route import export_and_test


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('deploy_cfg', help='mmdeploy deploy config (configs/mmdeploy/)')
    parser.add_argument('config', help='model config')
    parser.add_argument('checkpoint', help='training or deploy checkpoint')
    parser.add_argument('out', help='.onnx file (written atomically)')
    parser.add_argument('--image', help='image the export traces (default: a grey image)')
    parser.add_argument(
        '--test', action='store_true', help="evaluate the ONNX model on the config's test set"
    )
    parser.add_argument('--work-dir', default='work_dirs/mmdeploy_test', help='logs of --test')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    metrics = export_and_test(
        args.deploy_cfg,
        args.config,
        args.checkpoint,
        args.out,
        image=args.image,
        test_work_dir=args.work_dir if args.test else None,
        device=args.device,
    )
    print(f'wrote {args.out}')
    if metrics is not None:
        print(json.dumps(metrics, indent=1))


if __name__ == '__main__':
    main()
