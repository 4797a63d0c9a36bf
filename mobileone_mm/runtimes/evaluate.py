"""Exported graphs (float32 or int8) on a config's data sets, as they run deployed, and
the config-level int8 quantization of tools/quantize.py (``quantize_checkpoint``; planned,
checked and written in one call by ``quantize_to_file``):

* ``graph_images``: images of the config's train or val set as the graph takes them,
  the photo read and put through the config's test pipeline as tools/onnx_infer.py does
  (``predict.preprocess``, the steps in the graph's metadata): calibration data for int8;
* ``evaluate_graph``: the graph (an onnxruntime session, or any runtime's Runner) on
  every val image through the same path (``predict.predict``: results in the photo's
  frame, as the codebases' inferencers give them), scored by the config's own
  ``val_evaluator`` (mmdet's CocoMetric, mmseg's IoUMetric, mmpretrain's Accuracy ...)
  against the val set's annotations; ``evaluate_artefact``: the same for an artefact
  file of tools/export.py.
"""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoints.io import atomic_file
from ..checkpoints.paths import check_extension, plan_outputs
from ..loading.checkpoint import load_model
from ..loading.config import DeployError, codebase_of, input_shape_of, load_config, registry_of
from ..loading.data import dataset_of
from ..predict.metadata import export_metadata, fixed_input_shape
from ..predict.photos import preprocess, read_photo
from ..predict.prediction import graph_input_shape, predict
from .common import load_runner
from .int8_check import describe_int8, judge_int8
from .onnx_graphs import build_onnx, load_session
from .onnxruntime_int8 import (
    Int8CheckFailed,
    layer_sensitivity,
    output_layers,
    quantize_graph,
)


def graph_images(
    cfg, meta: dict, session, split: str = 'train', num_images: int = 16
) -> List[np.ndarray]:
    """The first ``num_images`` images of ``split`` (fewer when the set is smaller) as the
    graph behind ``session`` takes them: (1, 3, H, W) float32 BGR 0..255, the photo put
    through the test pipeline of the graph's metadata."""
    return dataset_images(
        cfg, meta.get('preprocess'), graph_input_shape(session), split, num_images
    )


def dataset_images(
    cfg,
    steps: Optional[List[dict]],
    shape: Optional[Sequence[int]],
    split: str = 'train',
    num_images: int = 16,
) -> List[np.ndarray]:
    """``graph_images`` for any exported model: the photos through the test pipeline
    ``steps`` (metadata ``preprocess``), resized to ``shape`` (H, W) where that is fixed."""
    if not (isinstance(num_images, int) and num_images >= 1):
        raise DeployError(
            f'The number of images must be a whole number of at least 1, got {num_images!r}.'
        )
    dataset = dataset_of(cfg, split)
    images = []
    for index in range(min(num_images, len(dataset))):
        photo = read_photo(dataset.get_data_info(index)['img_path'])
        image, _ = preprocess(photo, steps, None if shape is None else tuple(shape))
        images.append(image.transpose(2, 0, 1)[None].astype(np.float32))
    return images


def _with_prediction(sample, prediction):
    """The dataset's data sample with the prediction set as the codebase's model sets it."""
    if prediction.task == 'detection':
        from mmengine.structures import InstanceData

        sample.pred_instances = InstanceData(
            bboxes=torch.from_numpy(np.asarray(prediction.boxes, np.float32)),
            scores=torch.from_numpy(np.asarray(prediction.scores, np.float32)),
            labels=torch.from_numpy(np.asarray(prediction.labels, np.int64)),
        )
    elif prediction.task == 'segmentation':
        from mmengine.structures import PixelData

        sample.pred_sem_seg = PixelData(data=torch.from_numpy(prediction.label_map)[None])
    else:
        scores = torch.from_numpy(prediction.scores)
        sample.set_pred_score(scores).set_pred_label(scores.argmax(-1, keepdim=True))
    return sample


def evaluate_graph(
    cfg, runner, meta: Optional[dict] = None, num_images: Optional[int] = None
) -> dict:
    """The config's ``val_evaluator`` metrics of an exported model on the val set (the
    first ``num_images`` images; all by default). ``runner``: an onnxruntime session of
    a graph, with its export metadata ``meta``, or any runtime's Runner (``runtimes.
    load_runner``: OpenVINO, ExecuTorch, ncnn ...), whose own metadata is the default."""
    from mmengine.evaluator import Evaluator

    meta = runner.metadata if meta is None else meta
    dataset = dataset_of(cfg, 'val')
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    registry_of(codebase_of(cfg), 'METRICS')  # the codebase's scope, for its metrics
    evaluator = Evaluator(cfg.val_evaluator)
    evaluator.dataset_meta = dataset.metainfo
    for index in range(count):
        data = dataset[index]
        sample = data['data_samples']
        prediction = predict(runner, meta, read_photo(sample.img_path))
        evaluator.process(
            [_with_prediction(sample, prediction)],
            dict(inputs=[data['inputs']], data_samples=[sample]),
        )
    return evaluator.evaluate(count)


def evaluate_artefact(
    config, path: str, num_images: Optional[int] = None, threads: Optional[int] = None
) -> dict:
    """``evaluate_graph`` of the artefact ``path`` of any runtime that runs here
    (tools/export.py's .onnx, .xml, .pte, .ncnn.param; the runtime picked by the file
    name), run with ``threads`` threads, on the val set of ``config`` (a file or Config)."""
    return evaluate_graph(load_config(config), load_runner(path, threads=threads), None, num_images)


def one_batch(outputs: List[list]) -> List[list]:
    """Per-image outputs as the outputs of one batch (concatenated along the batch axis)
    when all images had one size: the int8 check's cosine then covers all images' values
    together, not the few logits of one image."""
    if len({tuple(tuple(np.shape(t)) for t in out) for out in outputs}) != 1:
        return outputs
    return [[np.concatenate(arrays) for arrays in zip(*outputs)]]


def quantize_checkpoint(
    config,
    checkpoint: str,
    calib_images: int = 32,
    calib_split: str = 'train',
    method: str = 'minmax',
    shape: Optional[Sequence[int]] = None,
    dynamic: bool = False,
    check_images: int = 8,
    float_layers: int = 0,
    evaluate: bool = False,
) -> Tuple[bytes, dict]:
    """tools/quantize.py: a trained model's int8 ONNX graph and what was measured.

    The float32 graph is the one tools/export_onnx.py writes (``build_onnx`` with
    ``export_metadata``: same input, outputs and metadata); it is quantized
    (``quantize.quantize_graph``, the heads' last layers kept float) after calibration on
    ``calib_images`` images of the ``calib_split`` set (``graph_images``). The int8 graph
    is checked against the float32 one on the first ``check_images`` val images (the
    calibration images when the val set is not on disk) with ``quantize.judge_int8``;
    QuantizeError when it fails. With ``evaluate``, both graphs are scored on the val set
    by the config's own metric (``evaluate_graph``). ``float_layers``: besides the heads'
    last layers, keep that many more layers float, the ones int8 hurts most
    (``quantize.layer_sensitivity`` on 8 of the calibration images).

    Returns (int8 graph, report: task, shape, class-name source, calibration, float
    nodes, check, metrics)."""
    model, cfg, ckpt = load_model(config, checkpoint)
    metadata = export_metadata(cfg, ckpt, model, os.fspath(config))
    shape = tuple(shape or fixed_input_shape(metadata['preprocess']) or input_shape_of(cfg))
    graph, info = build_onnx(model, shape, dynamic=dynamic, metadata=metadata)
    session, meta = load_session(graph)
    calibration = graph_images(cfg, meta, session, calib_split, calib_images)
    keep = output_layers(graph)
    if float_layers:
        ranking = layer_sensitivity(graph, calibration, calibration[:8], method)
        keep += [node for node, _ in ranking if node not in keep][:float_layers]
    int8 = quantize_graph(graph, calibration, method=method, keep_float=keep)
    session8, meta8 = load_session(int8)
    try:
        inputs, source = graph_images(cfg, meta, session, 'val', check_images), 'val'
    except DeployError:
        inputs, source = calibration[:check_images], calib_split
    check = judge_int8(
        one_batch([session.run(None, {'image': x}) for x in inputs]),
        one_batch([session8.run(None, {'image': x}) for x in inputs]),
        meta['task'],
        meta,
    )
    report = dict(
        task=meta['task'],
        shape=shape,
        notes=metadata['notes'],
        classes_source=metadata['classes_source'] or 'none, class numbers shown',
        calibration=f'{len(calibration)} {calib_split} images, {method}',
        float_nodes=keep,
        check=check,
        check_images=f'{len(inputs)} {source} images',
    )
    if not check['passed']:
        raise Int8CheckFailed(
            describe_int8(check) + f' on {report["check_images"]}. Nothing '
            f'written. Calibrate on more images, or on the other split.'
        )
    if evaluate:
        report['fp32'] = evaluate_graph(cfg, session, meta)
        report['int8'] = evaluate_graph(cfg, session8, meta8)
    return int8, report


def quantize_to_file(config, checkpoint: str, out: str, **options) -> dict:
    """tools/quantize.py: ``quantize_checkpoint`` (``options`` are its keyword arguments)
    written to ``out``. ``out`` is checked before any work (an .onnx file, planned by
    ``checkpoints.paths.plan_outputs``: never over an input or a file our tools did not
    write); the int8 graph is written atomically, and only when it passed the int8
    check (Int8CheckFailed otherwise: nothing written). Returns ``quantize_checkpoint``'s
    report."""
    check_extension(out, ['.onnx'], 'ONNX output')
    plan_outputs(inputs={'config': config, 'checkpoint': checkpoint}, outputs={'ONNX model': out})
    graph, report = quantize_checkpoint(config, checkpoint, **options)
    with atomic_file(out) as f:
        f.write(graph)
    return report
