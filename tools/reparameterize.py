"""Switch a trained detector / segmentor / classifier with a MobileOne backbone to its
deploy form: every block fused into one conv, outputs checked unchanged.

    python tools/reparameterize.py CONFIG CHECKPOINT OUT_CHECKPOINT [--no-verify]

Writes OUT_CHECKPOINT (meta + fused weights) and, next to it, the deploy config (same name,
.py): the training config with model.backbone.deploy=True. Use both with `mim test`,
tools/export_onnx.py or mmengine's Runner. Run it from the folder the config's data paths
are relative to, so that the check uses val images (random inputs otherwise).
"""

from argtypes import positive_int

from mobileone_mm.errors import run_tool, tool_parser
from mobileone_mm.fusion.output_check import describe
from mobileone_mm.fusion.reparameterize import reparameterize_checkpoint


@run_tool
def main(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='training config (mmdet, mmseg or mmpretrain)')
    parser.add_argument('checkpoint', help='training checkpoint of that config')
    parser.add_argument(
        'out_checkpoint',
        help='deploy checkpoint to write (.pth; the deploy '
        'config goes beside it, .py; never over an input)',
    )
    parser.add_argument(
        '--no-verify', action='store_true', help='skip comparing the outputs of both forms'
    )
    parser.add_argument(
        '--num-images', type=positive_int, default=4, help='images compared (default: 4)'
    )
    args = parser.parse_args(argv)
    result = reparameterize_checkpoint(
        args.config,
        args.checkpoint,
        args.out_checkpoint,
        verify=not args.no_verify,
        num_images=args.num_images,
    )
    if result.already_fused:
        print(
            f'{args.checkpoint} is already in deploy form (fused) and fits the deploy '
            f'form of the config: left alone, nothing written.'
        )
        return
    print(
        f'{result.task} model, parameters: {result.params_train:,} train form -> '
        f'{result.params_deploy:,} deploy form'
    )
    if result.check is not None:
        print(f'outputs on {result.inputs}: {describe(result.check, "the deploy form")}')
    print(f'written: {result.out_checkpoint}\n         {result.out_config}')


if __name__ == '__main__':
    main()
