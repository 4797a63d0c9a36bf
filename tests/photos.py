"""Small real photos of odd sizes and modes for the tests, taken from a package the stack
already installs (matplotlib, a dependency of mmengine), plus variants derived from them.

    from photos import photo_paths
    paths = photo_paths(tmp_path)   # name -> file path (str); see PHOTOS for each one

Sources, both shipped in matplotlib's ``mpl-data/sample_data``:

* ``grace_hopper.jpg``: official US Navy portrait of Commodore Grace M. Hopper, a work of
  the US federal government and so in the public domain (512x600, RGB JPEG).
* ``Minduka_Present_Blue_Pack.png``: clip art by "minduka" from openclipart.org, released
  to the public domain there (128x128 RGBA PNG, transparent background).

The variants are written into the given folder on each call (a few ms), so tests may
modify them; sizes are width x height.
"""

from pathlib import Path
from typing import Dict

from matplotlib import cbook
from PIL import Image

# name -> (width, height, PIL mode of the file, format)
PHOTOS = {
    'portrait_rgb': (512, 600, 'RGB', 'JPEG'),  # the photo as matplotlib ships it
    'landscape_rgb': (640, 427, 'RGB', 'JPEG'),  # COCO's most common size, upscaled crop
    'gray': (300, 260, 'L', 'PNG'),  # one channel
    'rgba': (250, 180, 'RGBA', 'PNG'),  # alpha fading from left to right
    'small_jpeg': (97, 75, 'RGB', 'JPEG'),  # odd, small sides, strong compression
    'clipart_rgba': (128, 128, 'RGBA', 'PNG'),  # transparent background, as shipped
}


def _sample(name: str) -> Image.Image:
    with cbook.get_sample_data(name) as f:
        image = Image.open(f)
        image.load()
    return image


def photo_paths(directory) -> Dict[str, str]:
    """Write the photos of PHOTOS into ``directory``; returns name -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hopper = _sample('grace_hopper.jpg').convert('RGB')
    alpha = Image.linear_gradient('L').rotate(90).resize((250, 180))
    rgba = hopper.crop((120, 60, 370, 240)).convert('RGBA')
    rgba.putalpha(alpha)
    images = {
        'portrait_rgb': hopper,
        'landscape_rgb': hopper.crop((0, 40, 512, 381)).resize((640, 427), Image.BICUBIC),
        'gray': hopper.crop((100, 80, 400, 340)).convert('L'),
        'rgba': rgba,
        'small_jpeg': hopper.resize((97, 75), Image.BILINEAR),
        'clipart_rgba': _sample('Minduka_Present_Blue_Pack.png').convert('RGBA'),
    }
    paths = {}
    for name, image in images.items():
        width, height, mode, fmt = PHOTOS[name]
        assert image.size == (width, height) and image.mode == mode, (name, image)
        path = directory / f'{name}.{"jpg" if fmt == "JPEG" else "png"}'
        image.save(path, fmt, **({'quality': 30} if name == 'small_jpeg' else {}))
        paths[name] = str(path)
    return paths
