"""argparse types shared by the CLIs in tools/: a bad value is refused by argparse with
the rule it broke (one line, exit 2); and the arguments the export tools share."""

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be 1 or more, got {text}')
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value


def score_threshold(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'must be between 0 and 1, got {text}')
    return value


def add_export_arguments(parser: argparse.ArgumentParser, dynamic: bool, verify: bool):
    """The arguments tools/export.py, export_onnx.py and quantize.py share: --shape; with
    ``dynamic``, --dynamic; with ``verify``, what --verify checks on (--num-images,
    --score-thr)."""
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        metavar=('H', 'W'),
        help="input size (default: the config's test size)",
    )
    if dynamic:
        parser.add_argument(
            '--dynamic',
            action='store_true',
            help='free batch size (and image size for classifiers/segmentors)',
        )
    if verify:
        parser.add_argument(
            '--num-images',
            type=positive_int,
            default=8,
            help='val images --verify checks on (default 8)',
        )
        parser.add_argument(
            '--score-thr',
            type=score_threshold,
            default=0.3,
            help='detections compared by --verify',
        )
