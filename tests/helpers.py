"""What many test files share: the checkout and the tiny config of each task (the
configs the synthetic data sets train; tests build random models from them)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIGS = {
    'detection': 'configs/detection/ssdlite_mobileone-s0_1xb8-16e_tiny-coco.py',
    'segmentation': 'configs/segmentation/'
    'deeplabv3_mobileone-s0-d8_1xb8-400iter_tiny-ade20k-128x128.py',
    'classification': 'configs/classification/mobileone-s0_1xb16-10e_tiny-flowers.py',
}
