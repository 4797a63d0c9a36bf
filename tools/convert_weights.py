"""Convert a MobileOne ImageNet checkpoint (mmpretrain, Apple fused / unfused, timm) to
mmpretrain's classifier layout, which our backbone, mmpretrain and the configs load.

    python tools/convert_weights.py mobileone_s0_unfused.pth.tar mobileone-s0.pth --arch s0
"""

from mobileone_mm import ARCH_SETTINGS
from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.models.pretrained import convert_checkpoint


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('src', help='checkpoint in any supported format')
    parser.add_argument(
        'dst',
        help='output .pth, or .safetensors (written atomically; '
        'never over src or a file our tools did not write)',
    )
    parser.add_argument(
        '--arch', choices=sorted(ARCH_SETTINGS), help='refuse weights of another arch'
    )
    args = parser.parse_args(argv)
    done = convert_checkpoint(args.src, args.dst, arch=args.arch)
    print(
        f'{args.src}: {done["format"]} format, {done["arch"]}, {done["tensors"]} tensors '
        f'-> {args.dst}'
    )


if __name__ == '__main__':
    main()
