"""A config and the model it builds, for every codebase: the config read by mmengine
(a missing file, a folder or a syntax error named), the codebase it is for (mmdet / mmseg /
mmpretrain, from ``default_scope`` or the registry that knows ``model.type``), the model
built as mmengine's Runner builds it, its task and its test input size. The codebases are
imported only here and in the modules that run them.
"""

import copy
import importlib
import os
import re
from typing import Tuple

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

from ..errors import UserError

CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')


class DeployError(UserError, ValueError):
    """A config / model that cannot be re-parameterized, or outputs that changed."""


class ConfigNotFound(DeployError, FileNotFoundError):
    """The config file does not exist."""


CONFIG_EXTENSIONS = ('.py', '.json', '.yaml', '.yml')  # what mmengine's Config reads


_OTHER_FILES = {
    ('.pth', '.pt', '.ckpt', '.tar', '.bin', '.safetensors'): 'a checkpoint',
    ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif'): 'an image',
    ('.onnx',): 'an ONNX model',
}


def check_config_file(path, what: str = 'Config') -> str:
    """``path`` as a string when it is a file with a config's extension, before mmengine
    reads it; else DeployError naming ``what``, the file and the fix: missing
    (ConfigNotFound, also a FileNotFoundError), a folder, another kind of file (a
    checkpoint or a photo: arguments swapped)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigNotFound(f'{what} {path!r} does not exist.')
    if not os.path.isfile(path):
        raise DeployError(
            f'{what} {path!r} is a folder, not a config file: give the .py file in it.'
        )
    extension = os.path.splitext(path)[1].lower()
    if extension not in CONFIG_EXTENSIONS:
        kind = next(
            (kind for extensions, kind in _OTHER_FILES.items() if extension in extensions),
            f'a {extension or "extensionless"} file',
        )
        raise DeployError(
            f'{what} {path!r} is {kind}, not a config '
            f'({", ".join(CONFIG_EXTENSIONS)}): are the arguments swapped? '
            f'See the order in --help.'
        )
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
            cfg[key]  # LazyObject): import them now, not at first use
        return cfg
    except SyntaxError as error:  # mmengine names no file: is it this one or a base?
        where = f'{what} {path!r}'
        try:
            with open(path, encoding='utf-8') as f:
                compile(f.read(), path, 'exec')
            where = f'A config that {path!r} inherits (_base_)'
        except SyntaxError:
            pass
        raise DeployError(
            f'{where} has a syntax error at line {error.lineno}: {error.msg} '
            f'({(error.text or "").strip()!r}). Fix the file.'
        ) from None
    except ImportError as error:  # an import in the file, or custom_imports
        raise DeployError(
            f'{what} {path!r} (or a config it inherits) imports '
            f'{_failed_import(error)}: install it, or fix the import or '
            f'custom_imports.'
        ) from error
    except Exception as error:  # noqa: BLE001 - a config is a program: any error is its own
        raise DeployError(
            f'{what} {path!r} (or a config it inherits) failed while '
            f'mmengine read it ({type(error).__name__}: {error}). Fix the '
            f'file.'
        ) from error


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
        raise DeployError(
            f'Config {os.fspath(config)!r} has no model (a dict): it is not a '
            f'model config (a dataset, schedule or deploy config?). Give the '
            f'config the checkpoint was trained with.'
        )
    return cfg


def codebase_of(cfg: Config) -> str:
    """'mmdet', 'mmseg' or 'mmpretrain', from default_scope, else from model.type."""
    scope = cfg.get('default_scope')
    if scope in CODEBASES:
        return scope
    model_type = cfg.get('model', {}).get('type')
    for codebase in CODEBASES:
        if registry_of(codebase, 'MODELS').get(model_type) is not None:
            return codebase
    raise DeployError(
        f'Cannot tell which codebase the config is for: default_scope is '
        f'{scope!r} and model type {model_type!r} is in none of '
        f'{", ".join(CODEBASES)}. Set default_scope in the config.'
    )


def registry_of(codebase: str, name: str):
    """The codebase's registry ``name`` ('MODELS', 'DATASETS', 'METRICS', ...), its scope
    made the default one first (as the Runner does), so that the types it builds resolve."""
    init_default_scope(codebase)
    return getattr(importlib.import_module(f'{codebase}.registry'), name)


def build_model(cfg: Config) -> Tuple[nn.Module, str]:
    """(model in eval mode on the CPU, codebase), built as mmengine's Runner builds it."""
    codebase = codebase_of(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # the Runner merges it the same way
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    try:
        model = registry_of(codebase, 'MODELS').build(model_cfg)
    except (KeyError, ValueError, TypeError) as error:  # a wrong type name or argument
        if isinstance(error, UserError):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise DeployError(
            f"The config's model cannot be built: {message} Fix the model settings of the config."
        ) from error
    return model.eval(), codebase


def deploy_config(cfg: Config) -> Config:
    """The same config with ``model.backbone.deploy=True``."""
    if not isinstance(cfg.model.get('backbone'), dict):
        raise DeployError(
            f"The config's model ({cfg.model.get('type')}) has no backbone "
            f'to switch to deploy form.'
        )
    deploy = copy.deepcopy(cfg)
    deploy.model.backbone.deploy = True
    return deploy


def input_size_of(cfg: Config) -> int:
    """The square side of the val pipeline's last fixed size (crop or resize), or 224."""
    size = 224
    for transform in cfg.get('val_dataloader', {}).get('dataset', {}).get('pipeline', []):
        scale = transform.get('crop_size', transform.get('scale'))
        if scale is not None:
            size = min(scale) if isinstance(scale, (tuple, list)) else scale
    return size


def input_shape_of(cfg: Config) -> Tuple[int, int]:
    size = input_size_of(cfg)
    return size, size


class ExportError(UserError, TypeError):
    """A model this exporter does not cover, with what to use instead."""


def task_of(model: nn.Module) -> str:
    if hasattr(model, 'bbox_head'):
        return 'detection'
    if hasattr(model, 'decode_head'):
        return 'segmentation'
    if hasattr(model, 'head'):
        return 'classification'
    raise ExportError(
        f'Cannot export a {type(model).__name__}: expected an mmdet detector, '
        f'an mmseg segmentor or an mmpretrain classifier.'
    )
