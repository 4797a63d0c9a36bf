"""The ExecuTorch runtime (mobileone_mm/runtimes/executorch.py): ``.pte`` programs with the
XNNPACK delegate, run by ExecuTorch's own Python runtime and held to the float64 train
form by the project's one output check (fp32) or to float32 by the int8 check, on the
tiny detector / segmentor / classifier with random weights and realistic BN statistics.
"""
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip('executorch', reason="the executorch extra is not installed: pip "
                    "install 'mobileone-mm[executorch]'")
pytest.importorskip('torchao', reason="the executorch extra is not installed: pip "
                    "install 'mobileone-mm[executorch]'")

from mobileone_mm.deploy.export import WRAPPERS, ExportError, build_onnx  # noqa: E402
from mobileone_mm.deploy.predict import PredictError, read_image  # noqa: E402
from mobileone_mm.deploy.quantize import QuantizeError, judge_int8  # noqa: E402
from mobileone_mm.deploy.reparameterize import build_model, load_config  # noqa: E402
from mobileone_mm.deploy.verify import Reference, _float_outputs, describe  # noqa: E402
from mobileone_mm.models.reparam import reparameterize_model  # noqa: E402
from mobileone_mm.runtimes import executorch as runtime  # noqa: E402
from photos import photo_paths  # noqa: E402  (tests/ on the path: conftest.py)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    'detection': 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
    'segmentation':
    'configs/segmentation/deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
    'classification': 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py',
}
SHAPE = (64, 96)  # (H, W): non-square, so that a swap of height and width shows


# ------------------------------------------------------------ a small model, fast
class Head(nn.Module):
    def __init__(self, op=None):
        super().__init__()
        self.fc, self.op = nn.Linear(8, 5), op

    def forward(self, x):
        x = x.mean((2, 3))
        return self.fc(x if self.op is None else self.op(x))


class SmallClassifier(nn.Module):
    """What an export wrapper looks like to the runtime: BGR 0..255 in, logits out, the
    normalisation inside."""
    output_names = ['logits']

    def __init__(self, op=None):
        super().__init__()
        self.register_buffer('mean', torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = Head(op)

    def forward(self, img):
        return self.head(self.conv((img[:, [2, 1, 0]] - self.mean) / 58.0).relu())


def small_metadata():
    return dict(task='classification', input_shape=list(SHAPE), dynamic=False,
                classes=['disk', 'square', 'triangle', 'star', 'ünïcode'],
                preprocess=[dict(op='resize', size=[96, 64], keep_ratio=False,
                                 interpolation='bilinear', backend='cv2')],
                config='configs/x.py', notes=[], score_thr=0.3)


def test_program_keeps_metadata_outputs_and_input_shape(tmp_path):
    torch.manual_seed(0)
    model = SmallClassifier().eval()
    example = torch.rand(1, 3, *SHAPE) * 255
    out = tmp_path / 'model.pte'
    assert runtime.export(model, example, str(out), small_metadata()) == [str(out)]
    assert sorted(os.listdir(tmp_path)) == ['model.pte']  # one file: metadata inside
    runner = runtime.load(str(out), threads=1)
    assert runner.metadata == small_metadata()
    assert runner.input_shape == SHAPE
    image = np.random.RandomState(0).randint(0, 256, (1, 3, *SHAPE)).astype(np.float32)
    (logits, ) = runner(image)
    with torch.no_grad():
        expected = model(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(PredictError, match=r'takes a float32 image \(1, 3, 64, 96\).*'
                                           r'\(1, 3, 96, 64\)'):
        runner(image.transpose(0, 1, 3, 2))


def test_foreign_and_broken_programs_are_refused(tmp_path):
    from executorch.exir import to_edge_transform_and_lower
    example = torch.rand(1, 3, *SHAPE)
    plain = tmp_path / 'plain.pte'  # an ExecuTorch program not exported by us
    plain.write_bytes(to_edge_transform_and_lower(torch.export.export(
        SmallClassifier().eval(), (example, ))).to_executorch().buffer)
    with pytest.raises(PredictError, match='no mobileone-mm metadata'):
        runtime.load(str(plain))
    junk = tmp_path / 'junk.pte'
    junk.write_bytes(b'not a program' * 10)
    with pytest.raises(PredictError, match='not a readable ExecuTorch program'):
        runtime.load(str(junk))
    segmentation = tmp_path / 'seg.pte'  # a classifier's one output, labelled otherwise
    runtime.export(SmallClassifier().eval(), example, str(segmentation),
                   dict(small_metadata(), task='segmentation'))
    with pytest.raises(PredictError, match="1 outputs for task 'segmentation'"):
        runtime.load(str(segmentation))


@pytest.mark.parametrize('op, operator, reason', [
    (lambda x: x.sort(-1)[0], 'aten::sort.values', 'no kernel for it'),
    (lambda x: x.cumprod(-1), 'aten.cumprod.default', 'not in the Core ATen operator set'),
])
def test_operator_the_runtime_cannot_take_names_it_and_its_layer(tmp_path, op, operator,
                                                                 reason):
    out = tmp_path / 'sub' / 'model.pte'
    with pytest.raises(ExportError, match=rf"^The executorch runtime cannot take the "
                                          rf"operator {operator} in layer 'head' \({reason}"):
        runtime.export(SmallClassifier(op).eval(), torch.rand(1, 3, *SHAPE), str(out),
                       small_metadata())
    assert not out.parent.exists() or os.listdir(out.parent) == []  # nothing left


def test_bad_precision_and_calibration_are_refused(tmp_path):
    model, example = SmallClassifier().eval(), torch.rand(1, 3, *SHAPE)
    out = tmp_path / 'model.pte'
    with pytest.raises(ExportError, match="takes precision fp32 or int8, not 'fp16'"):
        runtime.export(model, example, str(out), small_metadata(), precision='fp16')
    with pytest.raises(QuantizeError, match='No calibration images'):
        runtime.export(model, example, str(out), small_metadata(), precision='int8')
    with pytest.raises(QuantizeError, match=r'shape \(1, 3, 32, 32\)'):
        runtime.export(model, example, str(out), small_metadata(), precision='int8',
                       calibration=[np.zeros((1, 3, 32, 32), np.float32)])
    assert os.listdir(tmp_path) == []
