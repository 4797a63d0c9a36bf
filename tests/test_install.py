"""The GPU check of tools/install.sh (tools/check_cuda_build.py): what mmcv 2.1.0's source
build will compile, and whether it can, decided before the compile starts. No GPU here:
the decisions are driven with the facts a GPU machine would give, and the script itself
with FORCE_CUDA=1 (which makes mmcv build CUDA ops without a GPU too) and fake nvcc."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from check_cuda_build import nvcc_release, plan_mmcv_build
from helpers import REPO

NVCC_12_4 = (
    'nvcc: NVIDIA (R) Cuda compiler driver\n'
    'Cuda compilation tools, release 12.4, V12.4.131\nBuild cuda_12.4.r12.4\n'
)
NVCC_12_8 = NVCC_12_4.replace('12.4', '12.8')
NVCC_13_0 = NVCC_12_4.replace('12.4', '13.0')
NVCC_11_8 = NVCC_12_4.replace('12.4', '11.8')


def plan(
    gpu=True,
    force='0',
    torch_cuda='12.8',
    home='/usr/local/cuda-12.8',
    nvcc=NVCC_12_8,
    headers=True,
):
    return plan_mmcv_build(
        gpu,
        force,
        f'2.14.1+cu{(torch_cuda or "").replace(".", "")}',
        torch_cuda,
        home,
        nvcc,
        headers,
    )


def test_nvcc_release():
    assert nvcc_release(NVCC_12_4) == '12.4' and nvcc_release(NVCC_13_0) == '13.0'
    assert nvcc_release('bash: nvcc: command not found') is None


def test_no_gpu_builds_cpu_ops_without_looking_for_nvcc():
    result = plan(gpu=False, home=None, nvcc=None, headers=False)
    assert result.ok and result.flavour == 'cpu'
    # FORCE_CUDA=0 is the default; it only matters that it is not '1'
    assert plan(gpu=False, force='0', nvcc=None).flavour == 'cpu'


@pytest.mark.parametrize('gpu,force', [(True, '0'), (False, '1')])
def test_cuda_build_with_the_matching_nvcc(gpu, force):
    result = plan(gpu=gpu, force=force)
    assert result.ok and result.flavour == 'cuda12.8'
    assert 'nvcc 12.8 from /usr/local/cuda-12.8' in result.message
    # FORCE_CUDA=0 does not stop mmcv from building CUDA ops when torch sees a GPU
    assert plan(gpu=True, force='0').flavour == 'cuda12.8'


def test_another_minor_version_builds_with_a_note():
    result = plan(nvcc=NVCC_12_4)
    assert result.ok and result.flavour == 'cuda12.8' and 'torch only warns' in result.message


def test_missing_nvcc_stops_with_both_ways_out():
    for home, nvcc in ((None, None), ('/usr/local/cuda', None)):
        result = plan(home=home, nvcc=nvcc)
        assert not result.ok and result.flavour == ''
        assert 'torch sees a GPU' in result.message
        assert 'Install the CUDA 12.8 toolkit' in result.message
        assert 'CUDA_HOME=/usr/local/cuda-12.8' in result.message
        assert 'FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="" tools/install.sh' in result.message
    assert 'none found' in plan(home=None, nvcc=None).message
    assert (
        '/usr/local/cuda/bin/nvcc does not run' in plan(home='/usr/local/cuda', nvcc=None).message
    )


def test_another_major_version_stops():
    result = plan(torch_cuda='13.0', nvcc=NVCC_12_4, home='/opt/cuda')
    assert not result.ok
    assert '/opt/cuda/bin/nvcc is CUDA 12.4' in result.message
    assert 'refuses another major version' in result.message
    assert 'CUDA_HOME=/usr/local/cuda-13.0' in result.message


def test_nvcc_without_toolkit_headers_stops():
    """An nvcc wrapper on PATH (/usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc):
    torch's CUDA_HOME becomes /usr/local, which has no CUDA headers."""
    result = plan(torch_cuda='13.0', nvcc=NVCC_13_0, home='/usr/local', headers=False)
    assert not result.ok and 'no cuda_runtime.h' in result.message
    assert 'CUDA_HOME set to the toolkit folder (e.g. /usr/local/cuda-13.0)' in result.message


def test_cuda_11_cannot_compile_cxx20_and_cpu_torch_cannot_force_cuda():
    result = plan(torch_cuda='11.8', nvcc=NVCC_11_8, home='/usr/local/cuda-11.8')
    assert not result.ok and 'cannot compile C++20' in result.message
    result = plan(gpu=False, force='1', torch_cuda=None)
    assert not result.ok and 'unset FORCE_CUDA' in result.message


def fake_toolkit(root: Path, output: str, headers: bool = True) -> Path:
    (root / 'bin').mkdir(parents=True)
    nvcc = root / 'bin' / 'nvcc'
    nvcc.write_text('#!/bin/sh\ncat <<EOF\n' + output + 'EOF\n')
    nvcc.chmod(0o755)
    if headers:
        (root / 'include').mkdir()
        (root / 'include' / 'cuda_runtime.h').write_text('')
    return root


def run_check(**env):
    return subprocess.run(
        [sys.executable, str(REPO / 'tools/check_cuda_build.py')],
        capture_output=True,
        text=True,
        env={**os.environ, 'CUDA_VISIBLE_DEVICES': '', **env},
    )


@pytest.mark.slow
def test_script_finds_nvcc_where_torch_does(tmp_path):
    """The script on this machine's torch: CUDA_HOME as torch's build reads it, nvcc run
    and parsed, stdout the wheel cache flavour, exit status 1 with the message."""
    import torch

    cuda = torch.version.cuda
    assert run_check(FORCE_CUDA='0').stdout == 'cpu\n'  # torch sees no GPU here
    if cuda is None:  # a CPU torch: FORCE_CUDA=1 cannot work
        result = run_check(FORCE_CUDA='1')
        assert result.returncode == 1 and 'unset FORCE_CUDA' in result.stderr
        return
    other = '11.8' if cuda.split('.')[0] != '11' else '12.4'
    home = fake_toolkit(tmp_path / 'other', NVCC_12_4.replace('12.4', other))
    result = run_check(FORCE_CUDA='1', CUDA_HOME=str(home))
    assert result.returncode == 1 and result.stdout == ''
    assert f'{home}/bin/nvcc is CUDA {other}' in result.stderr
    home = fake_toolkit(tmp_path / 'same', NVCC_12_4.replace('12.4', cuda))
    result = run_check(FORCE_CUDA='1', CUDA_HOME=str(home))
    assert result.returncode == 0 and result.stdout == f'cuda{cuda}\n', result.stderr


@pytest.mark.slow
def test_install_stops_before_compiling_mmcv(tmp_path):
    """install.sh runs the check before it downloads or compiles anything of mmcv: an
    active environment (this one's packages, mmcv hidden) with FORCE_CUDA=1 and an nvcc
    of another CUDA major version stops with the check's message and exit status 1."""
    import site

    import torch

    env = tmp_path / 'env'
    subprocess.run([sys._base_executable, '-m', 'venv', '--without-pip', str(env)], check=True)
    packages = Path(
        subprocess.run(
            [str(env / 'bin/python'), '-c', 'import site; print(site.getsitepackages()[0])'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (packages / 'stack.pth').write_text(site.getsitepackages()[0] + '\n')
    (packages / 'mmcv').mkdir()  # found before the real one: mmcv looks not installed
    (packages / 'mmcv' / '__init__.py').write_text('raise ImportError("hidden by the test")\n')
    major = int((torch.version.cuda or '13').split('.')[0])
    home = fake_toolkit(tmp_path / 'cuda', NVCC_12_4.replace('12.4', f'{major - 1}.4'))
    result = subprocess.run(
        ['bash', str(REPO / 'tools/install.sh')],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            'VIRTUAL_ENV': str(env),
            'FORCE_CUDA': '1',
            'CUDA_HOME': str(home),
            'CUDA_VISIBLE_DEVICES': '',
            'MOBILEONE_MM_CACHE': str(tmp_path / 'cache'),
        },
    )
    assert result.returncode == 1, result.stderr
    assert (
        f'{home}/bin/nvcc is CUDA {major - 1}.4' if torch.version.cuda else 'unset FORCE_CUDA'
    ) in result.stderr  # a CPU torch cannot build CUDA ops
    assert 'compiling from source' not in result.stderr and not (tmp_path / 'cache').exists()
    assert not (env / '.mobileone-mm-installed').exists()
