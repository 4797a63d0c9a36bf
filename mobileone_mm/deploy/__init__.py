"""Deployment: deploy checkpoints of trained models, ONNX export, optimized inference,
the deploy-checkpoint hook."""
from .hooks import SaveDeployCheckpointHook
from .inference import optimize_for_inference

__all__ = ['SaveDeployCheckpointHook', 'optimize_for_inference']
