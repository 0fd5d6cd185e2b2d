"""Data pipeline (data_utils, synthetic, image_io, pairing, augmentations, dataset tools) and helpers."""
