# DeepLabV3-MobileOne to ONNX Runtime for any batch and input size (the tiny 128x128
# configs too).
_base_ = ['./segmentation_onnxruntime_static-512x512.py']

onnx_config = dict(
    input_shape=None,
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'output': {0: 'batch', 2: 'height', 3: 'width'},
    },
)
