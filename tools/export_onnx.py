"""Export a trained MobileOne detector / segmentor / classifier to ONNX (fused first),
and check it in onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--dynamic] [--verify]
"""
import argparse
import sys

import numpy as np

from mobileone_mm import CheckpointError
from mobileone_mm.deploy import DeployError, input_shape_of, load_model, val_image_paths
from mobileone_mm.export import export_onnx, read_image, verify_onnx

THRESHOLDS = 'logits <= 1e-4 relative, labels >= 99.9% equal, detections matched ' \
             '(IoU >= 0.99, score within 1e-4)'


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='training (train-form) or deploy checkpoint')
    parser.add_argument('out', help='.onnx file (written atomically)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the config's test size)")
    parser.add_argument('--dynamic', action='store_true',
                        help='free batch size (and image size for classifiers/segmentors)')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch on val images')
    parser.add_argument('--num-images', type=int, default=8)
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections compared by --verify')
    args = parser.parse_args()
    try:
        model, cfg, _ = load_model(args.config, args.checkpoint)
    except (FileNotFoundError, CheckpointError, DeployError) as error:
        sys.exit(f'export_onnx: {error}')
    shape = args.shape or input_shape_of(cfg)
    classes = (model.dataset_meta or {}).get('classes') if hasattr(model, 'dataset_meta') \
        else None
    info = export_onnx(model, args.out, shape, dynamic=args.dynamic,
                       metadata=dict(classes=list(classes or []), config=args.config))
    print(f'{info["task"]}: {args.out}, input {shape[0]}x{shape[1]}'
          f'{" (dynamic)" if args.dynamic else ""}, outputs {info["outputs"]}; '
          f'convs: fused PyTorch {info["torch_convs"]}, ONNX {info["onnx_convs"]}')
    if info['torch_convs'] != info['onnx_convs']:
        sys.exit('export_onnx: the graph has another number of convolutions than the '
                 'fused model: some branch structure was not fused.')
    if args.verify:
        paths = val_image_paths(cfg, args.num_images)
        if paths:
            images, source = [read_image(p, shape) for p in paths], f'{len(paths)} val images'
        else:
            rng = np.random.RandomState(0)
            images = [rng.randint(0, 256, (1, 3, *shape)).astype(np.float32)
                      for _ in range(args.num_images)]
            source = f'{args.num_images} random images (val set not on disk)'
        report = verify_onnx(model, args.out, images, score_thr=args.score_thr)
        print(f'verify on {source}: ' +
              ', '.join(f'{k} {v:.1f}' if k.endswith('_ms') else
                        f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}'
                        for k, v in report.items()))
        if not report['passed']:
            sys.exit(f'export_onnx: onnxruntime and PyTorch disagree ({THRESHOLDS}).')


if __name__ == '__main__':
    main()
