"""A trained checkpoint to any runtime's artefact, in one call (tools/export.py):
the model loaded by the project's loader, the metadata every runtime carries (class
names, test pipeline, task and post-process settings), fused, wrapped (normalisation
inside, raw outputs named as the ONNX graph's), exported by the runtime's module and,
with ``verify``, checked before anything is written:

* fp32: the artefact's outputs against the float64 train form by the project's one
  output check (``runtimes.artefact_check.verify_runner``: ``Reference`` / ``judge``), and the
  detections after post-processing against mmdet's own;
* int8: ``runtimes.onnxruntime_int8.judge_int8`` (cosine and task decisions) against the fused
  float32 model, on val images (the calibration images when the val set is not on
  disk), calibrated on ``calib_images`` images of ``calib_split`` as tools/quantize.py is.

The artefact is written in a temp folder beside ``out`` and renamed into place only when
the export and the check succeed: a failed export leaves nothing on disk.
"""

import copy
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..checkpoints.io import atomic_file
from ..checkpoints.marks import METADATA_MARK
from ..checkpoints.paths import check_extension, plan_outputs
from ..fusion.output_check import describe
from ..loading.checkpoint import load_model
from ..loading.config import DeployError, input_shape_of
from ..loading.data import val_image_paths
from ..predict.metadata import export_metadata, fixed_input_shape
from ..predict.photos import read_image
from .artefact_check import ArtefactCheckFailed, verify_onnx, verify_runner
from .common import RUNTIMES, artefact_files, get_runtime, write_staged
from .evaluate import dataset_images, one_batch
from .int8_check import describe_int8, judge_int8
from .onnx_graphs import build_onnx
from .onnxruntime_int8 import Int8CheckFailed
from .wrappers import export_metadata_of, wrap_for_export


def export_to_runtime(
    config,
    checkpoint: str,
    out: str,
    runtime: str,
    precision: str = 'fp32',
    shape: Optional[Sequence[int]] = None,
    verify: bool = False,
    num_images: int = 8,
    calib_images: int = 32,
    calib_split: str = 'train',
    score_thr: float = 0.3,
    threads: Optional[int] = None,
) -> dict:
    """Export ``checkpoint`` (train or deploy form) of ``config`` to ``out`` for
    ``runtime`` at ``precision`` (module docstring). ``shape``: (H, W), default the test
    pipeline's fixed size, else the config's test size. ``num_images``: val images the
    check runs on. Returns what was done: runtime, precision, task, shape, outputs,
    paths, notes, check (None without ``verify``; a runtime that does not run here is
    not checked), images (what the check ran on), calibration (int8).

    Raises ExportError (runtime unknown, not installed, an operator it cannot take, a
    failed check), PathError, CheckpointError, DeployError, QuantizeError."""
    module = get_runtime(runtime, precision)
    check_extension(out, [module.SUFFIX], f'{runtime} output')
    plan_outputs(
        inputs={'config': config, 'checkpoint': checkpoint}, outputs=artefact_files(out, runtime)
    )
    model, cfg, ckpt = load_model(config, checkpoint)
    metadata = export_metadata(cfg, ckpt, model, os.fspath(config))
    shape = tuple(shape or fixed_input_shape(metadata['preprocess']) or input_shape_of(cfg))
    train_form = copy.deepcopy(model) if verify else None  # wrap_for_export fuses
    wrapper, example = wrap_for_export(model, shape)
    meta = dict(export_metadata_of(wrapper, metadata=metadata), precision=precision)
    meta[METADATA_MARK[0]] = METADATA_MARK[1]  # ours: a re-export replaces it
    report = dict(
        runtime=runtime,
        precision=precision,
        task=meta['task'],
        shape=shape,
        outputs=list(wrapper.output_names),
        notes=list(metadata['notes']),
        check=None,
        images='',
        calibration='',
    )
    calibration = None
    if precision == 'int8':
        calibration = dataset_images(cfg, meta['preprocess'], shape, calib_split, calib_images)
        report['calibration'] = f'{len(calibration)} {calib_split} images'
    if verify and not module.RUNS_HERE:
        report['notes'].append(
            f'{runtime} artefacts run only on {RUNTIMES[runtime].platform}: not checked here'
        )

    def write(path: str):
        module.export(wrapper, example, path, meta, precision, calibration)
        if verify and module.RUNS_HERE:
            runner = module.load(path, threads)
            if precision == 'int8':
                report.update(_check_int8(cfg, wrapper, runner, calibration, num_images))
            else:
                report.update(_check_fp32(cfg, train_form, runner, shape, num_images, score_thr))

    report['paths'] = write_staged(out, write)
    return report


def check_images(cfg, shape, num_images: int) -> tuple:
    """(val images as the artefact takes them, resized to ``shape``, what they are);
    random ones when the val set is not on disk."""
    paths = val_image_paths(cfg, num_images)
    if paths:
        return [read_image(p, shape) for p in paths], f'{len(paths)} val images'
    rng = np.random.RandomState(0)
    return (
        [rng.randint(0, 256, (1, 3, *shape)).astype(np.float32) for _ in range(num_images)],
        f'{num_images} random images (val set not on disk)',
    )


def _check_fp32(cfg, train_form, runner, shape, num_images: int, score_thr: float) -> dict:
    images, source = check_images(cfg, shape, num_images)
    check = verify_runner(train_form, runner, images, score_thr=score_thr)
    if not check['passed']:
        raise ArtefactCheckFailed(
            f'{describe(check, "the artefact")} on {source}. Nothing written.'
        )
    return dict(check=check, images=source)


def _check_int8(cfg, wrapper, runner, calibration: List[np.ndarray], num_images: int) -> dict:
    meta = runner.metadata
    try:
        inputs = dataset_images(cfg, meta['preprocess'], runner.input_shape, 'val', num_images)
        source = f'{len(inputs)} val images'
    except DeployError:
        inputs, source = (
            calibration[:num_images],
            f'{len(calibration[:num_images])} calibration images (no val set)',
        )
    with torch.no_grad():
        fp32 = [[t.numpy() for t in _as_list(wrapper(torch.from_numpy(x)))] for x in inputs]
    check = judge_int8(one_batch(fp32), one_batch([runner(x) for x in inputs]), meta['task'], meta)
    if not check['passed']:
        raise Int8CheckFailed(
            f'{describe_int8(check, "the int8 artefact")} on {source}. '
            f'Nothing written. Calibrate on more images, or on the other '
            f'split.'
        )
    return dict(check=check, images=source)


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


def export_onnx_graph(
    config,
    checkpoint: str,
    out: str,
    shape: Optional[Sequence[int]] = None,
    dynamic: bool = False,
    verify: bool = False,
    num_images: int = 8,
    score_thr: float = 0.3,
) -> dict:
    """tools/export_onnx.py: the ONNX route, dynamic shapes included. ``out`` is planned
    first; the graph is written only when it has the fused model's convolutions and, with
    ``verify``, when onnxruntime passes the output check against the float64 train form on
    val images (ArtefactCheckFailed otherwise: nothing written). Returns what was exported
    (``build_onnx``'s report, the shape, the metadata, the check and its images)."""
    plan_outputs(inputs={'config': config, 'checkpoint': checkpoint}, outputs={'ONNX model': out})
    check_extension(out, ['.onnx'], 'ONNX output')
    model, cfg, ckpt = load_model(config, checkpoint)
    metadata = export_metadata(cfg, ckpt, model, os.fspath(config))
    shape = shape or fixed_input_shape(metadata['preprocess']) or input_shape_of(cfg)
    train_form = copy.deepcopy(model) if verify else None  # build_onnx fuses
    graph, info = build_onnx(model, shape, dynamic=dynamic, metadata=metadata)
    report = dict(info, shape=tuple(shape), metadata=metadata, check=None, images=None)
    if info['torch_convs'] != info['onnx_convs']:
        raise ArtefactCheckFailed(
            f'the graph has {info["onnx_convs"]} convolutions and the fused model '
            f'{info["torch_convs"]}: some branch structure was not fused. Nothing written.'
        )
    if verify:
        images, source = check_images(cfg, shape, num_images)
        check = verify_onnx(train_form, graph, images, score_thr=score_thr)
        report.update(check=check, images=source)
        if not check['passed']:
            raise ArtefactCheckFailed(
                f'onnxruntime and PyTorch disagree on {source}: '
                f'{describe(check, "the graph")}. Nothing written.'
            )
    with atomic_file(out) as f:
        f.write(graph)
    return report
