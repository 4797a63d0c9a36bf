"""Small, seeded, learnable synthetic data sets in the on-disk formats of COCO, ADE20K and
Pascal VOC 2012 (+ SBD aug), for the tests and the demo (no real data set can be fetched).

Every image is a scene of ``devkit.scenes`` (objects 20..60 % of the short side; 20..50 %
in the COCO set, whose images are smaller; one object of 40..70 % of the side, the label,
in the flowers set). The writers only encode a scene in each format:

* ``make_tiny_coco``: ``annotations/instances_{train,val}2017.json`` (boxes, polygons,
  areas), ``{train,val}2017/*.jpg``, as mmdet's ``CocoDataset`` reads them.
* ``make_tiny_ade20k``: ``ADEChallengeData2016/{images,annotations}/{training,validation}``
  (.jpg / .png; 0 = "other", ignored by ``reduce_zero_label``, on the horizon line; sky,
  floor and the object classes keep their ADE20K ids), as mmseg's ``ADE20KDataset``.
* ``make_tiny_voc``: ``VOC2012/{JPEGImages,SegmentationClass,
  SegmentationClassAug,ImageSets/Segmentation/{train,val,aug}.txt}`` (palette .png with a
  255 "void" border around objects as in VOC; grey-scale aug labels without border as in
  SBD; aug.txt = train + aug-only images), as mmseg's ``PascalVOCDataset``.
* ``make_tiny_flowers``: ``jpg/*.jpg`` and ``{train,val}.txt`` (``path label`` lines), one
  large object per image whose class is the label, as mmpretrain's ``CustomDataset`` reads
  the Flowers102 config's data.

``make_tiny_dataset`` writes any of them by name (tools/make_tiny_datasets.py).

Image ``i`` of a split depends only on ``(seed, split, i)``, so changing the number of
images does not change the others. Each writer lists the files it wrote in
``out_dir/tiny_<format>_files.json``; ``overwrite=True`` deletes those and no other.
"""

import json
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from mobileone_mm.errors import UserError

from ..checkpoints.paths import written_files
from .scenes import (
    CLASSES,
    COCO_IMAGE_SIZE,
    COCO_RADIUS_RANGE,
    FLOWERS_RADIUS_RANGE,
    SPLIT_CODES,
    boundary,
    render_split,
)

# Label ids written for background regions and classes (ADE20K: 1-based ids of its 150
# classes, i.e. the .png values; VOC: 0 = background, 1..20).
ADE20K_IDS = {'sky': 3, 'ground': 4, 'disk': 13, 'square': 16, 'triangle': 20, 'star': 21}
VOC_IDS = {'sky': 0, 'ground': 0, 'disk': 5, 'square': 9, 'triangle': 11, 'star': 15}
VOC_IGNORE = 255


# ----------------------------------------------------------------------------- writers
class TinyDataError(UserError, ValueError):
    """Settings a tiny data set cannot be written with."""


# Bytes a written image takes at least, per pixel of image_size: its sides are drawn in
# [0.75, 1] of it and a quality-95 JPEG of a textured scene takes 0.6 bytes a pixel (0.25
# here, so that the estimate stays below what is written).
MIN_BYTES_PER_PIXEL = 0.75**2 * 0.25


def _check_args(out_dir, num_train: int, num_val: int, image_size: Sequence[int]):
    """TinyDataError for counts or sizes that cannot be written, before anything is: also
    when the images need more disk than the output's file system has free."""
    if num_train < 1 or num_val < 1:
        raise TinyDataError(
            f'Need at least one train and one val image, got num_train='
            f'{num_train}, num_val={num_val}.'
        )
    if len(image_size) != 2 or min(image_size) < 32:
        raise TinyDataError(f'image_size must be (height, width), both >= 32, got {image_size}.')
    folder = Path(out_dir).absolute()
    while not folder.exists():
        folder = folder.parent
    needed = (num_train + num_val) * image_size[0] * image_size[1] * MIN_BYTES_PER_PIXEL
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise TinyDataError(
            f'{num_train + num_val} images need at least '
            f'{needed / 2**30:.1f} GiB of disk and {str(folder)!r} has '
            f'{free / 2**30:.1f} GiB free: write fewer images '
            f'(--num-train, --num-val).'
        )


def _data_set_files(out_dir, name: str, targets: Sequence[str], overwrite: bool):
    """The files of data set ``name`` written under ``out_dir`` (checkpoints.paths.
    written_files): never mixed with an existing one (stale files would join the splits),
    which ``overwrite`` replaces only when this tool wrote all of it (the manifest
    ``tiny_<name>_files.json`` lists what it wrote); nothing is left of a failed run."""
    return written_files(out_dir, f'tiny_{name}_files.json', targets, overwrite)


def _save_jpg(image: np.ndarray, path: Path):
    Image.fromarray(image).save(path, quality=95)


def make_tiny_coco(
    out_dir,
    seed: int = 0,
    num_train: int = 320,
    num_val: int = 80,
    image_size: Tuple[int, int] = COCO_IMAGE_SIZE,
    radius_range: Tuple[float, float] = COCO_RADIUS_RANGE,
    overwrite: bool = False,
) -> Path:
    """Write a COCO-format detection set into ``out_dir``; returns ``out_dir``.

    Categories are ``CLASSES`` with ids 1..4 (configs set ``metainfo=dict(classes=...)``).
    """
    _check_args(out_dir, num_train, num_val, image_size)
    splits = {'train': num_train, 'val': num_val}
    categories = [
        dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)
    ]
    with _data_set_files(
        out_dir,
        'coco',
        [f'annotations/instances_{s}2017.json' for s in splits] + [f'{s}2017' for s in splits],
        overwrite,
    ) as files:
        for split, count in splits.items():
            images, annotations = [], []
            for index in range(count):
                scene = render_split(seed, split, index, image_size, radius_range)
                image_id = index + 1
                file_name = f'{image_id:012d}.jpg'
                _save_jpg(scene.image, files.file(f'{split}2017/{file_name}'))
                height, width = scene.image.shape[:2]
                images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
                for instance in scene.instances:
                    ys, xs = np.nonzero(instance.mask)
                    x0, y0 = float(xs.min()), float(ys.min())
                    annotations.append(
                        dict(
                            id=len(annotations) + 1,
                            image_id=image_id,
                            iscrowd=0,
                            category_id=CLASSES.index(instance.category) + 1,
                            bbox=[x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
                            area=float(instance.mask.sum()),
                            segmentation=[np.round(instance.polygon, 2).ravel().tolist()],
                        )
                    )
            with open(files.file(f'annotations/instances_{split}2017.json'), 'w') as f:
                json.dump(
                    dict(
                        info=dict(description=f'tiny synthetic COCO, seed {seed}'),
                        licenses=[],
                        images=images,
                        annotations=annotations,
                        categories=categories,
                    ),
                    f,
                )
    return Path(out_dir)


def make_tiny_ade20k(
    out_dir,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    image_size: Tuple[int, int] = (256, 320),
    overwrite: bool = False,
) -> Path:
    """Write an ADE20K-format segmentation set; returns ``out_dir/ADEChallengeData2016``.

    Labels: ``ADE20K_IDS`` (sky 3, floor 4, four object classes), 0 ("other") on a 1-pixel
    band along the horizon.
    """
    _check_args(out_dir, num_train, num_val, image_size)
    root = 'ADEChallengeData2016'
    background = (ADE20K_IDS['sky'], ADE20K_IDS['ground'])
    with _data_set_files(out_dir, 'ade20k', [root], overwrite) as files:
        for split, folder, count in (
            ('train', 'training', num_train),
            ('val', 'validation', num_val),
        ):
            for index in range(count):
                scene = render_split(seed, split, index, image_size)
                labels = scene.label_map(ADE20K_IDS)
                labels[boundary(scene.sky, 1) & np.isin(labels, background)] = 0
                name = f'ADE_{split}_{index + 1:08d}'
                _save_jpg(scene.image, files.file(f'{root}/images/{folder}/{name}.jpg'))
                Image.fromarray(labels).save(files.file(f'{root}/annotations/{folder}/{name}.png'))
    return Path(out_dir) / root


def _voc_palette() -> List[int]:
    """Pascal VOC's colour map (bit-interleaved class index), 256 RGB entries."""
    palette = []
    for index in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((index >> 0) & 1) << (7 - bit)
            g |= ((index >> 1) & 1) << (7 - bit)
            b |= ((index >> 2) & 1) << (7 - bit)
            index >>= 3
        palette += [r, g, b]
    return palette


def make_tiny_voc(
    out_dir,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    num_aug: int = 100,
    image_size: Tuple[int, int] = (256, 320),
    overwrite: bool = False,
) -> Path:
    """Write a Pascal VOC 2012 (+ SBD aug) segmentation set; returns
    ``out_dir/VOC2012`` (``out_dir`` plays ``VOCdevkit``).

    train / val images have ``SegmentationClass`` (palette, 255 border) and
    ``SegmentationClassAug`` labels; ``num_aug`` more images have aug labels only.
    """
    _check_args(out_dir, num_train, num_val, image_size)
    if num_aug < 0:
        raise TinyDataError(f'num_aug must be >= 0, got {num_aug}.')
    root = 'VOC2012'
    palette = _voc_palette()
    names = {}
    with _data_set_files(out_dir, 'voc', [root], overwrite) as files:
        for split, count in (('train', num_train), ('val', num_val), ('aug', num_aug)):
            names[split] = [f'2012_{SPLIT_CODES[split]}{i:05d}' for i in range(count)]
            for index, name in enumerate(names[split]):
                scene = render_split(seed, split, index, image_size)
                labels = scene.label_map(VOC_IDS)
                _save_jpg(scene.image, files.file(f'{root}/JPEGImages/{name}.jpg'))
                Image.fromarray(labels).save(files.file(f'{root}/SegmentationClassAug/{name}.png'))
                if split != 'aug':
                    labels[boundary(labels, 1)] = VOC_IGNORE  # the void outline of VOC
                    annotation = Image.frombytes('P', labels.shape[::-1], labels.tobytes())
                    annotation.putpalette(palette)
                    annotation.save(files.file(f'{root}/SegmentationClass/{name}.png'))
        lists = {'train': names['train'], 'val': names['val'], 'aug': names['train'] + names['aug']}
        for split, split_names in lists.items():
            files.file(f'{root}/ImageSets/Segmentation/{split}.txt').write_text(
                ''.join(f'{n}\n' for n in split_names)
            )
    return Path(out_dir) / root


def make_tiny_flowers(
    out_dir,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 40,
    image_size: Tuple[int, int] = (80, 80),
    overwrite: bool = False,
) -> Path:
    """Write a classification set in mmpretrain's ``CustomDataset`` layout with annotation
    lists, as the Flowers102 config reads it; returns ``out_dir``.

    ``jpg/{split}_{i:05d}.jpg`` and ``{train,val}.txt`` with lines ``jpg/<name>.jpg <label>``;
    the classes are ``CLASSES`` (label = index in it), balanced: image ``i`` is of class
    ``i % 4``.
    """
    _check_args(out_dir, num_train, num_val, image_size)
    with _data_set_files(out_dir, 'flowers', ['jpg', 'train.txt', 'val.txt'], overwrite) as files:
        for split, count in (('train', num_train), ('val', num_val)):
            lines = []
            for index in range(count):
                label = index % len(CLASSES)
                name = f'jpg/{split}_{index:05d}.jpg'
                scene = render_split(
                    seed, split, index, image_size, FLOWERS_RADIUS_RANGE, category=CLASSES[label]
                )
                _save_jpg(scene.image, files.file(name))
                lines.append(f'{name} {label}\n')
            files.file(f'{split}.txt').write_text(''.join(lines))
    return Path(out_dir)


TINY_DATASETS = dict(
    coco=make_tiny_coco, ade20k=make_tiny_ade20k, voc=make_tiny_voc, flowers=make_tiny_flowers
)


def make_tiny_dataset(
    name: str,
    out_dir,
    seed: int = 0,
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    overwrite: bool = False,
) -> Path:
    """tools/make_tiny_datasets.py: the data set ``name`` (a key of ``TINY_DATASETS``)
    written by its writer; ``num_train`` / ``num_val`` None: the writer's default. Returns
    where it is (the writer's return value)."""
    counts = {k: v for k, v in dict(num_train=num_train, num_val=num_val).items() if v is not None}
    return TINY_DATASETS[name](out_dir, seed=seed, overwrite=overwrite, **counts)
