# MobileOne classifiers (configs/classification/*.py) to ONNX Runtime with the input size
# of the config's test pipeline (224x224 for Flowers-102): end2end.onnx returns the class
# scores after the head's softmax (1, num_classes).
_base_ = ['./_base_/onnxruntime.py']

codebase_config = dict(type='mmpretrain', task='Classification')
