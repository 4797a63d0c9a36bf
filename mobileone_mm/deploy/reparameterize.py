"""Deploy form of trained models: fuse every MobileOne block of an mmdet detector, mmseg
segmentor or mmpretrain classifier, write the deploy checkpoint and config, and check on
real inputs that the outputs did not change.

    result = reparameterize_checkpoint('configs/.../tiny-coco.py', 'work_dirs/epoch_10.pth',
                                       'work_dirs/deploy.pth')
    # -> work_dirs/deploy.pth (meta + fused state_dict) and work_dirs/deploy.py (the same
    #    config with model.backbone.deploy=True), result.rel_diff ~ 1e-7

The codebase (mmdet / mmseg / mmpretrain) comes from the config's ``default_scope`` (or,
without one, from the registry that knows ``model.type``); it is imported only here, so
the rest of the package does not need it.
"""
import copy
import importlib
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_state_dict

from ..checkpoints.formats import is_fused
from ..checkpoints.io import (CHECKPOINT_EXTENSIONS, CheckpointError, check_weights,
                              describe_mismatch, dump_checkpoint, load_checkpoint,
                              state_dict_of)
from ..checkpoints.paths import (CONFIG_MARK, PathError, atomic_files, check_extension,
                                 plan_outputs)
from ..errors import UserError
from ..models.reparam import reparameterize_model
from .export import flatten
from .verify import Reference, describe

CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')


class DeployError(UserError, ValueError):
    """A config / model that cannot be re-parameterized, or outputs that changed."""


@dataclass
class ReparamResult:
    task: str                          # 'mmdet', 'mmseg' or 'mmpretrain'
    already_fused: bool                # the checkpoint was fused: nothing written
    params_train: int                  # parameters of the model in each form
    params_deploy: int
    out_checkpoint: Optional[str] = None
    out_config: Optional[str] = None
    inputs: str = ''                   # what the outputs were compared on
    check: Optional[dict] = None       # the output check (verify.Reference.judge)
    max_abs_diff: Optional[float] = None  # max |deploy - train| (float32 forms)
    output_scale: Optional[float] = None  # max |output| of the train form

    @property
    def rel_diff(self) -> Optional[float]:
        """max |deploy - train| / max |train| over all raw outputs (mode='tensor')."""
        if self.max_abs_diff is None:
            return None
        return self.max_abs_diff / max(self.output_scale, 1e-12)


# ------------------------------------------------------------------ config and model
class ConfigNotFound(DeployError, FileNotFoundError):
    """The config file does not exist."""


CONFIG_EXTENSIONS = ('.py', '.json', '.yaml', '.yml')  # what mmengine's Config reads
_OTHER_FILES = {('.pth', '.pt', '.ckpt', '.tar', '.bin', '.safetensors'): 'a checkpoint',
                ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif'): 'an image',
                ('.onnx', ): 'an ONNX model'}


def check_config_file(path, what: str = 'Config') -> str:
    """``path`` as a string when it is a file with a config's extension, before mmengine
    reads it; else DeployError naming ``what``, the file and the fix: missing
    (ConfigNotFound, also a FileNotFoundError), a folder, another kind of file (a
    checkpoint or a photo: arguments swapped)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigNotFound(f'{what} {path!r} does not exist.')
    if not os.path.isfile(path):
        raise DeployError(f'{what} {path!r} is a folder, not a config file: give the .py '
                          f'file in it.')
    extension = os.path.splitext(path)[1].lower()
    if extension not in CONFIG_EXTENSIONS:
        kind = next((kind for extensions, kind in _OTHER_FILES.items()
                     if extension in extensions), f'a {extension or "extensionless"} file')
        raise DeployError(f'{what} {path!r} is {kind}, not a config '
                          f'({", ".join(CONFIG_EXTENSIONS)}): are the arguments swapped? '
                          f'See the order in --help.')
    return path


def read_config(path, what: str = 'Config') -> Config:
    """The config file at ``path`` read by mmengine. Every way it can fail is a
    DeployError naming ``what``, the file, the problem and the fix: the file checks of
    ``check_config_file``, a syntax error, an exception or a failed import while mmengine
    runs it."""
    path = check_config_file(path, what)
    try:
        cfg = Config.fromfile(path)
        for key in list(cfg.keys()):  # a config with imports is read lazily (mmengine's
            cfg[key]                  # LazyObject): import them now, not at first use
        return cfg
    except SyntaxError as error:  # mmengine names no file: is it this one or a base?
        where = f'{what} {path!r}'
        try:
            with open(path, encoding='utf-8') as f:
                compile(f.read(), path, 'exec')
            where = f'A config that {path!r} inherits (_base_)'
        except SyntaxError:
            pass
        raise DeployError(f'{where} has a syntax error at line {error.lineno}: {error.msg} '
                          f'({(error.text or "").strip()!r}). Fix the file.') from None
    except ImportError as error:  # an import in the file, or custom_imports
        raise DeployError(f'{what} {path!r} (or a config it inherits) imports '
                          f'{_failed_import(error)}: install it, or fix the import or '
                          f'custom_imports.') from error
    except Exception as error:  # noqa: BLE001 - a config is a program: any error is its own
        raise DeployError(f'{what} {path!r} (or a config it inherits) failed while '
                          f'mmengine read it ({type(error).__name__}: {error}). Fix the '
                          f'file.') from error


def _failed_import(error: ImportError) -> str:
    """What could not be imported, in words: the missing module's name when one of the
    chained errors names it (mmengine re-raises them with its own message)."""
    while error is not None:
        name = getattr(error, 'name', None)
        if name is None:
            match = re.search(r"No module named '([^']+)'", str(error))
            name = match and match.group(1)
        if name:
            return f'{name!r}, which is not installed'
        error = error.__cause__ or error.__context__
    return 'a module that cannot be imported'


def load_config(config) -> Config:
    """A Config, or the model config file ``config`` (``read_config``) that has a
    ``model``; else DeployError naming the file and the fix."""
    if isinstance(config, Config):
        return config
    cfg = read_config(config)
    if not isinstance(cfg.get('model'), dict):
        raise DeployError(f'Config {os.fspath(config)!r} has no model (a dict): it is not a '
                          f'model config (a dataset, schedule or deploy config?). Give the '
                          f'config the checkpoint was trained with.')
    return cfg


def codebase_of(cfg: Config) -> str:
    """'mmdet', 'mmseg' or 'mmpretrain', from default_scope, else from model.type."""
    scope = cfg.get('default_scope')
    if scope in CODEBASES:
        return scope
    model_type = cfg.get('model', {}).get('type')
    for codebase in CODEBASES:
        if _registry(codebase, 'MODELS').get(model_type) is not None:
            return codebase
    raise DeployError(f'Cannot tell which codebase the config is for: default_scope is '
                      f'{scope!r} and model type {model_type!r} is in none of '
                      f'{", ".join(CODEBASES)}. Set default_scope in the config.')


def _registry(codebase: str, name: str):
    init_default_scope(codebase)
    return getattr(importlib.import_module(f'{codebase}.registry'), name)


def build_model(cfg: Config) -> Tuple[nn.Module, str]:
    """(model in eval mode on the CPU, codebase), built as mmengine's Runner builds it."""
    codebase = codebase_of(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # the Runner merges it the same way
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    try:
        model = _registry(codebase, 'MODELS').build(model_cfg)
    except (KeyError, ValueError, TypeError) as error:  # a wrong type name or argument
        if isinstance(error, UserError):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise DeployError(f"The config's model cannot be built: {message} Fix the model "
                          f'settings of the config.') from error
    return model.eval(), codebase


def deploy_config(cfg: Config) -> Config:
    """The same config with ``model.backbone.deploy=True``."""
    if not isinstance(cfg.model.get('backbone'), dict):
        raise DeployError(f'The config\'s model ({cfg.model.get("type")}) has no backbone '
                          f'to switch to deploy form.')
    deploy = copy.deepcopy(cfg)
    deploy.model.backbone.deploy = True
    return deploy


def _check_reparameterizable(model: nn.Module, cfg: Config):
    if not any(callable(getattr(m, 'switch_to_deploy', None)) for m in model.modules()):
        backbone = cfg.model.get('backbone', {}).get('type')
        raise DeployError(f'The model ({cfg.model.get("type")} with backbone {backbone}) '
                          f'has no re-parameterizable block: this tool is for models with '
                          f"a MobileOne backbone (type='mobileone_mm.MobileOne').")


def load_strict(model: nn.Module, state_dict: dict, what: str):
    """Load every tensor, or CheckpointError naming the keys and shapes that differ, or
    the first corrupt value (checkpoints.io.check_weights)."""
    check_weights(state_dict, what)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and 'num_batches_tracked' not in k]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k} {tuple(v.shape)} (model {tuple(own[k].shape)})'
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        hint = ''
        if is_fused(state_dict) != is_fused(own):
            hint = (' The checkpoint is in ' + ('deploy' if is_fused(state_dict) else 'train')
                    + ' form and the model in the other one.')
        raise CheckpointError(f'{what} does not fit the model: '
                              f'{describe_mismatch(missing, unexpected, shapes)}.{hint} Is it '
                              f'the checkpoint of another config?')
    load_state_dict(model, state_dict, strict=True)


def load_model(config, checkpoint: str) -> Tuple[nn.Module, Config, dict]:
    """(eval-mode model with the checkpoint loaded strictly, config, checkpoint dict).

    A fused checkpoint is loaded into the deploy form of the config, a train-form one into
    the train form (a deploy config's backbone is switched back for it).
    """
    if not isinstance(config, Config):  # first: a checkpoint given as the config is
        check_config_file(config)       # named so, not read as a checkpoint
    ckpt = load_checkpoint(checkpoint)
    cfg = load_config(config)
    state_dict = state_dict_of(ckpt)
    fused = is_fused(state_dict)
    if not fused and cfg.model.get('backbone', {}).get('deploy'):
        cfg = copy.deepcopy(cfg)
        cfg.model.backbone.deploy = False
    model, _ = build_model(deploy_config(cfg) if fused else cfg)
    _check_reparameterizable(model, cfg)
    load_strict(model, state_dict, f'Checkpoint {checkpoint!r}')
    return model, cfg, ckpt


# ------------------------------------------------------------------------ inputs
def _input_size(cfg: Config) -> int:
    """The square side of the val pipeline's last fixed size (crop or resize), or 224."""
    size = 224
    for transform in cfg.get('val_dataloader', {}).get('dataset', {}).get('pipeline', []):
        scale = transform.get('crop_size', transform.get('scale'))
        if scale is not None:
            size = min(scale) if isinstance(scale, (tuple, list)) else scale
    return size


def input_shape_of(cfg: Config) -> Tuple[int, int]:
    size = _input_size(cfg)
    return size, size


SPLITS = ('train', 'val')


def dataset_of(cfg: Config, split: str):
    """The config's ``{split}_dataloader`` dataset, built by its codebase; DeployError
    naming the split and the reason when the config has none, it is not on disk or empty."""
    if split not in SPLITS:
        raise DeployError(f'Unknown split {split!r}: use one of {SPLITS}.')
    loader = cfg.get(f'{split}_dataloader')
    if not loader:
        raise DeployError(f'The config has no {split}_dataloader.')
    try:
        dataset = _registry(codebase_of(cfg), 'DATASETS').build(loader.dataset)
    except FileNotFoundError as error:
        raise DeployError(f'The {split} set of the config is not on disk ({error}). Run from '
                          f'the folder its data_root is relative to, or make the data.') from None
    if len(dataset) == 0:
        raise DeployError(f'The {split} set of the config is empty.')
    return dataset


def val_dataset(cfg: Config):
    """(the config's val dataset, '') when it is on disk and not empty, else (None, the
    reason)."""
    try:
        return dataset_of(cfg, 'val'), ''
    except DeployError as error:
        return None, str(error)


def val_image_paths(cfg: Config, num_images: int) -> List[str]:
    """The first ``num_images`` image files of the val set, or [] when it is not on disk."""
    dataset, _ = val_dataset(cfg)
    if dataset is None:
        return []
    return [dataset.get_data_info(i)['img_path'] for i in range(min(num_images, len(dataset)))]


def sample_inputs(cfg: Config, model: nn.Module, num_images: int = 4
                  ) -> Tuple[List[dict], str]:
    """Model inputs, one image each: the first ``num_images`` of the config's val set through
    its pipeline and the model's data_preprocessor when the data is on disk, else random
    normalised images of the pipeline's size. Returns (inputs, description)."""
    dataset, reason = val_dataset(cfg)
    if dataset is not None:
        count = min(num_images, len(dataset))
        with torch.no_grad():
            inputs = [model.data_preprocessor(dict(inputs=[d['inputs']],
                                                   data_samples=[d['data_samples']]), False)
                      for d in (dataset[i] for i in range(count))]
        return inputs, f'{count} val images'
    size = _input_size(cfg)
    generator = torch.Generator().manual_seed(0)
    inputs = [dict(inputs=torch.randn(1, 3, size, size, generator=generator))
              for _ in range(num_images)]
    return inputs, f'{num_images} random {size}x{size} images ({reason})'


def tensor_outputs(model: nn.Module, data: dict) -> List[torch.Tensor]:
    """The model's raw outputs (mode='tensor': logits, box / class maps) for one input."""
    return flatten(model(data['inputs'], data.get('data_samples'), mode='tensor'))[0]


def check_fusion(train_model: nn.Module, deploy_model: nn.Module, inputs: List[dict]) -> dict:
    """The shared output check (verify.Reference) of ``deploy_model`` against the train
    form ``train_model`` (not changed), on model inputs such as ``sample_inputs`` gives."""
    reference = Reference(train_model, inputs, tensor_outputs)
    return reference.judge(reference.outputs(deploy_model))


# ---------------------------------------------------------------------- the switch
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def deploy_config_path(out_checkpoint) -> str:
    """Where the deploy config of ``out_checkpoint`` goes: beside it, extension ``.py``."""
    return os.path.splitext(os.fspath(out_checkpoint))[0] + '.py'


def write_deploy_files(state_dict: dict, meta: dict, config_text: str,
                       out_checkpoint) -> Tuple[str, str]:
    """Write the deploy checkpoint (``meta`` and the fused ``state_dict``, in the format its
    extension names: io.dump_checkpoint) and the deploy config beside it, its first line
    our mark (checkpoints.paths.CONFIG_MARK), as one: both or neither
    (checkpoints.paths.atomic_files); returns (checkpoint path, config path)."""
    out_checkpoint, out_config = os.fspath(out_checkpoint), deploy_config_path(out_checkpoint)
    with atomic_files([(out_checkpoint, 'wb'), (out_config, 'w')]) as (ckpt_file, cfg_file):
        dump_checkpoint(dict(meta=meta, state_dict=state_dict), ckpt_file, out_checkpoint)
        cfg_file.write(f'{CONFIG_MARK} (tools/reparameterize.py): the deploy form, '
                       f'model.backbone.deploy=True\n')
        cfg_file.write(config_text)
    return out_checkpoint, out_config


def check_output_names(config, checkpoint, out_checkpoint):
    """DeployError, before any work, when the deploy checkpoint or its config (beside it,
    .py) cannot be written without harm (checkpoints.paths.plan_outputs): over an input,
    onto one path, over a file our tools did not write, into a folder that takes no file;
    or when its extension names no checkpoint format (.pth, .safetensors)."""
    if os.fspath(out_checkpoint).lower().endswith('.py'):
        raise DeployError(f'The deploy checkpoint {os.fspath(out_checkpoint)!r} ends in .py, '
                          f'the name its deploy config takes: name it .pth or .safetensors.')
    try:
        plan_outputs(inputs={'config': config if not isinstance(config, Config) else None,
                             'checkpoint': checkpoint},
                     outputs={'deploy checkpoint': out_checkpoint,
                              'deploy config': deploy_config_path(out_checkpoint)})
        check_extension(out_checkpoint, CHECKPOINT_EXTENSIONS, 'deploy checkpoint')
    except PathError as error:
        raise DeployError(str(error)) from None


def reparameterize_checkpoint(config, checkpoint: str, out_checkpoint: str,
                              verify: bool = True, num_images: int = 4) -> ReparamResult:
    """Fuse a trained model's MobileOne blocks and write the deploy checkpoint
    (``meta`` and the fused ``state_dict``; optimizer and scheduler state dropped) and the
    deploy config (``out_checkpoint`` with extension ``.py``), both atomically.

    The deploy config is built and the fused weights are loaded into it strictly before
    anything is written. With ``verify``, the raw outputs of the deploy form are judged on
    ``num_images`` inputs (see ``sample_inputs``) by the shared check (``check_fusion``:
    no further from the float64 train form than the float32 train form is, times
    verify.FACTOR); DeployError when they fail it. A checkpoint that is already fused is
    only checked against the deploy form of the config, and nothing is written.
    """
    check_output_names(config, checkpoint, out_checkpoint)
    if verify and not (isinstance(num_images, int) and num_images >= 1):
        raise DeployError(f'num_images must be a whole number of at least 1 to compare the '
                          f'outputs, got {num_images!r} (verify=False skips the check).')
    model, cfg, ckpt = load_model(config, checkpoint)
    if is_fused(state_dict_of(ckpt)):
        params = count_params(model)
        return ReparamResult(codebase_of(cfg), True, params, params)

    result = ReparamResult(codebase_of(cfg), False, count_params(model), 0)
    fused = reparameterize_model(copy.deepcopy(model))
    text = deploy_config(cfg).pretty_text
    deploy_model, _ = build_model(Config.fromstring(text, '.py'))
    load_strict(deploy_model, fused.state_dict(), 'The fused model')
    result.params_deploy = count_params(deploy_model)
    if verify:
        inputs, result.inputs = sample_inputs(cfg, model, num_images)
        result.check = check_fusion(model, deploy_model, inputs)
        result.max_abs_diff = result.check.get('max_abs_diff')
        result.output_scale = result.check.get('output_scale')
        if not result.check['passed']:
            raise DeployError(f'The deploy form changes the outputs: '
                              f'{describe(result.check, "it")}. Nothing written.')

    result.out_checkpoint, result.out_config = write_deploy_files(
        deploy_model.state_dict(), ckpt.get('meta', {}), text, out_checkpoint)
    return result
