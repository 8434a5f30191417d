"""Loading and saving models as data: lipguard checkpoints and ONNX files."""

from lipguard.io.checkpoint import load_checkpoint, save_checkpoint
from lipguard.io.onnx_import import load_onnx

__all__ = ["load_checkpoint", "load_onnx", "save_checkpoint"]
