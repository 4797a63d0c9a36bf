# DeepLabV3-MobileOne (configs/segmentation/deeplabv3_mobileone-*-512x512.py) to ONNX
# Runtime at a fixed 512x512 input: end2end.onnx returns the label map (1, 1, 512, 512)
# (with_argmax; False returns the logits instead).
_base_ = ['./_base_/onnxruntime.py']

onnx_config = dict(input_shape=[512, 512])
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
