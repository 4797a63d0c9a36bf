"""ONNX export of each task, checked in onnxruntime against the PyTorch model."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_CONFIGS

from mobileone_mm.loading.config import build_model, load_config
from mobileone_mm.predict.detections import postprocess_detections
from mobileone_mm.runtimes.artefact_check import verify_onnx
from mobileone_mm.runtimes.onnx_graphs import export_onnx

CONFIGS = TINY_CONFIGS


def images(count=2, shape=(96, 96)):
    rng = np.random.RandomState(0)
    return [rng.randint(0, 256, (1, 3, *shape)).astype(np.float32) for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize('task', list(CONFIGS))
def test_export_matches_pytorch(task, tmp_path, randomize_bn):
    model, _ = build_model(load_config(str(REPO / CONFIGS[task])))
    model.init_weights()
    randomize_bn(model)
    info = export_onnx(
        model.eval(), str(tmp_path / 'model.onnx'), (96, 96), metadata=dict(classes=['a', 'b'])
    )
    assert info['task'] == task
    assert not any(hasattr(m, 'branch_conv_list') for m in model.modules())  # fused
    assert info['onnx_convs'] == info['torch_convs'] > 20
    # a random detector's scores sit near 1 / (classes + 1): compare the likely ones
    report = verify_onnx(model, str(tmp_path / 'model.onnx'), images(), score_thr=0.21)
    assert report['passed'], report
    if task == 'detection':
        assert report['detections'] > 0 and report['unmatched'] == 0
    else:
        assert report['logits_rel_diff'] <= 1e-4


def test_dynamic_segmentor_takes_other_sizes(tmp_path):
    import onnxruntime as ort

    model, _ = build_model(load_config(str(REPO / CONFIGS['segmentation'])))
    export_onnx(model, str(tmp_path / 'seg.onnx'), (64, 64), dynamic=True)
    session = ort.InferenceSession(str(tmp_path / 'seg.onnx'))
    logits, labels = session.run(None, {'image': np.zeros((2, 3, 96, 80), np.float32)})
    assert logits.shape[0] == 2 and labels.shape == (2, 96, 80)


def test_postprocess_follows_mmdet_steps():
    meta = dict(
        level_sizes=[3, 1],
        score_thr=0.1,
        nms_pre=2,
        min_bbox_size=0,
        iou_threshold=0.5,
        max_per_img=10,
    )
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.05, 0.7], [0.0, 0.6]], np.float32)
    out_boxes, out_scores, labels = postprocess_detections(boxes, scores, meta)
    # level 0 keeps its 2 best pairs (0.9 anchor 0, 0.8 anchor 1), anchor 1 is suppressed
    # by anchor 0 (same class, IoU 0.81); level 1 adds class 1 on anchor 3
    assert out_scores.tolist() == pytest.approx([0.9, 0.6])
    assert labels.tolist() == [0, 1]
    assert torch.equal(torch.from_numpy(out_boxes[1]), torch.tensor([0.0, 0.0, 10.0, 10.0]))


@pytest.mark.slow
def test_export_and_infer_tools(tmp_path):
    model, _ = build_model(load_config(str(REPO / CONFIGS['detection'])))
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    tool = lambda name, *args: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / 'tools' / name), *map(str, args)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    done = tool(
        'export_onnx.py',
        REPO / CONFIGS['detection'],
        checkpoint,
        tmp_path / 'det.onnx',
        '--verify',
        '--num-images',
        2,
        '--score-thr',
        0.21,
    )
    assert done.returncode == 0, done.stderr
    assert 'convs: fused PyTorch 79, ONNX 79' in done.stdout and 'passed True' in done.stdout
    import cv2

    cv2.imwrite(str(tmp_path / 'image.jpg'), images(1)[0][0].transpose(1, 2, 0))
    done = tool(
        'onnx_infer.py',
        tmp_path / 'det.onnx',
        tmp_path / 'image.jpg',
        '--out',
        tmp_path / 'vis.png',
        '--score-thr',
        0.21,
    )
    assert done.returncode == 0, done.stderr
    assert cv2.imread(str(tmp_path / 'vis.png')).shape == (96, 96, 3)  # the photo's size
    done = tool(
        'export_onnx.py', REPO / CONFIGS['detection'], tmp_path / 'missing.pth', tmp_path / 'x.onnx'
    )
    assert done.returncode != 0 and 'does not exist' in done.stderr
