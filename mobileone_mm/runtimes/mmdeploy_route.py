"""mmdeploy 1.3.1 (the OpenMMLab route to ONNX Runtime, TensorRT, OpenVINO, ncnn) on
torch >= 2.9, for models with a MobileOne backbone.

torch 2.9 made ``torch.onnx.export`` default to ``dynamo=True``: the torch.export-based
exporter, which imports onnxscript and does not use the TorchScript-exporter symbolics
that mmdeploy's rewriters emit (its ONNX NonMaxSuppression, for one). mmdeploy 1.3.1 calls
``torch.onnx.export`` without ``dynamo``, so its ``torch2onnx`` stops with
``ModuleNotFoundError: No module named 'onnxscript'`` (and with onnxscript installed it
would trace another graph). ``torchscript_onnx_export()`` makes ``dynamo=False`` the
default while it is entered and restores ``torch.onnx.export`` on exit; nothing is changed
on import. It patches this process only: mmdeploy's ``tools/deploy.py`` runs torch2onnx
in a child process, which the patch does not reach; ``export_end2end`` runs it here.
``export_and_test`` is tools/mmdeploy_export.py: the export and, when asked, the test
set's metrics of the ONNX model (``evaluate_backend``), in one call.

mmdeploy fuses the backbone (its ``build_pytorch_model`` calls
``backbone.switch_to_deploy()``) and its ``BaseDenseHead.predict_by_feat`` rewriter
handles ``mobileone_mm.SSDHead`` (a subclass of mmdet's). Its checkpoint load is
mmengine's non-strict one (another model's checkpoint would leave random weights):
``export_end2end`` loads the checkpoint with this package's loader first and hands
mmdeploy only the weights that passed. mmdeploy is imported only by
the functions that use it (an optional extra: ``pip install mobileone-mm[mmdeploy]``).
"""

import contextlib
import copy
import functools
import inspect
import os
import tempfile
from typing import Iterator, Optional, Union

import numpy as np
import torch

from ..checkpoints.formats import is_fused
from ..checkpoints.io import atomic_file, state_dict_of
from ..checkpoints.marks import ONNX_MARK
from ..checkpoints.paths import check_extension, check_input_file, plan_outputs
from ..loading.checkpoint import load_model
from ..loading.config import DeployError, codebase_of, deploy_config, load_config, read_config
from ..machine import check_device

DEPLOY_KEYS = ('onnx_config', 'codebase_config', 'backend_config')  # what mmdeploy reads


TASKS = dict(mmdet='detection', mmseg='segmentation', mmpretrain='classification')


@contextlib.contextmanager
def torchscript_onnx_export() -> Iterator[None]:
    """Within the block, ``torch.onnx.export`` uses the TorchScript exporter unless the
    caller passes ``dynamo`` itself. Restored on exit, also after an error; a no-op on a
    torch whose ``torch.onnx.export`` has no ``dynamo`` argument."""
    original = torch.onnx.export
    if 'dynamo' not in inspect.signature(original).parameters:
        yield
        return

    @functools.wraps(original)
    def export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return original(*args, **kwargs)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = original


def check_configs(deploy_cfg: str, model_cfg: str):
    """DeployError naming the fix unless ``deploy_cfg`` is an mmdeploy deploy config (it
    has onnx_config, codebase_config and backend_config) for the codebase of the model
    config ``model_cfg`` (both read as ``reparameterize.read_config`` reads them)."""
    deploy = read_config(deploy_cfg, 'Deploy config')
    missing = [key for key in DEPLOY_KEYS if key not in deploy]
    if missing:
        kind = (
            'a model config (it has a model)'
            if 'model' in deploy
            else 'not an mmdeploy deploy config'
        )
        raise DeployError(
            f'Deploy config {deploy_cfg!r} is {kind}, without '
            f'{", ".join(missing)}: the deploy config comes first '
            f'(DEPLOY_CFG CONFIG CHECKPOINT OUT); use one of '
            f'configs/mmdeploy/*.py.'
        )
    codebase = codebase_of(load_config(model_cfg))
    wanted = deploy.codebase_config.get('type')
    if wanted != codebase:
        raise DeployError(
            f'Deploy config {deploy_cfg!r} is for {wanted} models '
            f'(codebase_config.type) but {model_cfg!r} is an {codebase} '
            f'model: use a {TASKS[codebase]} deploy config '
            f'(configs/mmdeploy/{TASKS[codebase]}_*.py).'
        )


def export_end2end(
    deploy_cfg: str,
    model_cfg: str,
    checkpoint: str,
    out: str,
    image: Union[str, np.ndarray, None] = None,
    device: str = 'cpu',
) -> str:
    """mmdeploy's ``torch2onnx`` for a trained checkpoint (train or deploy form; mmdeploy
    fuses it): writes ``out`` (mmdeploy's end2end.onnx, with our mark in its metadata:
    checkpoints.paths.ONNX_MARK) atomically and returns its path. ``out`` is checked first
    (checkpoints.paths.plan_outputs: a new file or one our tools wrote).

    The checkpoint is loaded as every tool loads one (``reparameterize.load_model``: the
    safe loader, weights checked, strict: CheckpointError naming the keys of another
    model's checkpoint) before mmdeploy sees it. mmdeploy's own load is not strict, so it
    is handed only what passed: the weights as loaded, in a temporary file, and the
    config of the form they fit (the deploy form for a fused checkpoint).

    ``image`` is what the export traces (a path or an HxWx3 BGR uint8 array); by default a
    grey image of the deploy config's static input shape, else 320x320. The configs
    (``check_configs``) and the device (``machine.check_device``) are checked first.
    """
    check_configs(deploy_cfg, model_cfg)
    device = check_device(device)
    import onnx
    from mmdeploy.apis import torch2onnx
    from mmdeploy.utils import get_input_shape
    from mmdeploy.utils import load_config as load_configs

    plan_outputs(
        inputs={'deploy config': deploy_cfg, 'config': model_cfg, 'checkpoint': checkpoint},
        outputs={'ONNX model': out},
    )
    model, cfg, ckpt = load_model(model_cfg, checkpoint)
    if is_fused(state_dict_of(ckpt)):
        cfg = deploy_config(cfg)
    if image is None:
        width, height = get_input_shape(load_configs(deploy_cfg)[0]) or (320, 320)
        image = np.full((height, width, 3), 128, np.uint8)
    with tempfile.TemporaryDirectory() as work_dir, torchscript_onnx_export():
        weights = os.path.join(work_dir, 'checkpoint.pth')
        torch.save(dict(state_dict=model.state_dict()), weights)
        del model
        torch2onnx(image, work_dir, 'end2end.onnx', deploy_cfg, cfg, weights, device=device)
        graph = onnx.load(os.path.join(work_dir, 'end2end.onnx'))
        graph.metadata_props.add(key=ONNX_MARK[0], value=ONNX_MARK[1])
        with atomic_file(out) as dst:
            dst.write(graph.SerializeToString())
    return out


def build_backend_model(deploy_cfg: str, model_cfg: str, onnx_file: str, device: str = 'cpu'):
    """(mmdeploy's task processor, its backend model for ``onnx_file``): the model takes
    the codebase's data batches (``test_step``) and returns its data samples."""
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config as load_configs

    check_configs(deploy_cfg, model_cfg)
    device = check_device(device)
    deploy, model = load_configs(deploy_cfg, model_cfg)
    processor = build_task_processor(model, deploy, device)
    backend_model = processor.build_backend_model(
        [onnx_file], data_preprocessor_updater=processor.update_data_preprocessor
    )
    return processor, backend_model


def evaluate_backend(
    deploy_cfg: str,
    model_cfg: str,
    onnx_file: str,
    work_dir: str,
    batch_size: Optional[int] = 1,
    device: str = 'cpu',
):
    """(backend model, its metrics on the model config's test set), computed by
    mmdeploy's test runner as mmdeploy's ``tools/test.py`` does: batches of 1 by default
    (a static graph takes one image), ``None`` for the config's batch size."""
    processor, backend_model = build_backend_model(deploy_cfg, model_cfg, onnx_file, device)
    dataloader = copy.deepcopy(processor.model_cfg.test_dataloader)
    if batch_size:
        dataloader.batch_size = batch_size
    runner = processor.build_test_runner(backend_model, work_dir, dataloader=dataloader)
    return backend_model, runner.test()


def export_and_test(
    deploy_cfg: str,
    model_cfg: str,
    checkpoint: str,
    out: str,
    image: Optional[str] = None,
    test_work_dir: Optional[str] = None,
    device: str = 'cpu',
) -> Optional[dict]:
    """tools/mmdeploy_export.py: ``export_end2end`` and, with ``test_work_dir``, the ONNX
    model's metrics on the model config's test set (``evaluate_backend``, its logs in
    ``test_work_dir``), which it returns (None without). Every input file (PathError
    naming it), the output (an .onnx file, planned by ``checkpoints.paths.plan_outputs``)
    and the work folder are checked before any work."""
    inputs = {
        'deploy config': deploy_cfg,
        'config': model_cfg,
        'checkpoint': checkpoint,
        'image': image,
    }
    for what, path in inputs.items():
        if path is not None:
            check_input_file(path, what)
    plan_outputs(
        inputs=inputs,
        outputs={'ONNX model': out},
        folders={'work dir (--work-dir)': test_work_dir},
    )
    check_extension(out, ['.onnx'], 'ONNX output')
    export_end2end(deploy_cfg, model_cfg, checkpoint, out, image, device)
    if test_work_dir is None:
        return None
    return evaluate_backend(deploy_cfg, model_cfg, out, test_work_dir, device=device)[1]
