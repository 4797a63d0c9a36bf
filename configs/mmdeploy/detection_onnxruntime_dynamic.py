# SSDLite-MobileOne to ONNX Runtime for any batch and input size (the tiny 128x128 config
# too). Outputs as in detection_onnxruntime_static-320x320.py.
_base_ = ['./detection_onnxruntime_static-320x320.py']

onnx_config = dict(
    input_shape=None,
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'dets': {0: 'batch', 1: 'num_dets'},
        'labels': {0: 'batch', 1: 'num_dets'},
    },
)
