"""Can mmcv's source build work here, and will it compile CUDA ops? Run by tools/install.sh
before it compiles mmcv (docs/stack.md, "GPU install").

mmcv 2.1.0's setup.py compiles its ops as a CUDA extension whenever the environment's torch
sees a GPU (``torch.cuda.is_available()``) or FORCE_CUDA=1; FORCE_CUDA=0 does not turn
that off (CUDA_VISIBLE_DEVICES="" does: torch then sees no GPU). torch's cpp_extension
then needs a CUDA toolkit (CUDA_HOME / CUDA_PATH, else the folder above the nvcc on PATH,
else /usr/local/cuda; an nvcc wrapper script on PATH gives a folder without the headers)
whose nvcc has the CUDA major version torch was built with (another minor version only
warns); install.sh compiles with -std=c++20 (torch >= 2.14 headers), which nvcc has from
CUDA 12.0. Without these the build fails minutes in, deep in pip's output; this check
fails first and says what to do.

Prints the build's flavour on stdout ('cpu', or 'cuda' and torch's CUDA version, e.g.
'cuda12.8'; install.sh caches the wheel under it) and what it found on stderr; exit
status 1 when the build cannot work.
"""

import os
import re
import subprocess
import sys
from typing import NamedTuple, Optional

CPU_ONLY = (
    'or build CPU-only ops: FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="" tools/install.sh '
    '(then mmcv ops such as the NMS of mmdet run on CPU tensors only, so detectors '
    'cannot be validated or tested on the GPU; segmentation and classification are '
    'unaffected)'
)


class Plan(NamedTuple):
    ok: bool
    flavour: str  # 'cpu' or 'cuda<torch's CUDA version>'; '' when not ok
    message: str


def nvcc_release(output: str) -> Optional[str]:
    """'12.4' from ``nvcc --version`` output ('... release 12.4, V12.4.131')."""
    match = re.search(r'release (\d+)\.(\d+)', output)
    return f'{match[1]}.{match[2]}' if match else None


def plan_mmcv_build(
    gpu_visible: bool,
    force_cuda: str,
    torch_version: str,
    torch_cuda: Optional[str],
    cuda_home: Optional[str],
    nvcc_output: Optional[str],
    has_headers: bool,
) -> Plan:
    """What mmcv's setup.py will build, given what torch sees, the CUDA_HOME torch's
    build will use, its nvcc (``--version`` output, None when there is none) and whether
    it has the CUDA headers (include/cuda_runtime.h)."""
    if not (gpu_visible or force_cuda == '1'):
        return Plan(True, 'cpu', 'mmcv ops: CPU only (torch sees no GPU, FORCE_CUDA is not 1)')
    why = 'torch sees a GPU' if gpu_visible else 'FORCE_CUDA=1'
    if torch_cuda is None:
        return Plan(
            False,
            '',
            f'FORCE_CUDA=1 asks for CUDA ops, but torch {torch_version} '
            f'is a CPU build: unset FORCE_CUDA, or install a CUDA torch',
        )
    major = torch_cuda.split('.')[0]
    need = (
        f'mmcv builds CUDA ops here ({why}): that needs nvcc of CUDA {major}.x, the '
        f'version torch {torch_version} was built with ({torch_cuda}); '
    )
    fix = (
        f'Install the CUDA {torch_cuda} toolkit and run again with '
        f'CUDA_HOME=/usr/local/cuda-{torch_cuda} (an hour or more of compiling with the '
        f'default MAX_JOBS=2; MAX_JOBS=$(nproc) uses every core), {CPU_ONLY}.'
    )
    release = nvcc_release(nvcc_output) if nvcc_output is not None else None
    if release is None:
        where = (
            f'{cuda_home}/bin/nvcc does not run'
            if cuda_home
            else 'none found (CUDA_HOME unset, no nvcc on PATH, no /usr/local/cuda)'
        )
        return Plan(False, '', need + where + '. ' + fix)
    if release.split('.')[0] != major:
        return Plan(
            False,
            '',
            need + f'{cuda_home}/bin/nvcc is CUDA {release}, and torch '
            f'refuses another major version. ' + fix,
        )
    if not has_headers:
        return Plan(
            False,
            '',
            f'{cuda_home}/bin/nvcc is CUDA {release}, but '
            f'{cuda_home}/include has no cuda_runtime.h: torch took '
            f'CUDA_HOME={cuda_home} from the nvcc on PATH (a wrapper or a '
            f'link, not the toolkit). Run again with CUDA_HOME set to the '
            f'toolkit folder (e.g. /usr/local/cuda-{release}), {CPU_ONLY}.',
        )
    if int(major) < 12:
        return Plan(
            False,
            '',
            f'nvcc {release} cannot compile C++20, which install.sh uses '
            f'(torch >= 2.14 headers need it; nvcc has it from CUDA 12.0). '
            f'Use a torch built with CUDA >= 12, {CPU_ONLY}.',
        )
    note = (
        ''
        if release == torch_cuda
        else f' (torch was built with {torch_cuda}: another minor version, torch only warns)'
    )
    return Plan(
        True,
        f'cuda{torch_cuda}',
        f'mmcv ops: CPU and CUDA ({why}), nvcc {release} from {cuda_home}{note}',
    )


def main() -> int:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME  # where torch's build will look

    nvcc = os.path.join(CUDA_HOME, 'bin', 'nvcc') if CUDA_HOME else None
    output = None
    if nvcc and os.access(nvcc, os.X_OK):
        output = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
    if torch.version.hip is not None:
        print('[install] mmcv ops: ROCm torch, HIP ops (not checked here)', file=sys.stderr)
        print('rocm' + torch.version.hip)
        return 0
    headers = bool(CUDA_HOME) and os.path.exists(
        os.path.join(CUDA_HOME, 'include', 'cuda_runtime.h')
    )
    plan = plan_mmcv_build(
        torch.cuda.is_available(),
        os.environ.get('FORCE_CUDA', '0'),
        torch.__version__,
        torch.version.cuda,
        CUDA_HOME,
        output,
        headers,
    )
    print(f'[install] {plan.message}', file=sys.stderr)
    if plan.ok:
        print(plan.flavour)
    return 0 if plan.ok else 1


if __name__ == '__main__':
    sys.exit(main())
