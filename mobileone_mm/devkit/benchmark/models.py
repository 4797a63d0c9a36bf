"""What the benchmark times, built with random weights (nothing is downloaded: latency does
not depend on them; the output checks use realistic BN statistics): backbones in every
form beside timm's, mmpretrain's and mmdet's, dilated backbones, int8, whole models, the
photo-to-boxes paths and a training step."""

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from mobileone_mm import MobileOne, atrous_settings, optimize_for_inference, reparameterize_model

from ..analysis import randomize_bn

REPO = Path(__file__).resolve().parents[3]  # mobileone_mm/devkit/benchmark/ -> the checkout
WHOLE_MODEL_CONFIGS = dict(
    ssdlite='configs/detection/ssdlite_mobileone-s0_8xb24-600e_coco.py',
    rtmdet='configs/detection/rtmdet_mobileone-s0_8xb32-300e_coco.py',
    deeplabv3='configs/segmentation/deeplabv3_mobileone-s0-d8_4xb4-160k_ade20k-512x512.py',
    classifier_s0='configs/classification/mobileone-s0_8xb32_in1k.py',
    classifier_s1='configs/classification/mobileone-s1_8xb32_in1k.py',
)
INT8_CALIBRATION = 4  # random inputs: latency does not depend on them


def realistic_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine values of a trained model's order of magnitude, so that
    activations neither vanish nor blow up through 20+ random blocks."""
    return randomize_bn(
        model, seed, mean_std=0.1, var_range=(1.0, 3.0), gamma_range=(0.25, 0.75), beta_std=0.1
    )


def build_backbones(
    arch: str, example: torch.Tensor, with_mobilenetv2: bool = False, int8: bool = False
) -> Dict[str, dict]:
    """name -> dict(fn, module) for one arch: our train / fused / optimized forms and
    mmpretrain's fused MobileOne on the same weights, timm's fused MobileOne,
    (``with_mobilenetv2``) mmdet's MobileNetV2 as mmdet builds it and with BN folded, and
    (``int8``) ours in int8 (``build_int8``)."""
    import timm
    import timm.utils
    from mmpretrain.models.backbones import MobileOne as MMPretrainMobileOne

    peer = realistic_bn(MMPretrainMobileOne(arch, out_indices=(3,)))
    peer.eval()  # mmpretrain's train() returns None
    ours = MobileOne(arch, out_indices=(3,)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    peer.switch_to_deploy()
    fused = reparameterize_model(copy.deepcopy(ours))
    optimized = optimize_for_inference(fused, example)
    timm_model = timm.create_model(
        f'mobileone_{arch}', pretrained=False, num_classes=0, global_pool=''
    )
    timm_model = timm.utils.reparameterize_model(realistic_bn(timm_model).eval())
    models = dict(
        ours_train=dict(fn=ours, module=ours),
        ours_fused=dict(fn=fused, module=fused),
        ours_optimized=dict(
            fn=optimized,
            module=fused,
            backend=optimized.backend,
            rel_diff=optimized.check.get('rel_diff'),
        ),
        timm_fused=dict(fn=timm_model.forward_features, module=timm_model),
        mmpretrain_fused=dict(fn=peer, module=peer),
    )
    if int8:
        models['ours_int8'] = build_int8(fused, example)
    if with_mobilenetv2:
        from mmcv.cnn import fuse_conv_bn
        from mmdet.models.backbones import MobileNetV2

        mobilenet = realistic_bn(MobileNetV2(out_indices=(7,)))
        mobilenet.eval()
        folded = fuse_conv_bn(copy.deepcopy(mobilenet))
        models.update(
            mobilenetv2=dict(fn=mobilenet, module=mobilenet),
            mobilenetv2_folded=dict(fn=folded, module=folded),
        )
    return models


def build_dilated(arch: str, example: torch.Tensor) -> Dict[str, dict]:
    """Our fused backbone at output strides 32 / 16 / 8, and the optimized OS16 / OS8."""
    models = {}
    for os_ in (32, 16, 8):
        backbone = realistic_bn(MobileOne(arch, out_indices=(3,), **atrous_settings(os_))).eval()
        fused = reparameterize_model(backbone)
        models[f'ours_fused_os{os_}'] = dict(fn=fused, module=fused)
        if os_ != 32:
            optimized = optimize_for_inference(fused, example)
            models[f'ours_optimized_os{os_}'] = dict(
                fn=optimized,
                module=fused,
                backend=optimized.backend,
                rel_diff=optimized.check.get('rel_diff'),
            )
    return models


def build_int8(fused: nn.Module, example: torch.Tensor) -> dict:
    """``optimize_for_inference(precision='int8')`` of a fused model (onnxruntime, static
    QDQ), calibrated on random inputs of the example's shape (latency does not depend on
    them; int8 accuracy on real data: docs/int8.md), with the cosine similarity of its
    outputs to float32 on the example."""
    from ...runtimes.int8_check import judge_int8

    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(example.shape, generator=generator) for _ in range(INT8_CALIBRATION)]
    int8 = optimize_for_inference(
        fused, example, precision='int8', calibration=calibration, verify=False
    )
    with torch.no_grad():
        expected = [t.numpy() for t in pytree.tree_flatten(fused(example))[0]]
    check = judge_int8([expected], [int8.run(example)])
    return dict(fn=int8, module=fused, backend='onnxruntime int8', cosine=check['cosine'])


def random_fused_model(name: str) -> tuple:
    """(config, model): the WHOLE_MODEL_CONFIGS model with a fused MobileOne, random
    weights (the config's init_cfg removed) and realistic BN statistics, in eval mode."""
    cfg, model = random_model(name)
    return cfg, reparameterize_model(model)


def random_model(name: str, backbone_type: Optional[str] = None) -> tuple:
    """``random_fused_model`` before fusion; ``backbone_type``: another registry's MobileOne
    in the config's place ('mmpretrain.MobileOne': the classifiers' peer)."""
    from mmengine.logging import MMLogger

    from ...loading.config import build_model, load_config

    cfg = load_config(str(REPO / WHOLE_MODEL_CONFIGS[name]))
    cfg.model.backbone.init_cfg = None  # nothing can be downloaded
    if backbone_type:
        cfg.model.backbone.type = backbone_type
    model, _ = build_model(cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return cfg, realistic_bn(model).eval()


def build_whole_model(name: str, size: int, threads: int, workdir: str) -> Dict[str, dict]:
    """``random_fused_model(name)``: its tensor forward in PyTorch, optimize_for_inference
    of it in fp32 and in int8, and onnxruntime on the graph ``export_onnx`` writes
    (normalisation and, for the detectors, box decoding included)."""
    from ...runtimes.onnx_graphs import export_onnx, load_session

    _, model = random_fused_model(name)
    example = torch.randn(1, 3, size, size)
    optimized = optimize_for_inference(model, example)
    path = os.path.join(workdir, f'{name}_{size}.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of shape checks
        export_onnx(model, path, (size, size))
    session, _ = load_session(path, threads)
    return dict(
        pytorch_fused=dict(fn=model, module=model),
        optimized=dict(
            fn=optimized,
            module=model,
            backend=optimized.backend,
            rel_diff=optimized.check.get('rel_diff'),
        ),
        onnxruntime_export=dict(fn=lambda x: session.run(None, {'image': x.numpy()}), module=model),
        int8=build_int8(model, example),
    )


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth H x W x 3 uint8 BGR picture (blurred noise): what the timing sees is a
    photo's size, not its content."""
    import cv2

    noise = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3))
    return cv2.resize(noise.astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)


def build_photo_to_boxes(threads: int, workdir: str) -> tuple:
    """SSDLite-S0 (``random_fused_model``) from a photo as mmcv reads it to boxes in the
    photo's pixels, per image, pre- and post-processing included: mmdet's
    ``inference_detector`` on the fused model (eager PyTorch, mmdet's pipeline and
    post-process), and onnx_infer's path (``predict.prediction``: the test pipeline in numpy,
    onnxruntime, the numpy post-process) on the ``export_onnx`` graph in fp32 and
    quantized to int8 (``quantize_graph``, random calibration: timing only). Returns
    (the fused model, its input (H, W), path name -> photo -> detections)."""
    from mmdet.apis import inference_detector

    from ...predict.metadata import export_metadata, fixed_input_shape
    from ...predict.prediction import predict
    from ...runtimes.onnx_graphs import export_onnx, load_onnx
    from ...runtimes.onnxruntime_int8 import quantize_graph

    cfg, model = random_fused_model('ssdlite')
    model.cfg = cfg  # inference_detector builds the test pipeline from it
    metadata = export_metadata(cfg, {}, model)
    shape = fixed_input_shape(metadata['preprocess'])
    fp32_path, int8_path = (os.path.join(workdir, f'ssdlite_{p}.onnx') for p in ('fp32', 'int8'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings of shape checks
        export_onnx(model, fp32_path, shape, metadata=metadata)
    rng = np.random.default_rng(0)
    calibration = [
        rng.uniform(0, 255, (1, 3, *shape)).astype(np.float32) for _ in range(INT8_CALIBRATION)
    ]
    with open(fp32_path, 'rb') as f:
        int8_graph = quantize_graph(f.read(), calibration)
    with open(int8_path, 'wb') as f:  # a temporary folder: nobody else reads it
        f.write(int8_graph)
    fp32, int8 = (load_onnx(path, threads) for path in (fp32_path, int8_path))
    return (
        model,
        shape,
        dict(
            mmdet_eager=lambda photo: inference_detector(model, photo),
            onnxruntime_fp32=lambda photo: predict(*fp32, photo),
            onnxruntime_int8=lambda photo: predict(*int8, photo),
        ),
    )


def train_step(model: nn.Module) -> Callable:
    """One forward + backward of a train-mode model (gradients reset first)."""

    def step(x):
        model.zero_grad(set_to_none=True)
        outputs = model(x)
        sum(o.mean() for o in outputs).backward()

    return step
