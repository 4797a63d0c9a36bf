"""The synthetic data sets: seeded, in the layouts mmdet's CocoDataset and mmseg's
ADE20KDataset / PascalVOCDataset read (read here by those classes themselves)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from mobileone_mm.devkit.scenes import CLASSES, render_split
from mobileone_mm.devkit.tiny_data import (
    ADE20K_IDS,
    VOC_IDS,
    make_tiny_ade20k,
    make_tiny_coco,
    make_tiny_voc,
)


def test_scenes_are_seeded_and_independent_of_counts():
    a, b = render_split(0, 'train', 5, (96, 128)), render_split(0, 'train', 5, (96, 128))
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, render_split(1, 'train', 5, (96, 128)).image)
    scenes = [render_split(0, 'train', i, (96, 128)) for i in range(60)]
    counts = [len(s.instances) for s in scenes]
    assert 0 in counts and max(counts) >= 3  # empty images and crowded ones
    assert {i.category for s in scenes for i in s.instances} == set(CLASSES)
    for scene in scenes:  # objects never overlap
        if scene.instances:
            assert np.sum([i.mask for i in scene.instances], axis=0).max() == 1


def test_coco_layout_read_by_mmdet(tmp_path):
    from mmdet.datasets import CocoDataset

    make_tiny_coco(tmp_path, num_train=12, num_val=5, image_size=(96, 128))
    ann = json.loads((tmp_path / 'annotations' / 'instances_val2017.json').read_text())
    assert [c['name'] for c in ann['categories']] == list(CLASSES)
    assert len(list((tmp_path / 'val2017').glob('*.jpg'))) == 5
    dataset = CocoDataset(
        data_root=str(tmp_path),
        metainfo=dict(classes=CLASSES),
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=[],
    )
    boxes = [i['bbox'] for d in dataset for i in d['instances']]
    labels = {i['bbox_label'] for d in dataset for i in d['instances']}
    assert len(boxes) == sum(
        1
        for a in json.loads((tmp_path / 'annotations' / 'instances_train2017.json').read_text())[
            'annotations'
        ]
    )
    assert labels <= set(range(len(CLASSES))) and all(x1 > x0 for x0, _, x1, _ in boxes)
    # COCO's objects have radius >= 10 % of the short side (COCO_RADIUS_RANGE): any of
    # the shapes spans >= 1.5 radii along its box's longer side
    for data in dataset:
        short = min(data['height'], data['width'])
        assert all(
            max(x1 - x0, y1 - y0) >= 0.15 * short - 1
            for x0, y0, x1, y1 in (i['bbox'] for i in data['instances'])
        )
    with pytest.raises(FileExistsError, match='already exists'):
        make_tiny_coco(tmp_path, num_train=2, num_val=1)


def test_ade20k_layout_read_by_mmseg(tmp_path):
    from mmseg.datasets import ADE20KDataset

    root = make_tiny_ade20k(tmp_path, num_train=6, num_val=3, image_size=(96, 128))
    dataset = ADE20KDataset(
        data_root=str(root),
        pipeline=[],
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
    )
    assert len(dataset) == 3 and dataset.reduce_zero_label
    labels = np.concatenate([np.unique(np.array(Image.open(d['seg_map_path']))) for d in dataset])
    assert set(labels) <= {0} | set(ADE20K_IDS.values()) and 0 in labels


def test_voc_layout_read_by_mmseg(tmp_path):
    from mmseg.datasets import PascalVOCDataset

    root = make_tiny_voc(tmp_path, num_train=6, num_val=3, num_aug=4, image_size=(96, 128))
    splits = root / 'ImageSets' / 'Segmentation'
    assert len((splits / 'aug.txt').read_text().split()) == 10
    for seg_map, ann_file, ignore in (
        ('SegmentationClass', 'train.txt', True),
        ('SegmentationClassAug', 'aug.txt', False),
    ):
        dataset = PascalVOCDataset(
            data_root=str(root),
            ann_file=f'ImageSets/Segmentation/{ann_file}',
            pipeline=[],
            data_prefix=dict(img_path='JPEGImages', seg_map_path=seg_map),
        )
        labels = set(
            np.concatenate([np.unique(np.array(Image.open(d['seg_map_path']))) for d in dataset])
        )
        assert labels <= set(VOC_IDS.values()) | {255} and (255 in labels) == ignore


def test_cli_and_bad_input(tmp_path):
    tool = [sys.executable, str(REPO / 'tools' / 'make_tiny_datasets.py')]
    done = subprocess.run(
        tool + ['voc', '--out', str(tmp_path), '--num-train', '2', '--num-val', '1'],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert 'VOC2012' in done.stdout
    done = subprocess.run(tool + ['voc', '--out', str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and 'already exists' in done.stderr
    done = subprocess.run(
        tool + ['coco', '--out', str(tmp_path), '--num-val', '0'], capture_output=True, text=True
    )
    assert done.returncode != 0 and 'at least one' in done.stderr
