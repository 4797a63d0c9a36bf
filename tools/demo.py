"""The backbone demo: for each arch, load ImageNet-format weights, fuse, check the
outputs are unchanged, and compare train form and fused form.

No weights can be downloaded here, so each arch's "ImageNet checkpoint" is a timm
MobileOne with random weights saved in timm's format: the same loading path a real
download takes (format detection, conversion, arch check).
"""
import argparse
import tempfile
from pathlib import Path

import torch

from mobileone_mm import ARCH_SETTINGS, MobileOne
from mobileone_mm.analysis import compare_forms
from mobileone_mm.weights import load_pretrained


def timm_checkpoint(arch: str, folder: Path) -> Path:
    import timm
    path = folder / f'mobileone_{arch}_timm.pth'
    torch.save(timm.create_model(f'mobileone_{arch}').state_dict(), path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--archs', nargs='+', default=sorted(ARCH_SETTINGS))
    parser.add_argument('--size', type=int, nargs=2, default=(224, 224))
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args()
    print(f'MobileOne backbones at {args.size[0]}x{args.size[1]}, batch 1, '
          f'{torch.get_num_threads()} threads, latency = median of {args.runs} runs')
    header = (f'{"arch":5} {"params train":>13} {"params fused":>13} {"GMACs train":>12} '
              f'{"GMACs fused":>12} {"ms train":>9} {"ms fused":>9} {"speed-up":>9} '
              f'{"max rel diff":>13}')
    print(header + '\n' + '-' * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            checkpoint = timm_checkpoint(arch, Path(folder))
            backbone = MobileOne(arch, out_indices=(0, 1, 2, 3))
            load_pretrained(backbone, str(checkpoint))  # what init_cfg=Pretrained runs
            row = compare_forms(backbone, tuple(args.size), runs=args.runs)
            assert row['max_rel_diff'] <= 1e-5, f'{arch}: fused outputs differ {row}'
            print(f'{arch:5} {row["train_params"]:>13,} {row["fused_params"]:>13,} '
                  f'{row["train_gmacs"]:>12.3f} {row["fused_gmacs"]:>12.3f} '
                  f'{row["train_ms"]:>9.1f} {row["fused_ms"]:>9.1f} '
                  f'{row["train_ms"] / row["fused_ms"]:>8.1f}x {row["max_rel_diff"]:>13.1e}')


if __name__ == '__main__':
    main()
