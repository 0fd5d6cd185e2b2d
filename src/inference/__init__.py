"""Inference: segment images with a trained checkpoint, alone, in batches or interactively.

predictor = Predictor.from_checkpoint("outputs/best.pth", options=PredictorOptions(steps=20, ensemble=4))
image = predictor.load("photo.jpg")              # (H, W, C) uint8
prediction = predictor.predict([image])[0]       # mask, probabilities, uncertainty at H x W
save_prediction(prediction, image, "results", "photo", predictor.num_classes, OutputOptions())
"""

from .batch import BatchSummary, run_batch
from .interactive import run_interactive
from .outputs import OutputOptions, save_prediction
from .predictor import InferenceError, Prediction, Predictor, PredictorOptions, ProcessTrace
from .process import forward_diffusion_frames
from .single import FileResult, segment_file

__all__ = [
    "BatchSummary",
    "FileResult",
    "InferenceError",
    "OutputOptions",
    "Prediction",
    "Predictor",
    "PredictorOptions",
    "ProcessTrace",
    "forward_diffusion_frames",
    "run_batch",
    "run_interactive",
    "save_prediction",
    "segment_file",
]
