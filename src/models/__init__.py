from .diffusion_model import DiffusionConfig, DiffusionSegmentation, SegmentationOutput
from .unet import UNet

__all__ = ["DiffusionConfig", "DiffusionSegmentation", "SegmentationOutput", "UNet"]
