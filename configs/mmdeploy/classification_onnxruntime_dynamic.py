# MobileOne classifiers to ONNX Runtime for any batch size.
_base_ = ['./classification_onnxruntime_static.py']

onnx_config = dict(dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}})
