from .config import DiffusionConfig
from .diffusion_model import DiffusionSegmentation, ReverseStep
from .segmentation import SegmentationOutput, SegmentationRun
from .unet import UNet

__all__ = ["DiffusionConfig", "DiffusionSegmentation", "ReverseStep", "SegmentationOutput", "SegmentationRun", "UNet"]
