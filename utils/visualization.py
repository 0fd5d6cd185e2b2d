"""Figures and coloured images: training curves, prediction grids, overlays, diffusion processes.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`, rendered by Agg
when saved): no pyplot state and no backend switch, so importing this module never changes a
user's matplotlib backend, and it works on servers without a display. Functions that write a file return its Path.

Array conventions (torch tensors or numpy arrays are both accepted):
    image: (C, H, W) float in [0, 1] (C = 1 or 3), or (H, W, C) / (H, W) uint8 as read from disk.
    mask: (H, W) int: 0/1 for binary masks, class ids for multi-class masks.
    uncertainty: (H, W) float >= 0, the per-pixel std of ensemble probabilities (at most 0.5).
    diffusion-space frames x_t / x0: (K, H, W) float around [-1, 1], K = 1 (binary) or num_classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image  # noqa: E402

# Uncertainty maps are drawn from 0 to their own maximum: a confident model's map is small
# everywhere but at object boundaries, and would look black on the full range the measure can
# span. The floor keeps a map of pure noise-level values dark.
UNCERTAINTY_MIN_VMAX = 0.01
UNCERTAINTY_CMAP = "magma"
OVERLAY_ALPHA = 0.45
BACKGROUND_DIM = 0.6


# ---------------------------------------------------------------------------------------------
# Arrays -> RGB uint8
# ---------------------------------------------------------------------------------------------


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_rgb_uint8(image) -> np.ndarray:
    """Any image of the module's conventions -> (H, W, 3) uint8.

    Tensors and float arrays are channels-first (C, H, W) (or (H, W)) in [0, 1]; uint8 arrays
    are (H, W) or (H, W, C) as read from disk.
    """
    array = _numpy(image)
    if array.dtype != np.uint8:
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def class_palette(num_classes: int) -> np.ndarray:
    """(max(K, 2), 3) uint8 colours: background black, then distinct hues (tab10 / tab20)."""
    count = max(num_classes, 2)
    cmap = matplotlib.colormaps["tab10" if count <= 11 else "tab20"]
    colours = [cmap(i % cmap.N)[:3] for i in range(count - 1)]
    if count == 2:
        colours = [(1.0, 0.25, 0.1)]  # binary: one strong foreground colour
    return np.round(np.array([(0.0, 0.0, 0.0), *colours]) * 255).astype(np.uint8)


def colorize_mask(mask, num_classes: int = 1) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8: binary white on black, classes in palette colours."""
    labels = _numpy(mask).astype(np.int64)
    if num_classes == 1:
        return np.repeat(((labels > 0) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    palette = class_palette(num_classes)
    return palette[np.clip(labels, 0, len(palette) - 1)]


def overlay_mask(image, mask, num_classes: int = 1, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with the mask's foreground tinted and outlined in class colours, the background
    dimmed: (H, W, 3) uint8. image and mask must have the same H, W."""
    rgb = to_rgb_uint8(image).astype(np.float32)
    labels = _numpy(mask).astype(np.int64)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"mask {labels.shape} and image {rgb.shape[:2]} must have the same size")
    palette = class_palette(num_classes).astype(np.float32)
    colours = (
        palette[np.clip(labels, 0, len(palette) - 1)] if num_classes > 1 else palette[(labels > 0).astype(np.int64)]
    )
    foreground = (labels > 0)[..., None]
    # tint the mask and dim the rest: the mask stands out whatever the objects' own colours
    blended = np.where(foreground, (1 - alpha) * rgb + alpha * colours, rgb * BACKGROUND_DIM)
    # a solid outline keeps the mask visible where the tint resembles the object's own colour
    edges = (mask_edges(labels) & (labels > 0))[..., None]
    blended = np.where(edges, colours, blended)
    return np.round(blended).clip(0, 255).astype(np.uint8)


def mask_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose label differs from a 4-neighbour's (the image border is no edge)."""
    edges = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


def uncertainty_vmax(*maps) -> float:
    """The top of the colour scale for these uncertainty maps: their maximum, at least 0.01."""
    return max([UNCERTAINTY_MIN_VMAX, *(float(_numpy(m).max(initial=0)) for m in maps)])


def uncertainty_to_rgb(uncertainty, vmax: float | None = None) -> np.ndarray:
    """(H, W) uncertainty map -> (H, W, 3) uint8 through the magma colormap on [0, vmax]
    (default: `uncertainty_vmax` of this map)."""
    values = _numpy(uncertainty).astype(np.float32)
    vmax = uncertainty_vmax(values) if vmax is None else vmax
    return np.round(matplotlib.colormaps[UNCERTAINTY_CMAP](np.clip(values / vmax, 0.0, 1.0))[..., :3] * 255).astype(
        np.uint8
    )


def probability_to_uint8(probability) -> np.ndarray:
    """(H, W) probability in [0, 1] -> (H, W) uint8 grey levels 0..255."""
    return np.round(np.clip(_numpy(probability), 0.0, 1.0) * 255).astype(np.uint8)


def diffusion_to_rgb(x, num_classes: int = 1) -> np.ndarray:
    """A diffusion-space frame (K, H, W) around [-1, 1] -> (H, W, 3) uint8.

    Binary: the single channel as grey (-1 black, +1 white). Multi-class: the argmax class in
    palette colours, dimmed where the winning channel is weak (noise looks like coloured noise).
    """
    x = _numpy(x).astype(np.float32)
    if x.ndim == 2:
        x = x[None]
    if num_classes == 1 or x.shape[0] == 1:
        grey = np.round(np.clip((x[0] + 1) / 2, 0, 1) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    strength = np.clip((x.max(axis=0) + 1) / 2, 0.2, 1.0)[..., None]
    return np.round(colorize_mask(x.argmax(axis=0), num_classes) * strength).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def save_training_curves(history: list[dict], path) -> Path:
    """Loss (log scale), learning rate and validation Dice/IoU against epoch, in one PNG.

    history: one dict per epoch with `epoch`, `loss`, `lr` and optionally `val_dice`, `val_iou`
    (missing or None for epochs without validation: those points are simply left out).
    """
    fig = Figure(figsize=(13, 3.6))
    loss_ax, lr_ax, score_ax = fig.subplots(1, 3, sharex=True)
    losses = _series(history, "loss")
    if losses:
        loss_ax.plot(*zip(*losses), marker="o", markersize=3)
        if all(value > 0 for _, value in losses):
            loss_ax.set_yscale("log")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Training loss")

    rates = _series(history, "lr")
    if rates:
        lr_ax.plot(*zip(*rates), color="grey")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")

    for key, label in (("val_dice", "val Dice"), ("val_iou", "val IoU")):
        points = _series(history, key)
        if points:
            score_ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    score_ax.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(0, 1.02))
    if score_ax.lines:
        score_ax.legend(loc="lower right")
    else:
        score_ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=score_ax.transAxes)
    for ax in (loss_ax, lr_ax, score_ax):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)


def _series(history: list[dict], key: str) -> list[tuple]:
    """(epoch, value) for the epochs where `key` holds a finite number."""
    return [(entry["epoch"], entry[key]) for entry in history if _finite(entry.get(key))]


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def save_prediction_grid(
    images, true_masks, pred_masks, path, uncertainty=None, num_classes: int = 1, max_rows: int = 8
) -> Path:
    """One row per sample: image | ground truth | prediction over the image | uncertainty.

    images: (N, C, H, W) float in [0, 1], C = 1 or 3. true_masks: (N, H, W) int/bool, or None
    (column left out). pred_masks: (N, H, W). uncertainty: (N, H, W) float, or None (column
    left out). At most `max_rows` samples are drawn.
    """
    rows = min(len(images), max_rows)
    if rows == 0:
        raise ValueError("save_prediction_grid needs at least one image")
    columns = [("image", lambda i: to_rgb_uint8(images[i]))]
    if true_masks is not None:
        columns.append(("ground truth", lambda i: colorize_mask(true_masks[i], num_classes)))
    columns.append(("prediction", lambda i: overlay_mask(images[i], pred_masks[i], num_classes)))
    if uncertainty is not None:
        vmax = uncertainty_vmax(*(uncertainty[i] for i in range(rows)))  # one scale for the whole column
        columns.append(("uncertainty (std)", lambda i: uncertainty_to_rgb(uncertainty[i], vmax)))

    fig = Figure(figsize=(2.2 * len(columns), 2.2 * rows))
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for i in range(rows):
        for j, (title, render) in enumerate(columns):
            axes[i, j].imshow(render(i), interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=10)
    if uncertainty is not None:
        _uncertainty_colorbar(fig, axes[:, -1], vmax)
    return _save(fig, path)


def _uncertainty_colorbar(fig, axes, vmax: float) -> None:
    mappable = ScalarMappable(norm=Normalize(0, vmax), cmap=UNCERTAINTY_CMAP)
    fig.colorbar(mappable, ax=list(np.ravel(axes)), fraction=0.05, pad=0.02)


def save_forward_diffusion(mask_frames, timesteps: Sequence[int], path, image=None, num_classes: int = 1) -> Path:
    """The forward process q(x_t | x0) of one mask, one panel per timestep.

    mask_frames: (F, K, H, W) noised masks x_t in diffusion space, one per entry of `timesteps`
    (t = 0 is the clean mask). image: optional (C, H, W) in [0, 1], drawn first for context.
    """
    panels = [("image", to_rgb_uint8(image))] if image is not None else []
    panels += [(f"t = {t}", diffusion_to_rgb(frame, num_classes)) for t, frame in zip(timesteps, mask_frames)]
    fig = Figure(figsize=(1.9 * len(panels), 2.3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, rgb) in zip(axes[0], panels):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("Forward diffusion: the mask drowns in Gaussian noise", fontsize=11)
    return _save(fig, path)


def save_reverse_process(
    image,
    timesteps: Sequence[int],
    xt_frames,
    x0_frames,
    path,
    num_classes: int = 1,
    final_mask=None,
    next_timesteps: Sequence[int] | None = None,
    mean_frames=None,
) -> Path:
    """The reverse process step by step, one column per recorded step.

    Top row: the network's x0 estimate at timestep t. With `mean_frames` (time-ensembled
    sampling), a row of the mean of the estimates so far, which is what the sampler returns at
    the end. Bottom row: the sample x the DDIM step moved to, at the next timestep
    (`next_timesteps`, -1 for the final sample).
    image: (C, H, W) in [0, 1]. xt_frames, x0_frames, mean_frames: (F, K, H, W) in [-1, 1], one
    per entry of `timesteps`. final_mask: optional (H, W) drawn over the image in an extra last column.
    """
    rows = [("x0 estimate, t={t}", x0_frames)]
    if mean_frames is not None:
        rows.append(("mean up to t={t}", mean_frames))
    rows.append((None, xt_frames))
    columns = len(timesteps) + 1 + (final_mask is not None)
    fig = Figure(figsize=(1.8 * columns, 2.05 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    axes[0, 0].imshow(to_rgb_uint8(image), interpolation="nearest")
    axes[0, 0].set_title("image", fontsize=9)
    for r in range(1, len(rows)):
        axes[r, 0].axis("off")
    for j, t in enumerate(timesteps, start=1):
        for r, (title, frames) in enumerate(rows):
            axes[r, j].imshow(diffusion_to_rgb(frames[j - 1], num_classes), interpolation="nearest")
            if title is not None:
                axes[r, j].set_title(title.format(t=t), fontsize=8)
        if next_timesteps is not None:
            landed = next_timesteps[j - 1]
            axes[-1, j].set_title("final sample" if landed < 0 else f"sample x_{landed}", fontsize=8)
    if final_mask is not None:
        axes[0, -1].imshow(overlay_mask(image, final_mask, num_classes), interpolation="nearest")
        axes[0, -1].set_title("result", fontsize=9)
        for r in range(1, len(rows)):
            axes[r, -1].axis("off")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Reverse diffusion (DDIM): from noise to a mask", fontsize=11)
    return _save(fig, path)


def save_process_gif(
    image, xt_frames, x0_frames, path, num_classes: int = 1, min_height: int = 128, frame_ms: int = 120
) -> Path:
    """An animated GIF of the reverse process: each frame is [image | sample x_t | predicted x0].

    Small images are upscaled (nearest) to at least `min_height` pixels so the GIF is viewable;
    the last frame is held three times as long.
    """
    base = to_rgb_uint8(image)
    scale = max(1, math.ceil(min_height / base.shape[0]))
    frames = []
    for xt, x0 in zip(xt_frames, x0_frames):
        strip = np.concatenate([base, diffusion_to_rgb(xt, num_classes), diffusion_to_rgb(x0, num_classes)], axis=1)
        frames.append(Image.fromarray(strip.repeat(scale, axis=0).repeat(scale, axis=1)))
    if not frames:
        raise ValueError("save_process_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 3]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path
