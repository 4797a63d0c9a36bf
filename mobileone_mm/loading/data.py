"""A config's data sets on disk: the split's dataset built as the Runner builds it, a few
val image paths, and real model inputs through the config's own test pipeline (random
inputs when the data is not on disk).
"""

from typing import List, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from ..machine import check_memory
from .config import DeployError, codebase_of, input_size_of, registry_of

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
        dataset = registry_of(codebase_of(cfg), 'DATASETS').build(loader.dataset)
    except FileNotFoundError as error:
        raise DeployError(
            f'The {split} set of the config is not on disk ({error}). Run from '
            f'the folder its data_root is relative to, or make the data.'
        ) from None
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


def sample_inputs(cfg: Config, model: nn.Module, num_images: int = 4) -> Tuple[List[dict], str]:
    """Model inputs, one image each: the first ``num_images`` of the config's val set through
    its pipeline and the model's data_preprocessor when the data is on disk, else random
    normalised images of the pipeline's size. Returns (inputs, description)."""
    dataset, reason = val_dataset(cfg)
    if dataset is not None:
        count = min(num_images, len(dataset))
        with torch.no_grad():
            inputs = [
                model.data_preprocessor(
                    dict(inputs=[d['inputs']], data_samples=[d['data_samples']]), False
                )
                for d in (dataset[i] for i in range(count))
            ]
        return inputs, f'{count} val images'
    size = input_size_of(cfg)
    check_memory(
        num_images * 3 * size * size * 4,
        f'{num_images} random {size}x{size} check images',
        'use fewer images (num_images, --num-images)',
    )
    generator = torch.Generator().manual_seed(0)
    inputs = [
        dict(inputs=torch.randn(1, 3, size, size, generator=generator)) for _ in range(num_images)
    ]
    return inputs, f'{num_images} random {size}x{size} images ({reason})'
