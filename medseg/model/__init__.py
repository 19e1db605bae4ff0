"""SAM2-UNet in PyTorch: definition, checkpoints, ONNX export, INT8, fine-tuning.

This is the only package that imports torch; the runtime (segment, serve, eval) uses the
exported ONNX files through ``medseg.engine`` and never imports it.
"""

from medseg.model.config import NAMED_CONFIGS, Sam2UnetConfig, resolve_config
from medseg.model.sam2unet import SAM2UNet, build_sam2unet

__all__ = ["NAMED_CONFIGS", "SAM2UNet", "Sam2UnetConfig", "build_sam2unet", "resolve_config"]
