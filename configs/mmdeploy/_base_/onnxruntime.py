# mmdeploy's configs/_base_/onnx_config.py and configs/_base_/backends/onnxruntime.py in
# one file (mmdeploy's wheel ships no configs). opset 11 as in mmdeploy; end2end.onnx
# takes the normalised image ('input') like every mmdeploy ONNX model.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=11,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    input_shape=None,
)
backend_config = dict(type='onnxruntime')
