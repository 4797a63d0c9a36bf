"""The scenes of the tiny data sets (``devkit.tiny_data`` writes them in each format): a
two-region background ("sky" above a slanted horizon, "ground" below; grey-tinted, smooth
and fine noise textures) and 0..4 non-overlapping objects. Each object class has its own
polygon shape, colour and texture, and a random size, position and rotation; about one
image in ten has no object. Image ``i`` of a split depends only on ``(seed, split, i)``.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('disk', 'square', 'triangle', 'star')
# per class: RGB colour and texture
CLASS_LOOKS = {
    'disk': ((215, 45, 40), 'noise'),
    'square': ((40, 170, 60), 'stripes'),
    'triangle': ((45, 80, 215), 'checker'),
    'star': ((225, 195, 35), 'dots'),
}
SPLIT_CODES = {'train': 0, 'val': 1, 'aug': 2}
# Object radius range, as fractions of the image's short side (segmentation sets). At least
# 10 %: the tiny DeepLabV3 configs see ~128-pixel images at output stride 8, where smaller
# shapes span one or two feature cells and are learnt last (with (0.06, 0.225) the shorter
# 400-iteration runs left some shape classes at ~0 IoU).
RADIUS_RANGE = (0.1, 0.3)
# Detection: larger objects on small images. The tiny SSDLite config trains at 128x128
# from scratch on a CPU; its first feature map has stride 16 (an 8x8 grid), so
# objects of 20..50 % of the side are ones it can place; smaller ones it cannot localise
# to the IoU 0.5..0.95 that COCO mAP asks for.
COCO_IMAGE_SIZE = (128, 128)
COCO_RADIUS_RANGE = (0.1, 0.25)
# Classification: one large object per image, the class to tell.
FLOWERS_RADIUS_RANGE = (0.2, 0.35)


class Instance(NamedTuple):
    category: str  # one of CLASSES
    polygon: np.ndarray  # (n, 2) x, y in pixels
    mask: np.ndarray  # (h, w) bool


class Scene(NamedTuple):
    image: np.ndarray  # (h, w, 3) uint8 RGB
    sky: np.ndarray  # (h, w) bool: the upper background region
    instances: List[Instance]

    def label_map(self, ids: Dict[str, int]) -> np.ndarray:
        """Semantic label map with ``ids`` for 'sky', 'ground' and each class."""
        labels = np.where(self.sky, ids['sky'], ids['ground']).astype(np.uint8)
        for instance in self.instances:
            labels[instance.mask] = ids[instance.category]
        return labels


# ---------------------------------------------------------------------------- renderer
def _polygon(rng, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    if shape == 'disk':
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full(32, r)
    elif shape == 'star':
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) + angle
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        corners = {'square': 4, 'triangle': 3}[shape]
        t = np.linspace(0, 2 * np.pi, corners, endpoint=False) + angle
        radii = np.full(corners, r)
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


def _fill(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = Image.new('L', (width, height))
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random coarse grid, bilinearly upsampled."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((width, height), Image.BILINEAR), np.float32) / 255


def _texture(rng, kind: str, colour, height: int, width: int) -> np.ndarray:
    """A (h, w, 3) float texture of one colour: the pattern modulates its brightness."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    period = rng.uniform(5, 10)
    if kind == 'stripes':
        angle = rng.uniform(0, np.pi)
        pattern = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0
    elif kind == 'checker':
        pattern = (np.floor(x / period) + np.floor(y / period)) % 2 == 0
    elif kind == 'dots':
        pattern = np.hypot(x % period - period / 2, y % period - period / 2) < period / 4
    else:  # 'noise'
        pattern = rng.random((height, width)) < 0.5
    brightness = np.where(pattern, 1.0, 0.6)[..., None]
    return np.clip(np.asarray(colour, np.float32) * brightness, 0, 255)


def _background(rng, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Grey-tinted sky (smooth, bright) above a slanted horizon, ground (fine noise) below."""
    y, x = np.mgrid[:height, :width]
    horizon = height * rng.uniform(0.3, 0.7) + (x - width / 2) * rng.uniform(-0.3, 0.3)
    sky = y < horizon
    tint = rng.uniform(0.85, 1.15, size=3)
    sky_tone = 170 + 60 * _smooth_noise(rng, height, width, 4)
    ground_tone = (
        70 + 50 * _smooth_noise(rng, height, width, 8) + rng.normal(0, 18, (height, width))
    )
    image = np.where(sky, sky_tone, ground_tone)[..., None] * tint
    return image, sky


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int = 4,
    empty_prob: float = 0.1,
    radius_range: Tuple[float, float] = RADIUS_RANGE,
    category: Optional[str] = None,
) -> Scene:
    """One scene: background and up to ``max_objects`` objects of random classes that do
    not overlap, of radius ``radius_range`` x the short side; with ``category``, exactly
    one object, of that class (an image to classify)."""
    image, sky = _background(rng, height, width)
    if category is not None:
        count = 1
    else:
        count = 0 if rng.random() < empty_prob else int(rng.integers(1, max_objects + 1))
    instances, boxes = [], []
    for _ in range(count):
        for _attempt in range(30):  # rejection sampling: objects never overlap
            r = rng.uniform(*radius_range) * min(height, width)
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
                break
        else:
            continue
        shape = category or CLASSES[rng.integers(len(CLASSES))]
        polygon = _polygon(rng, shape, cx, cy, r)
        mask = _fill(polygon, height, width)
        colour, kind = CLASS_LOOKS[shape]
        colour = np.clip(np.asarray(colour) + rng.integers(-25, 26, size=3), 0, 255)
        image[mask] = _texture(rng, kind, colour, height, width)[mask]
        boxes.append(box)
        instances.append(Instance(shape, polygon, mask))
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return Scene(image, sky, instances)


def render_split(
    seed: int,
    split: str,
    index: int,
    image_size: Tuple[int, int],
    radius_range: Tuple[float, float] = RADIUS_RANGE,
    category: Optional[str] = None,
) -> Scene:
    """Image ``index`` of ``split``; sides drawn in [0.75, 1] x ``image_size`` (h, w);
    ``category``: one object of that class (see ``render_scene``)."""
    rng = np.random.default_rng((seed, SPLIT_CODES[split], index))
    height, width = (int(rng.uniform(0.75, 1.0) * side) for side in image_size)
    return render_scene(rng, height, width, radius_range=radius_range, category=category)


def boundary(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (Chebyshev distance) of a pixel with another label."""
    padded = np.pad(labels, width, mode='edge')
    height, w = labels.shape
    edge = np.zeros(labels.shape, bool)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            edge |= padded[dy : dy + height, dx : dx + w] != labels
    return edge
