"""Convert a MobileOne ImageNet checkpoint (mmpretrain, Apple fused / unfused, timm) to
mmpretrain's classifier layout, which our backbone, mmpretrain and the configs load.

    python tools/convert_weights.py mobileone_s0_unfused.pth.tar mobileone-s0.pth --arch s0
"""

from mobileone_mm import ARCH_SETTINGS, convert_state_dict, load_checkpoint_file, save_checkpoint
from mobileone_mm.checkpoints.formats import backbone_state_dict
from mobileone_mm.checkpoints.io import CHECKPOINT_EXTENSIONS, state_dict_of
from mobileone_mm.checkpoints.paths import check_extension, plan_outputs
from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.models.arch import check_arch, describe_arch, infer_arch, resolve_arch


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
    plan_outputs(
        inputs={'checkpoint to convert': args.src}, outputs={'converted checkpoint': args.dst}
    )
    check_extension(args.dst, CHECKPOINT_EXTENSIONS, 'converted checkpoint')
    state_dict, fmt = convert_state_dict(state_dict_of(load_checkpoint_file(args.src)))
    backbone = backbone_state_dict(state_dict)
    if args.arch:
        check_arch(backbone, resolve_arch(args.arch))
    arch = describe_arch(infer_arch(backbone))
    save_checkpoint(
        dict(state_dict=state_dict, meta=dict(source_format=fmt, arch=arch, source=args.src)),
        args.dst,
    )
    print(f'{args.src}: {fmt} format, {arch}, {len(state_dict)} tensors -> {args.dst}')


if __name__ == '__main__':
    main()
