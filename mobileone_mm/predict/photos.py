"""Photos as the codebases read them, and the config's test pipeline repeated on them: the
photo read as mmcv reads it (cv2, BGR, alpha dropped, grey to 3 channels; decoded in full
by Pillow first), resized and padded as the pipeline's steps say (the steps travel in an
artefact's metadata, see metadata.preprocess_steps), and the frame that maps network
pixels back to the photo's.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..checkpoints.paths import check_input_file
from ..errors import UserError


class PredictError(UserError, ValueError):
    """A photo or an exported model that cannot be used, with the reason and the fix."""


def read_photo(path: str) -> np.ndarray:
    """The photo as mmcv's ``imread`` gives it (cv2, ``IMREAD_COLOR``: BGR uint8, grey as
    3 channels, alpha dropped, EXIF orientation applied). A file that is missing, empty,
    not an image, or truncated (Pillow decodes it in full first: cv2 would silently fill
    a cut JPEG with grey) is refused with PathError / PredictError naming it."""
    import cv2
    from PIL import Image, ImageFile, UnidentifiedImageError

    path = check_input_file(path, 'photo')
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    mode = None  # Pillow's pixel mode, when Pillow reads the file
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
    except (UnidentifiedImageError, Image.DecompressionBombError):
        pass  # a format only OpenCV reads (EXR, PFM, ...), or huge: cv2 decides below
    except (OSError, SyntaxError, ValueError) as error:
        raise PredictError(
            f'The photo {path!r} cannot be decoded in full ({error}): it is '
            f'truncated or corrupt. Copy or save it again.'
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    photo = cv2.imread(path, cv2.IMREAD_COLOR)
    if photo is None and mode == 'F':
        raise PredictError(
            f'The photo {path!r} is a 32-bit floating-point image (Pillow mode '
            f"'F'): OpenCV, which mmcv and the inferencers read photos with, "
            f'does not read it as a colour image, and its value range (0..1? '
            f'0..255?) is not known. Scale it and save it as 8 or 16 bits per '
            f'channel.'
        )
    if photo is None and mode is not None:
        raise PredictError(
            f'The photo {path!r} is an image Pillow reads (mode {mode!r}) but '
            f'OpenCV, which mmcv and the inferencers read photos with, does '
            f'not: save it as 8-bit RGB (PNG or JPEG).'
        )
    if photo is None:
        raise PredictError(
            f'The photo {path!r} is not an image that OpenCV or Pillow can '
            f'read (JPEG, PNG, BMP, TIFF, WebP, ...): give an image file.'
        )
    return photo


def read_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """An image file (checked as ``read_photo``) resized to ``input_shape`` (H, W), as
    the graph takes it: (1, 3, H, W) float32 BGR 0..255."""
    import cv2

    resized = cv2.resize(
        read_photo(path), (int(input_shape[1]), int(input_shape[0])), interpolation=cv2.INTER_LINEAR
    )
    return resized.transpose(2, 0, 1)[None].astype(np.float32)


@dataclass
class Frame:
    """Where the network input sits in the photo: input = photo x scale - offset (the
    offset of a crop, in the resized photo's pixels)."""

    photo_size: Tuple[int, int]  # (w, h)
    input_size: Tuple[int, int]  # (w, h)
    scale: Tuple[float, float] = (1.0, 1.0)
    offset: Tuple[float, float] = (0.0, 0.0)
    notes: List[str] = field(default_factory=list)

    def to_photo(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (K, 4) x1 y1 x2 y2 of the input frame in the photo's, as mmdet's
        ``scale_boxes`` (float32 multiplication by 1 / scale)."""
        factor = np.array([1 / s for s in self.scale] * 2, np.float32)
        if self.offset != (0.0, 0.0):
            boxes = boxes + np.array(self.offset * 2, np.float32)
        return boxes * factor


def _resize(image: np.ndarray, size: Tuple[int, int], step: dict) -> np.ndarray:
    """mmcv.imresize: cv2 or Pillow, to size (w, h)."""
    import cv2

    if step.get('backend', 'cv2') == 'pillow':
        from PIL import Image

        resample = getattr(Image.Resampling, step.get('interpolation', 'bilinear').upper())
        return np.array(Image.fromarray(image).resize(size, resample))
    codes = dict(
        nearest=cv2.INTER_NEAREST,
        bilinear=cv2.INTER_LINEAR,
        bicubic=cv2.INTER_CUBIC,
        area=cv2.INTER_AREA,
        lanczos=cv2.INTER_LANCZOS4,
    )
    return cv2.resize(image, size, interpolation=codes[step.get('interpolation', 'bilinear')])


def pad_size(step: dict, w: int, h: int) -> Tuple[int, int]:
    """(w, h) of an image of w x h after a ``pad`` step, as mmcv's Pad computes it: a
    fixed size, a square and / or a multiple of ``size_divisor`` (which wins over a
    fixed size); never smaller than the image."""
    target_w, target_h = step['size'] or (w, h)
    if step['pad_to_square']:
        target_w = target_h = max(h, w)
    if step['size_divisor']:
        if not step['pad_to_square']:
            target_w, target_h = w, h
        divisor = step['size_divisor']
        target_w, target_h = -(-target_w // divisor) * divisor, -(-target_h // divisor) * divisor
    return max(target_w, w), max(target_h, h)


def _pad(image: np.ndarray, step: dict) -> np.ndarray:
    """mmcv's Pad with constant padding (``pad_size``), at the bottom and right."""
    import cv2

    h, w = image.shape[:2]
    target_w, target_h = pad_size(step, w, h)
    value = step['pad_val']
    value = list(value) if isinstance(value, list) else [value] * image.shape[2]
    return cv2.copyMakeBorder(
        image, 0, target_h - h, 0, target_w - w, cv2.BORDER_CONSTANT, value=value
    )


def _size_after(step: dict, w: int, h: int) -> Tuple[int, int]:
    """(w, h) after one resize step, as mmcv's Resize / mmpretrain's ResizeEdge compute it."""
    if step['op'] == 'resize_edge':
        by_width = (
            (step['edge'] == 'short' and w < h)
            or (step['edge'] == 'long' and w > h)
            or step['edge'] == 'width'
        )
        scale = step['scale']
        return (scale, int(scale * h / w)) if by_width else (int(scale * w / h), scale)
    if not step['keep_ratio']:
        return tuple(step['size'])
    factor = min(max(step['size']) / max(h, w), min(step['size']) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)  # mmcv.rescale_size


def preprocess(
    photo: np.ndarray, steps: Optional[List[dict]], graph_shape: Optional[Tuple[int, int]] = None
) -> Tuple[np.ndarray, Frame]:
    """The photo through the test pipeline's ``steps`` (see metadata.preprocess_steps), or,
    when there are none or their result does not fit a graph of fixed ``graph_shape``
    (H, W), resized to that shape; returns (network input HxWx3 uint8, Frame). The frame's
    notes say what differs from the config's pipeline and when a photo is stretched or
    upscaled a lot."""
    h, w = photo.shape[:2]
    frame = Frame(photo_size=(w, h), input_size=(w, h))
    image = photo
    scale_x = scale_y = 1.0
    offset_x = offset_y = 0.0
    for step in steps or []:
        cur_h, cur_w = image.shape[:2]
        if step['op'] == 'center_crop':
            crop_w, crop_h = min(step['size'][0], cur_w), min(step['size'][1], cur_h)
            if crop_w * crop_h < 0.5 * cur_w * cur_h:
                frame.notes.append(
                    f"the test pipeline's centre crop keeps {crop_w}x{crop_h} "
                    f'of the resized {cur_w}x{cur_h} photo '
                    f'({100 * crop_w * crop_h / (cur_w * cur_h):.0f} %)'
                )
            y1 = max(0, int(round((cur_h - crop_h) / 2.0)))
            x1 = max(0, int(round((cur_w - crop_w) / 2.0)))
            image = image[y1 : y1 + crop_h, x1 : x1 + crop_w]
            offset_x, offset_y = offset_x + x1, offset_y + y1
            continue
        if step['op'] == 'pad':  # bottom and right: the frame does not move
            image = _pad(image, step)
            continue
        new_w, new_h = _size_after(step, cur_w, cur_h)
        if new_w < 1 or new_h < 1:
            raise PredictError(
                f'The photo ({w}x{h}) is too elongated for the test '
                f"pipeline's {step['op']}: it would become {new_w}x{new_h} "
                f'pixels. Crop it closer to the aspect ratio of the training '
                f'images.'
            )
        image = _resize(image, (new_w, new_h), step)
        sx, sy = new_w / cur_w, new_h / cur_h
        scale_x, scale_y = scale_x * sx, scale_y * sy
        offset_x, offset_y = offset_x * sx, offset_y * sy
    if steps is None:
        frame.notes.append(
            "the config's test pipeline is not in the model's metadata or "
            'cannot be repeated: the photo was resized to the graph input'
        )
    if graph_shape is not None and image.shape[:2] != tuple(graph_shape):
        if steps:
            frame.notes.append(
                f'the test pipeline gives {image.shape[1]}x{image.shape[0]}, '
                f'the graph takes a fixed {graph_shape[1]}x{graph_shape[0]}: '
                f'the photo was resized to that instead (export with '
                f'--dynamic to follow the pipeline)'
            )
        image = _resize(photo, (graph_shape[1], graph_shape[0]), dict(op='resize'))
        scale_x, scale_y = graph_shape[1] / w, graph_shape[0] / h
        offset_x = offset_y = 0.0
    frame.input_size = (image.shape[1], image.shape[0])
    frame.scale, frame.offset = (scale_x, scale_y), (offset_x, offset_y)
    stretch = max(scale_x, scale_y) / min(scale_x, scale_y)
    if stretch > 1.5:
        frame.notes.append(
            f'the photo was stretched {stretch:.1f}x more along one axis than the other'
        )
    if min(scale_x, scale_y) > 4:
        frame.notes.append(
            f'the photo was upscaled {min(scale_x, scale_y):.0f}x: it is '
            f'much smaller than the images the model saw'
        )
    return np.ascontiguousarray(image), frame
