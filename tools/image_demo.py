"""Run a trained detector / segmentor / classifier on photos with its codebase's own
inferencer and visualizer (mmdet DetInferencer, mmseg MMSegInferencer, mmpretrain
ImageClassificationInferencer), and print and draw what it finds, in each photo's frame.

    python tools/image_demo.py CONFIG CHECKPOINT IMAGE... [--out-dir DIR] [--deploy]

The codebase comes from the config. CHECKPOINT is a training checkpoint or a deploy one
(tools/reparameterize.py); --deploy fuses the model in memory first. With --out-dir, each
picture is written there as <photo name>.png, at the photo's size.
"""

from argtypes import score_threshold

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.predict.inferencers import run_demo


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='mmdet, mmseg or mmpretrain config')
    parser.add_argument('checkpoint', help='training or deploy checkpoint of that config')
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='photos')
    parser.add_argument('--out-dir', help='folder for the pictures (<photo name>.png)')
    parser.add_argument(
        '--deploy', action='store_true', help='fuse the model (deploy form) before running it'
    )
    parser.add_argument('--device', default='cpu', help='cpu (default), cuda, cuda:1, ...')
    parser.add_argument(
        '--score-thr',
        type=score_threshold,
        default=0.3,
        help='detections printed and drawn (0..1, default 0.3)',
    )
    args = parser.parse_args(argv)
    results, classes_source = run_demo(
        args.config,
        args.checkpoint,
        args.images,
        args.out_dir,
        deploy=args.deploy,
        device=args.device,
        score_thr=args.score_thr,
    )
    print(f'class names: {classes_source}')
    for result in results:
        print(f'{result.path} ({result.size[0]}x{result.size[1]}):')
        print('\n'.join(f'  {line}' for line in result.lines) or '  nothing above the threshold')
    if args.out_dir:
        print(f'pictures: {args.out_dir}')


if __name__ == '__main__':
    main()
