"""The Flowers-102 classification configs (mmpretrain) and the tiny synthetic flowers set."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO
from mmengine.config import Config
from PIL import Image

from mobileone_mm import MobileOne
from mobileone_mm.checkpoints.formats import MMPRETRAIN_URLS
from mobileone_mm.devkit.scenes import CLASS_LOOKS, CLASSES
from mobileone_mm.devkit.tiny_data import make_tiny_flowers
from mobileone_mm.loading.config import build_model

FLOWERS = REPO / 'configs/classification/mobileone-s0_1xb32-flowers102.py'
TINY = REPO / 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py'


def test_flowers102_config():
    cfg = Config.fromfile(str(FLOWERS))
    assert cfg.model.backbone.type == 'mobileone_mm.MobileOne'
    assert cfg.model.backbone.init_cfg.checkpoint == MMPRETRAIN_URLS['s0']
    assert cfg.model.head.num_classes == cfg.data_preprocessor.num_classes == 102
    for loader, ann_file in (
        (cfg.train_dataloader, 'train.txt'),
        (cfg.val_dataloader, 'val.txt'),
        (cfg.test_dataloader, 'val.txt'),
    ):
        assert loader.dataset.type == 'CustomDataset'
        assert loader.dataset.data_root == 'data/flowers102'
        assert loader.dataset.ann_file == ann_file
    cfg.model.backbone.init_cfg = None  # nothing can be downloaded here
    model, codebase = build_model(cfg)
    assert codebase == 'mmpretrain' and isinstance(model.backbone, MobileOne)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 224, 224), mode='tensor').shape == (2, 102)


def test_tiny_flowers_read_by_mmpretrain(tmp_path, monkeypatch):
    from mmpretrain.registry import DATASETS

    monkeypatch.chdir(tmp_path)
    make_tiny_flowers('data/tiny_flowers', num_train=8, num_val=4)
    cfg = Config.fromfile(str(TINY))
    for loader, count in ((cfg.train_dataloader, 8), (cfg.val_dataloader, 4)):
        dataset = DATASETS.build(loader.dataset)
        assert len(dataset) == count and dataset.metainfo['classes'] == CLASSES
        assert [dataset.get_data_info(i)['gt_label'] for i in range(count)] == [
            i % len(CLASSES) for i in range(count)
        ]
        sample = dataset[0]
        assert sample['inputs'].shape == (3, 64, 64)


def test_tiny_flowers_images_show_one_large_object_of_their_label(tmp_path, monkeypatch):
    """Judged from the JPEGs alone: the saturated pixels (the backgrounds are grey) take
    the colour of the label's class, and cover a large part of the image."""
    from mmpretrain.registry import DATASETS

    monkeypatch.chdir(tmp_path)
    make_tiny_flowers('data/tiny_flowers', num_train=4, num_val=12)
    dataset = DATASETS.build(Config.fromfile(str(TINY)).val_dataloader.dataset)
    looks = np.array([CLASS_LOOKS[c][0] for c in CLASSES], float)
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        pixels = np.asarray(Image.open(info['img_path']), float).reshape(-1, 3)
        saturated = pixels[pixels.max(1) - pixels.min(1) > 80]
        hues = saturated / np.linalg.norm(saturated, axis=1, keepdims=True)
        votes = np.bincount((hues @ looks.T).argmax(1), minlength=len(CLASSES))
        assert votes.argmax() == info['gt_label'], (info['img_path'], votes)
        assert votes.max() >= 0.95 * votes.sum()  # no object of another class
        assert len(saturated) >= 0.03 * len(pixels)  # one large object


def test_tiny_flowers_seeded_and_refuses_to_mix(tmp_path):
    first = make_tiny_flowers(tmp_path / 'a', num_train=4, num_val=2)
    make_tiny_flowers(tmp_path / 'b', num_train=6, num_val=2)
    for name in ('jpg/train_00003.jpg', 'jpg/val_00001.jpg'):
        assert (first / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    assert (first / 'val.txt').read_text() == 'jpg/val_00000.jpg 0\njpg/val_00001.jpg 1\n'
    with pytest.raises(FileExistsError, match='overwrite'):
        make_tiny_flowers(first)
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / 'tools/make_tiny_datasets.py'),
            'flowers',
            '--out',
            str(tmp_path / 'c'),
            '--num-train',
            '4',
            '--num-val',
            '4',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(np.loadtxt(tmp_path / 'c' / 'train.txt', dtype=str)) == 4
