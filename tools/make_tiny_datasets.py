"""Write a small synthetic data set (seeded shapes on textured backgrounds) in the layout
mmdet / mmseg / mmpretrain read, for the tiny-data configs, the tests and the demo.

    python tools/make_tiny_datasets.py coco --out data/tiny_coco
    python tools/make_tiny_datasets.py ade20k --out data/tiny_ade20k --num-train 100
    python tools/make_tiny_datasets.py voc --out data/VOCdevkit --seed 1
    python tools/make_tiny_datasets.py flowers --out data/tiny_flowers
"""

from argtypes import non_negative_int

from mobileone_mm.devkit.tiny_data import TINY_DATASETS, make_tiny_dataset
from mobileone_mm.errors import run_tool, tool_parser


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('format', choices=sorted(TINY_DATASETS))
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument(
        '--seed',
        type=non_negative_int,
        default=0,
        help='seed of the shapes and textures (0 or more)',
    )
    parser.add_argument('--num-train', type=int, help='train images (default: per format)')
    parser.add_argument('--num-val', type=int, help='val images (default: per format)')
    parser.add_argument(
        '--overwrite', action='store_true', help='replace a data set already written there'
    )
    args = parser.parse_args(argv)
    root = make_tiny_dataset(
        args.format,
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        overwrite=args.overwrite,
    )
    print(f'tiny {args.format} data set (seed {args.seed}) written to {root}')


if __name__ == '__main__':
    main()
