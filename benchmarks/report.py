"""Figures and Markdown tables for BENCHMARKS.md from the results JSON of kvasir.py and speed.py.

    python -m benchmarks.report      # writes docs/images/bench_*.png and benchmarks/results/tables.md

and, from the 40-minute runs of ours and the plain UNet (else the 20-minute ones),
docs/images/reliability.png and docs/images/dice_vs_steps.png; tables.md gets the calibration /
uncertainty comparison and the paired Dice differences with 95 % bootstrap intervals.

Missing results files are skipped (their tables say so).
"""

import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from benchmarks import common
from benchmarks.kvasir import RECIPE_AUGMENTATION, RECIPE_LR
from benchmarks.uncertainty_ablation import UNET as UNET_UNCERTAINTY_ROW
from src.models.diffusion_model import SELF_CONDITION_SOURCES

IMAGES = common.ROOT / "docs" / "images"


def load(name: str):
    path = common.RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(mean, std=None, digits=3):
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def step_rows(ours: dict) -> list:
    """[(steps, ensemble, row)] sorted by ensemble then steps."""
    rows = []
    for key, row in ours["rows"].items():
        steps, ensemble = key.removeprefix("ddim").split("_ens")
        if ensemble.isdigit():  # not the rows of another sampling mode (common.MC_DROPOUT)
            rows.append((int(steps), int(ensemble), row))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def quality_table(ours, unet, peer, previous=None) -> str:
    lines = [
        "| model | params | sampler | Dice (mean ± std) | IoU (mean ± std) | val images | s / image (128 px, batch 8) | optimizer steps in budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if ours:
        for steps, ensemble, row in step_rows(ours):
            lines.append(
                f"| ours (diffusion) | {ours['train']['parameters'] / 1e6:.1f}M | DDIM {steps} steps, ensemble {ensemble} | "
                f"{fmt(row['dice'], row['dice_std'])} | {fmt(row['iou'], row['iou_std'])} | {row['images']} | "
                f"{row['seconds_per_image']:.2f} | {ours['train']['optimizer_steps']} |"
            )
    if previous:
        row = previous["rows"]["ddim10_ens1"]
        config = previous["config"]
        lines.append(
            f"| ours, earlier defaults (patch size {config.get('patch_size', 1)}, linear x0 output) | "
            f"{previous['train']['parameters'] / 1e6:.1f}M | DDIM 10 steps, ensemble 1 | {fmt(row['dice'], row['dice_std'])} | "
            f"{fmt(row['iou'], row['iou_std'])} | {row['images']} | {row['seconds_per_image']:.2f} | {previous['train']['optimizer_steps']} |"
        )
    for name, result, sampler in (
        ("smp.Unet resnet18, random init, Dice+BCE", unet, "one forward pass"),
        ("med-seg-diff-pytorch 0.3.3 (peer)", peer, None),
    ):
        if not result:
            lines.append(f"| {name} | – | – | not run | | | | |")
            continue
        for row in result["rows"].values():
            lines.append(
                f"| {name} | {result['train']['parameters'] / 1e6:.1f}M | {sampler or row.get('sampler', 'default')} | "
                f"{fmt(row['dice'], row['dice_std'])} | {fmt(row['iou'], row['iou_std'])} | {row['images']} | "
                f"{row['seconds_per_image']:.2f} | {result['train']['optimizer_steps']} |"
            )
    return "\n".join(lines)


def uncertainty_table(ours) -> str:
    if not ours:
        return "(not run)"
    u, name = ours["uncertainty_error"], {"predictive entropy": "entropy"}.get(ours.get("uncertainty_map"), "std")
    return "\n".join(
        [
            f"| ensemble | Pearson r ({name} vs error) | AUROC ({name} detects error pixels) | error pixels | mean {name} on errors "
            f"| mean {name} on correct pixels |",
            "|---|---|---|---|---|---|",
            f"| {ours['ensemble_key'].replace('_ens', ' steps, ').replace('ddim', 'DDIM ')} samples | {u['pearson_r']:.3f} | {u['auroc']:.3f} | "
            f"{100 * u['error_pixel_share']:.1f}% | {u['mean_std_on_errors']:.3f} | {u['mean_std_on_correct']:.3f} |",
        ]
    )


def ablation_table(ablation) -> str:
    if not ablation:
        return "(not run)"
    base = ablation.get("default_config", {})
    lines = [
        f"Variants override the default of the time (`{base.get('prediction_type')}`, `{base.get('schedule')}`, "
        f"dice_weight {base.get('dice_weight')}, input_scale {base.get('input_scale')}, patch_size {base.get('patch_size', 1)}, "
        f"bounded_x0 {base.get('bounded_x0', False)}).",
        "",
        f"| variant | Dice on {ablation['scored_on']} (DDIM {ablation['ddim_steps']}) | IoU | optimizer steps | params |",
        "|---|---|---|---|---|",
    ]
    for name, row in ablation["variants"].items():
        params = row["train"].get("parameters")
        lines.append(
            f"| {name} | {fmt(row['dice'], row['dice_std'])} | {row['iou']:.3f} | {row['train']['optimizer_steps']} | "
            f"{'–' if params is None else f'{params / 1e6:.1f}M'} |"
        )
    return "\n".join(lines)


def speed_tables(speed) -> str:
    if not speed:
        return "(not run)"
    peaks = speed["matmul_peak_tflops"]
    lines = [
        f"Matmul peak measured in the same run: bf16 {peaks['bf16']:.2f} TFLOP/s, fp32 {peaks['fp32']:.2f} TFLOP/s.",
        "",
        "| size | precision | batch | s / step (median) | images / s | params | GFLOP / step | achieved TFLOP/s | share of peak | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed["training"]:
        rss = "–" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(
            f"| {r['size']} | {r['precision']} | {r['batch']} | {r['step_seconds']:.2f} | {r['images_per_second']:.1f} | "
            f"{r['parameters'] / 1e6:.1f}M | {r['gflops_per_step']:.0f} | {r['achieved_tflops']:.3f} | {100 * r['share_of_peak']:.0f}% | {rss} |"
        )
    lines += ["", "| size | batch | DDIM steps | s / image |", "|---|---|---|---|"]
    for r in speed.get("sampling", []):
        lines.append(f"| {r['size']} | {r['batch']} | {r['steps']} | {r['seconds_per_image']:.3f} |")
    peer = speed.get("peer")
    if peer and "images_per_second" in peer:
        lines += [
            "",
            "| model | params | training images / s (128 px, batch 8, bf16) | default sampler s / image, batch 1 | batch 8 |",
            "|---|---|---|---|---|",
        ]
        ours = next(r for r in speed["training"] if r["size"] == peer["size"] and r["precision"] == "bf16")
        lines.append(
            f"| ours | {peer['ours_parameters'] / 1e6:.1f}M | {ours['images_per_second']:.1f} | "
            f"{peer.get('ours_seconds_per_step_batch1', float('nan')):.3f} per DDIM step | {peer.get('ours_seconds_per_step_batch8', float('nan')):.3f} per DDIM step |"
        )
        lines.append(
            f"| med-seg-diff-pytorch 0.3.3 (dim {peer['unet_dim']}) | {peer['parameters'] / 1e6:.1f}M | {peer['images_per_second']:.1f} | "
            f"{peer.get('default_sampler_seconds_per_image_batch1', float('nan')):.1f} ({peer.get('default_sampler_steps')} steps) | "
            f"{peer.get('default_sampler_seconds_per_image_batch8', float('nan')):.1f} |"
        )
        lines.append(f"\nOurs / peer training throughput: **{peer['ours_over_peer_training']:.2f}x**.")
    return "\n".join(lines)


def draw_ensemble_points(ax, ours) -> None:
    """Draws ours' ensembled settings (ensemble > 1) as single starred points with s.e.m. bars."""
    for s, e, row in step_rows(ours):
        if e > 1:
            ax.errorbar(
                [s],
                [row["dice"]],
                yerr=[row["dice_std"] / np.sqrt(row["images"])],
                marker="*",
                markersize=12,
                linestyle="none",
                capsize=3,
                label=f"ours, DDIM {s}, ensemble {e}",
            )


def draw_anchor_lines(ax, unet, peer) -> None:
    """Draws the plain UNet's and the MedSegDiff peer's Dice as horizontal lines, one per sampler row."""
    for result, label, colour in (
        (unet, "smp.Unet resnet18 (plain)", "tab:green"),
        (peer, "MedSegDiff peer", "tab:red"),
    ):
        for style, row in zip(("--", ":"), (result or {}).get("rows", {}).values()):
            sampler = row.get("sampler", "one pass")
            ax.axhline(
                row["dice"],
                linestyle=style,
                color=colour,
                label=f"{label}, {sampler}: {row['dice']:.3f} ({row['images']} img)",
            )


LONGER_BUDGET_COLOURS = (("tab:gray", "tab:olive"), ("tab:brown", "tab:cyan"))


def draw_longer_budget(ax, longer, colours=LONGER_BUDGET_COLOURS[0]) -> None:
    """Draws `longer` = (ours, unet) of a longer budget: ours' curve and the UNet's line in `colours`."""
    long_ours, long_unet = longer
    rows = [r for r in step_rows(long_ours) if r[1] == 1]
    ax.errorbar(
        [r[0] for r in rows],
        [r[2]["dice"] for r in rows],
        yerr=[r[2]["dice_std"] / np.sqrt(r[2]["images"]) for r in rows],
        marker="s",
        capsize=3,
        color=colours[0],
        label=f"ours, {long_ours['budget_minutes']:.0f}-min budget",
    )
    if long_unet:
        row = next(iter(long_unet["rows"].values()))
        ax.axhline(
            row["dice"],
            linestyle="-.",
            color=colours[1],
            label=f"smp.Unet, {long_unet['budget_minutes']:.0f}-min budget: {row['dice']:.3f}",
        )


def dice_vs_steps_plot(ours, unet, peer, longer=()) -> None:
    """Dice against DDIM steps for `ours` with the anchors as lines; `longer` = [(ours, unet)] of
    longer budgets, each in its own colours (those not run are left out)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    rows = [r for r in step_rows(ours) if r[1] == 1]
    steps = [r[0] for r in rows]
    dice = np.array([r[2]["dice"] for r in rows])
    sem = np.array([r[2]["dice_std"] / np.sqrt(r[2]["images"]) for r in rows])
    ax.errorbar(steps, dice, yerr=sem, marker="o", capsize=3, label="ours, DDIM, ensemble 1")
    draw_ensemble_points(ax, ours)
    draw_anchor_lines(ax, unet, peer)
    for pair, colours in zip(longer, LONGER_BUDGET_COLOURS):
        if pair[0]:
            draw_longer_budget(ax, pair, colours)
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("DDIM steps")
    ax.set_ylabel("mean Dice, Kvasir-SEG val (± s.e.m.)")
    ax.set_title(
        f"Dice vs sampling steps, {ours['image_size']} px, {ours['budget_minutes']:.0f}-min CPU budget unless noted"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "bench_dice_vs_steps.png", dpi=120)


def speed_plot(speed) -> None:
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    labels = [f"{r['size']}px\n" + r["precision"].replace("+", "+\n") for r in speed["training"]]
    values = [r["images_per_second"] for r in speed["training"]]
    colours = ["tab:blue"] * len(values)
    peer = speed.get("peer")
    if peer and "images_per_second" in peer:
        labels.append(f"{peer['size']}px\npeer bf16")
        values.append(peer["images_per_second"])
        colours.append("tab:red")
    left.bar(range(len(values)), values, color=colours)
    left.set_xticks(range(len(values)), labels, fontsize=7)
    left.set_ylabel("training images / s (batch 8)")
    left.set_title("Training throughput (median of alternated rounds)")
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    sampling = [r for r in speed.get("sampling", []) if r["size"] == 256]
    names = [f"{r['steps']} steps\nbatch {r['batch']}" for r in sampling]
    right.bar(range(len(sampling)), [r["seconds_per_image"] for r in sampling], color="tab:purple")
    right.set_xticks(range(len(sampling)), names, fontsize=8)
    right.set_ylabel("seconds per 256 px image")
    right.set_title("DDIM sampling, bf16")
    for i, r in enumerate(sampling):
        right.text(i, r["seconds_per_image"], f"{r['seconds_per_image']:.2f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "bench_speed.png", dpi=120)


# ---------------------------------------------------------------------------------------------
# Against the plain UNet: calibration, uncertainty, Dice vs steps, paired differences
# ---------------------------------------------------------------------------------------------


def row_label(key: str) -> str:
    """'ddim10_ens5' -> 'DDIM 10, ensemble 5' ('..., MC dropout' for common.MC_DROPOUT rows); other keys as they are."""
    if not key.startswith("ddim") or "_ens" not in key:
        return key
    mc_dropout = key.endswith(common.MC_DROPOUT)
    steps, ensemble = key.removesuffix(common.MC_DROPOUT).removeprefix("ddim").split("_ens")
    return f"DDIM {steps}, ensemble {ensemble}" + (", MC dropout" if mc_dropout else "")


def reliability_rows(ours, unet) -> list:
    """[(label, calibration result)] of ours's ensemble row, ours's DDIM 10 ensemble-1 row and the
    plain UNet, those that the results hold."""
    curves = []
    if ours and ours.get("calibration"):
        keys = [f"{ours.get('ensemble_key')}{common.MC_DROPOUT}", ours.get("ensemble_key"), "ddim10_ens1"]
        for key in dict.fromkeys(k for k in keys if k in ours["calibration"]):
            curves.append((f"ours, {row_label(key)}", ours["calibration"][key]))
    if unet and unet.get("calibration", {}).get("unet"):
        curves.append(("smp.Unet (plain), sigmoid", unet["calibration"]["unet"]))
    return curves


def reliability_plot(ours, unet, path=None):
    """Reliability diagram: observed foreground frequency against mean confidence per bin (15
    equal-width bins of p, pooled over val pixels at the original resolution), ours vs the plain
    UNet, with the diagonal; ECE in the legend; below, the share of pixels per bin (log).
    Returns the path written, or None when neither result has calibration statistics."""

    curves = reliability_rows(ours, unet)
    if not curves:
        return None
    path = Path(path or IMAGES / "reliability.png")
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="tab:gray", linewidth=1, label="perfect calibration")
    markers = ["o", "s", "^", "D", "v"]
    for index, (label, cal) in enumerate(curves):
        filled = [i for i, c in enumerate(cal["count"]) if c > 0]
        conf = [cal["confidence"][i] for i in filled]
        freq = [cal["frequency"][i] for i in filled]
        top.plot(conf, freq, marker=markers[index % len(markers)], label=f"{label}: ECE {cal['ece']:.4f}")
        share = np.array([cal["count"][i] for i in filled]) / max(cal["pixels"], 1)
        bottom.plot(conf, share, marker=markers[index % len(markers)], linestyle="-")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_aspect("equal")
    top.set_ylabel("observed foreground frequency")
    source = ours or unet
    top.set_title(
        f"Reliability, Kvasir-SEG val, {source.get('image_size', '?')} px, "
        f"{source.get('budget_minutes', float('nan')):.0f}-min budget",
        fontsize=9,
    )
    top.grid(alpha=0.3)
    top.legend(fontsize=7, loc="upper left")
    bottom.set_yscale("log")
    bottom.set_xlabel("mean predicted foreground probability (bin)")
    bottom.set_ylabel("share of pixels")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def sampler_heldout_plot(arms: list, path) -> Path | None:
    """Two panels from sampler_ablation.py --settings sources runs on held-out TRAIN images: Dice
    against DDIM steps (ensemble 1, the 10 x 5 point starred), and the reliability of the 10 x 5
    mean probability, pixels of every image and seed pooled. `arms`: [(label, [runs of its seeds])];
    an arm with no run on disk is left out. Returns the path written, or None without any run."""
    arms = [(label, [run for run in runs if run]) for label, runs in arms]
    arms = [(label, runs) for label, runs in arms if runs]
    if not arms:
        return None
    fig = Figure(figsize=(11, 4.2))
    steps_ax, reliability_ax = fig.subplots(1, 2)
    for index, (label, runs) in enumerate(arms):
        colour = f"C{index}"
        settings = runs[0]["rows"]  # every run of an arm scored the same settings, in this order
        dice = [np.mean([run["rows"][i]["dice"] for run in runs]) for i in range(len(settings))]
        single = [i for i, row in enumerate(settings) if row["ensemble"] == 1]
        ensembled = [i for i, row in enumerate(settings) if row["ensemble"] > 1]
        steps = [settings[i]["steps"] for i in single]
        steps_ax.plot(steps, [dice[i] for i in single], marker="o", color=colour, label=f"{label}, ensemble 1")
        for i in ensembled:
            steps_ax.plot([settings[i]["steps"]], [dice[i]], marker="*", markersize=12, color=colour, linestyle="none")
        bins = np.concatenate([run["rows"][ensembled[-1]]["per_image_calibration_bins"] for run in runs])
        count, sum_p, sum_y = np.asarray(bins, dtype=np.float64).sum(axis=0)
        filled = count > 0
        ece = common.pooled_ece(bins)
        reliability_ax.plot(
            sum_p[filled] / count[filled],
            sum_y[filled] / count[filled],
            marker="o",
            color=colour,
            label=f"{label}: ECE {ece:.3f}",
        )
    steps_ax.set_xscale("log")
    steps_ax.set_xticks(steps, [str(s) for s in steps])
    steps_ax.set_xlabel("DDIM steps (eta 1, time-ensembled; star: 10 steps x 5 samples)")
    steps_ax.set_ylabel("mean Dice, 100 held-out TRAIN images")
    steps_ax.legend(fontsize=8)
    reliability_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    reliability_ax.set_xlabel("mean probability in bin (10 steps x 5 samples)")
    reliability_ax.set_ylabel("fraction of foreground pixels")
    reliability_ax.legend(fontsize=8)
    seeds = sorted({run.get("checkpoint", "").split("seed")[-1].split("/")[0] for _, runs in arms for run in runs})
    fig.suptitle(f"Held-out TRAIN images, seeds {', '.join(seeds)} averaged", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def steps_plot(ours, unet, path=None):
    """Dice against DDIM steps of ours's ensemble-1 rows (± s.e.m.), the plain UNet as a horizontal
    line. Returns the path written, or None without ours."""

    if not ours:
        return None
    path = Path(path or IMAGES / "dice_vs_steps.png")
    rows = [r for r in step_rows(ours) if r[1] == 1]
    if not rows:
        return None
    steps = [r[0] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.errorbar(
        steps,
        [r[2]["dice"] for r in rows],
        yerr=[r[2]["dice_std"] / np.sqrt(r[2]["images"]) for r in rows],
        marker="o",
        capsize=3,
        label="ours, DDIM, ensemble 1",
    )
    draw_ensemble_points(ax, ours)
    if unet and unet.get("rows"):
        row = next(iter(unet["rows"].values()))
        ax.axhline(
            row["dice"], linestyle="--", color="tab:green", label=f"smp.Unet (plain), one pass: {row['dice']:.3f}"
        )
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("DDIM steps")
    ax.set_ylabel("mean Dice, Kvasir-SEG val (± s.e.m.)")
    ax.set_title(
        f"Dice vs sampling steps, {ours.get('image_size', '?')} px, "
        f"{ours.get('budget_minutes', float('nan')):.0f}-min budget",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _paired(a_result, a_key, b_result, b_key):
    """The two rows' per-image Dice when they were scored on the same images in the same order
    (scored_stems, where both record it), else None."""
    a_row, b_row = a_result["rows"].get(a_key), b_result["rows"].get(b_key)
    if not a_row or not b_row or "per_image_dice" not in a_row or "per_image_dice" not in b_row:
        return None
    a_stems, b_stems = a_result.get("scored_stems"), b_result.get("scored_stems")
    if a_stems is not None and b_stems is not None and a_stems != b_stems:
        return None
    if len(a_row["per_image_dice"]) != len(b_row["per_image_dice"]):
        return None
    return a_row["per_image_dice"], b_row["per_image_dice"]


def paired_table(ours, unet, n: int = 10000, seed: int = 0) -> str:
    """Paired per-image Dice differences with 95 % bootstrap intervals: every ours row vs the plain
    UNet, and every DDIM N ensemble-1 row vs DDIM 1."""
    if not ours:
        return "(not run)"
    lines = [
        "| comparison | mean Dice difference (paired) | 95 % bootstrap interval | interval excludes 0 | images |",
        "|---|---|---|---|---|",
    ]

    def add(label, pair):
        if pair is None:
            lines.append(f"| {label} | – | not paired (rows scored on different images) | | |")
            return
        mean, low, high = common.paired_bootstrap(*pair, n=n, seed=seed)
        verdict = "yes" if low > 0 or high < 0 else "no"
        lines.append(f"| {label} | {mean:+.4f} | [{low:+.4f}, {high:+.4f}] | {verdict} | {len(pair[0])} |")

    ordered = step_rows(ours)
    if unet and unet.get("rows"):
        unet_key = next(iter(unet["rows"]))
        for steps, ensemble, _ in ordered:
            add(
                f"ours {row_label(f'ddim{steps}_ens{ensemble}')} − smp.Unet",
                _paired(ours, f"ddim{steps}_ens{ensemble}", unet, unet_key),
            )
    if "ddim1_ens1" in ours["rows"]:
        for steps, ensemble, _ in ordered:
            if ensemble == 1 and steps != 1:
                add(f"ours DDIM {steps} − DDIM 1 (ensemble 1)", _paired(ours, f"ddim{steps}_ens1", ours, "ddim1_ens1"))
    return "\n".join(lines)


def confident_errors(calibration: dict) -> tuple[float, float]:
    """(share of the error pixels, share of the ECE) in the two outermost calibration bins, where
    the probability is below 1/bins or above 1 - 1/bins: errors made with confidence, which no
    uncertainty map that is small wherever the model is sure can rank."""
    count, confidence, frequency = (
        np.asarray(calibration[k], dtype=float) for k in ("count", "confidence", "frequency")
    )
    errors = count * np.where(confidence < 0.5, frequency, 1 - frequency)  # bins' pixels on the wrong side of 0.5
    gaps = count * np.abs(confidence - frequency)
    outer = [0, -1]
    return errors[outer].sum() / errors.sum(), gaps[outer].sum() / gaps.sum()


def confident_errors_table(runs: list) -> str:
    """Per seed: the share of the error pixels and of the ECE in the outermost bins, for ours's
    ensemble row and the plain UNet of the same seed. runs: [(seed, ours, unet)]."""
    lines = [
        "| seed | ours row | ours: error pixels / ECE in the outer bins | smp.Unet: error pixels / ECE in the outer bins |",
        "|---|---|---|---|",
    ]
    for seed, ours, unet in runs:
        if not ours or not unet:
            continue
        key = ours["ensemble_key"]
        (ours_errors, ours_ece), (unet_errors, unet_ece) = (
            confident_errors(ours["calibration"][key]),
            confident_errors(unet["calibration"]["unet"]),
        )
        lines.append(
            f"| {seed} | {row_label(key)} | {100 * ours_errors:.0f} % / {100 * ours_ece:.0f} % | "
            f"{100 * unet_errors:.0f} % / {100 * unet_ece:.0f} % |"
        )
    return "\n".join(lines) if len(lines) > 2 else "(not run)"


def calibration_table(ours, unet) -> str:
    """ECE, Brier score and the error-detection AUROC of each uncertainty: ours's ensemble std,
    p(1-p) of ours's (mean) probability, p(1-p) of the plain UNet's sigmoid."""
    if not ours and not unet:
        return "(not run)"
    lines = [
        "| model, row | ECE (15 bins) | Brier | uncertainty | AUROC (detects error pixels) | Pearson r | error pixels |",
        "|---|---|---|---|---|---|---|",
    ]

    def add(label, cal, unc_label, unc):
        ece = "–" if not cal else f"{cal['ece']:.4f}"
        brier = "–" if not cal else f"{cal['brier']:.4f}"
        if unc:
            lines.append(
                f"| {label} | {ece} | {brier} | {unc_label} | {unc['auroc']:.3f} | {unc['pearson_r']:.3f} | "
                f"{100 * unc['error_pixel_share']:.1f}% |"
            )
        else:
            lines.append(f"| {label} | {ece} | {brier} | – | – | – | – |")

    if ours and ours.get("calibration"):
        key = ours["ensemble_key"]
        cal = ours["calibration"].get(key)
        add(f"ours, {row_label(key)}", cal, ours.get("uncertainty_map", "ensemble std"), ours.get("uncertainty_error"))
        add(f"ours, {row_label(key)}", cal, "p(1-p) of the mean probability", ours.get("uncertainty_error_pq"))
        for other, unc in ours.get("uncertainty_error_std_rows", {}).items():
            add(f"ours, {row_label(other)}", ours["calibration"].get(other), "ensemble std", unc)
        for other, unc in ours.get("uncertainty_error_pq_rows", {}).items():
            if other != key:
                add(f"ours, {row_label(other)}", ours["calibration"].get(other), "p(1-p)", unc)
    elif ours:
        lines.append("| ours | (results file predates the calibration statistics) | | | | | |")
    if unet and unet.get("calibration"):
        add(
            "smp.Unet (plain)",
            unet["calibration"].get("unet"),
            "p(1-p) of the sigmoid",
            unet.get("uncertainty_error_pq"),
        )
    elif unet:
        lines.append("| smp.Unet (plain) | (results file predates the calibration statistics) | | | | | |")
    return "\n".join(lines)


def refinement_ablation_table(ablation) -> str:
    """Variants of the "make the steps refine" round: Dice at each DDIM step count they were scored
    with (ensemble 1) and with the ensemble, on the held-out TRAIN images."""
    if not ablation:
        return "(not run)"
    variants = {name: row for name, row in ablation["variants"].items() if "scores" in row}
    if not variants:
        return "(not run)"
    keys = list(next(iter(variants.values()))["scores"]["rows"])
    lines = [
        f"| variant | {' | '.join(row_label(k) for k in keys)} | DDIM 10 − DDIM 1 (paired, 95 % interval) | "
        "optimizer steps | params |",
        "|---|" + "---|" * (len(keys) + 3),
    ]
    for name, row in variants.items():
        rows = row["scores"]["rows"]
        mean, low, high = common.paired_bootstrap(
            rows["ddim10_ens1"]["per_image_dice"], rows["ddim1_ens1"]["per_image_dice"]
        )
        lines.append(
            f"| {name} | "
            + " | ".join(f"{rows[k]['dice']:.3f}" for k in keys)
            + f" | {mean:+.3f} [{low:+.3f}, {high:+.3f}] | {row['train']['optimizer_steps']} | "
            f"{row['train']['parameters'] / 1e6:.1f}M |"
        )
    return "\n".join(lines)


def variant_name(name: str, result: dict) -> str:
    """An ablation variant's name as the tables show it: with its lr and its augmentation where the
    run used another than the benchmark's recipe."""
    lr, augmentation = result.get("lr", RECIPE_LR), result.get("augmentation", RECIPE_AUGMENTATION)
    lr_part = "" if lr == RECIPE_LR else f", lr {lr:g}"
    return name + lr_part + ("" if augmentation == RECIPE_AUGMENTATION else f", {augmentation} augmentation")


def seeded_ablation_table(runs: list) -> str:
    """One row per (variant, seed) results file of an ablation round run one variant per process:
    Dice at each DDIM step count and with the ensemble on the held-out TRAIN images, and the paired
    difference of DDIM 10 from the `default` variant of the same seed, trained on the same device
    where one was (else on any); the spread of the defaults shows how much of a difference is noise."""
    rows = []
    for result in runs:
        if result:
            seed, device = int(result.get("seed", 42)), _trained_on(result)
            rows += [
                (variant_name(name, result), seed, device, row)
                for name, row in result["variants"].items()
                if "scores" in row
            ]
    if not rows:
        return "(not run)"
    rows.sort(key=lambda r: r[0] != "default")  # the reference rows first, the rest in file order
    defaults = {(seed, device): row["scores"]["rows"] for name, seed, device, row in rows if name == "default"}
    by_seed = {seed: base for (seed, _), base in defaults.items()}  # where no default ran on that device
    keys = list(rows[0][3]["scores"]["rows"])
    lines = [
        f"| variant | seed | {' | '.join(row_label(k) for k in keys)} | DDIM 10 − default of the same seed and "
        "device (paired, 95 % interval) | optimizer steps | params | trained on |",
        "|---|---|" + "---|" * (len(keys) + 4),
    ]
    for name, seed, device, row in rows:
        scores = row["scores"]["rows"]
        base = defaults.get((seed, device), by_seed.get(seed))
        versus = "–"
        if base and name != "default":
            mean, low, high = common.paired_bootstrap(
                scores["ddim10_ens1"]["per_image_dice"], base["ddim10_ens1"]["per_image_dice"]
            )
            versus = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
        lines.append(
            f"| {name} | {seed} | "
            + " | ".join(f"{scores[k]['dice']:.3f}" for k in keys)
            + f" | {versus} | {row['train']['optimizer_steps']} | {row['train']['parameters'] / 1e6:.1f}M | {device} |"
        )
    return "\n".join(lines)


def seed_averaged_ablation_table(runs: list, by_device: bool = True) -> str:
    """Per variant and device with more than one seed: at each DDIM row, the per-image difference
    from the `default` of the same seed and device, averaged over the seeds, with its bootstrap
    interval over the images (so the seed-to-seed variation of both is in the average). With
    `by_device` False the pairs of every device are averaged together (each still paired on its own)."""
    runs = list(filter(None, runs))
    defaults = {
        (int(r.get("seed", 42)), _trained_on(r)): r["variants"]["default"]["scores"]["rows"]
        for r in runs
        if "default" in r["variants"] and variant_name("default", r) == "default"
    }
    diffs, keys = {}, None
    for result in runs:
        default = defaults.get((int(result.get("seed", 42)), _trained_on(result)))
        for name, row in result["variants"].items():
            if variant_name(name, result) == "default" or "scores" not in row or default is None:
                continue
            scores = row["scores"]["rows"]
            keys = keys or list(scores)
            device = _trained_on(result) if by_device else "each paired on its own device"
            by_key = diffs.setdefault((variant_name(name, result), device), {})
            for key in keys:
                # a variant's MC dropout row against the default's ensemble (which has none)
                base = default.get(key) or default[key.removesuffix(common.MC_DROPOUT)]
                pair = np.asarray(scores[key]["per_image_dice"]) - np.asarray(base["per_image_dice"])
                by_key.setdefault(key, []).append(pair)
    rows = {variant: by_key for variant, by_key in diffs.items() if len(next(iter(by_key.values()))) > 1}
    if not rows:
        return "(no variant with two seeds)"
    lines = [
        f"| variant − default, mean over seeds | trained on | seeds | {' | '.join(row_label(k) for k in keys)} |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for (name, device), by_key in rows.items():
        cells = [text for _, _, text in averaged_differences(by_key)]
        lines.append(f"| {name} | {device} | {len(by_key[keys[0]])} | {' | '.join(cells)} |")
    return "\n".join(lines)


def heldout_unet_table(
    runs: list, unets: list, variant: str = "default", augmentation: str = RECIPE_AUGMENTATION
) -> str:
    """The plain UNet trained on the ablations' fit split (kvasir --model unet --held-out) against
    `variant` in each seed's ablation run trained with the recipe's lr and `augmentation`, over the
    same held-out TRAIN images: each run with the UNet of its own seed where one ran, else with the
    first UNet (the caller passes UNets of the same augmentation)."""
    unets = {int(u.get("seed", 42)): u for u in filter(None, unets)}
    if not unets:
        return "(not run)"
    lines = [
        f"| ours {variant}, seed | trained on | ours row | ours Dice | UNet seed | smp.Unet Dice "
        "| ours − UNet, paired [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    per_row = {key: [] for key in SEED_ROWS}
    wanted = variant_name(variant, {"augmentation": augmentation})  # the name of a run of that recipe
    for result in filter(None, runs):
        default = result["variants"].get(variant)
        if variant_name(variant, result) != wanted or not default or "scores" not in default:
            continue
        seed = int(result.get("seed", 42))
        unet = unets.get(seed, next(iter(unets.values())))
        unet_key = next(iter(unet["rows"]))
        scores = default["scores"]
        for key in SEED_ROWS:
            pair = _paired(scores, key, unet, unet_key)
            if pair is None:
                continue
            mean, low, high = common.paired_bootstrap(*pair)
            per_row[key].append(np.asarray(pair[0]) - np.asarray(pair[1]))
            lines.append(
                f"| {seed} | {_trained_on(result)} | {row_label(key)} | {scores['rows'][key]['dice']:.3f} | "
                f"{unet.get('seed', 42)} | {unet['rows'][unet_key]['dice']:.3f} | {mean:+.3f} [{low:+.3f}, {high:+.3f}] |"
            )
    for key, runs_averaged, text in averaged_differences(per_row):
        lines.append(f"| mean of {runs_averaged} runs | | {row_label(key)} | | | | **{text}** |")
    return "\n".join(lines)


def heldout_uncertainty_table(runs: list, unets: list) -> str:
    """Per seed and variant of an ablation round, each ensemble row's Dice, ECE and AUROC as an
    error detector of p(1-p) of its mean and of its samples' std (the rounds that record it),
    beside the plain UNets on the same held-out images (p(1-p) of the sigmoid)."""
    lines = [
        "| model, seed | row | Dice | ECE (15 bins) | AUROC, p(1-p) of the mean | AUROC, ensemble std | trained on |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in filter(None, runs):
        seed = int(result.get("seed", 42))
        for name, variant in result["variants"].items():
            scores = variant.get("scores", {})
            for key, unc in scores.get("uncertainty_error_std_rows", {}).items():
                lines.append(
                    f"| {variant_name(name, result)}, {seed} | {row_label(key)} | {scores['rows'][key]['dice']:.3f} | "
                    f"{scores['calibration'][key]['ece']:.4f} | {scores['uncertainty_error_pq_rows'][key]['auroc']:.3f} | "
                    f"{unc['auroc']:.3f} | {_trained_on(result)} |"
                )
    for unet in filter(None, unets):
        lines.append(
            f"| {variant_name('smp.Unet (plain)', unet)}, {unet.get('seed', 42)} | sigmoid | {unet['rows']['unet']['dice']:.3f} | "
            f"{unet['calibration']['unet']['ece']:.4f} | {unet['uncertainty_error_pq']['auroc']:.3f} | – | "
            f"{_trained_on(unet)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else "(not run)"


def exact_uncertainty_table(runs: list) -> str:
    """`runs` = [(label, results file of `uncertainty_ablation.py heldout --unet-weights`)]: per pair
    of checkpoints, ours' 10 x 5 ensemble std against the plain UNet's p(1-p) on the same held-out
    images, every pixel ranked, with the paired bootstrap intervals the script recorded."""
    std_row, unet_row = "K=5: ens std (current)", UNET_UNCERTAINTY_ROW
    lines = [
        "| ours against the UNet | ours: steps, std AUROC | UNet p(1-p) AUROC | ours − UNet, AUROC [95 % CI] "
        "| ECE ours / UNet | ours − UNet, Dice [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for label, name in runs:
        result = load(name)
        if not result or unet_row not in result["rows"]:
            continue
        ours, unet, paired = result["rows"][std_row], result["rows"][unet_row], result["bootstrap"][std_row]
        auroc, dice = paired["auroc_minus_unet"], paired["dice_minus_unet"]
        lines.append(
            f"| {label} | {result['models']['ours_steps']:,}, {ours['auroc']:.3f} | {unet['auroc']:.3f} | "
            f"{auroc[0]:+.3f} [{auroc[1]:+.3f}, {auroc[2]:+.3f}] | {ours['ece']:.4f} / {unet['ece']:.4f} | "
            f"{dice[0]:+.3f} [{dice[1]:+.3f}, {dice[2]:+.3f}] |"
        )
    return "\n".join(lines) if len(lines) > 2 else "(not run)"


def averaged_differences(per_row: dict, digits: int = 3) -> list:
    """[(row key, runs, "mean [low, high]")]: per row, the per-image differences of several runs
    over the same images averaged, with the bootstrap interval over the images (so each run's own
    variation is in the average). Rows with one run, or runs over different image counts, are left out."""
    averaged = []
    for key, diffs in per_row.items():
        if len(diffs) > 1 and len({d.size for d in diffs}) == 1:
            average = np.mean(diffs, axis=0)
            mean, low, high = common.paired_bootstrap(average, np.zeros_like(average))
            averaged.append((key, len(diffs), f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"))
    return averaged


def mean_difference(diffs: list, digits: int = 3) -> str:
    """ "mean [low, high]" of per-image differences over the same images: one run's paired
    difference, or several runs' averaged (averaged_differences); "–" when there are none."""
    if len(diffs) == 1:
        mean, low, high = common.paired_bootstrap(diffs[0], np.zeros_like(diffs[0]))
        return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    averaged = averaged_differences({"": diffs}, digits)
    return averaged[0][2] if averaged else "–"


def as_default(result, variant: str):
    """A copy of an ablation result whose `variant` row is named "default": a run of what is today's
    default, made when that was a variant, as the reference of a later round's pairs (None stays None)."""
    if not result:
        return result
    return {**result, "variants": {("default" if n == variant else n): r for n, r in result["variants"].items()}}


def heldout_round_section(title: str, runs: list) -> str:
    """A held-out round of variants against today's default, paired per seed: the per-seed and
    seed-averaged tables, what the steps add for each variant on its own, and the uncertainty rows."""
    return (
        f"{title}\n\n"
        + seeded_ablation_table(runs)
        + "\n\n"
        + seed_averaged_ablation_table(runs)
        + "\n\nWhat the steps add, each variant on its own:\n\n"
        + "\n\n".join(
            f"{name}:\n\n" + steps_seeds_table(seeded) for name, seeded in seeded_scores_by_variant(runs).items()
        )
        + "\n\nUncertainty of each ensemble row:\n\n"
        + heldout_uncertainty_table(runs, [])
    )


def seeded_scores_by_variant(runs: list) -> dict:
    """{variant name: [(seed, scores)]} of an ablation round's results files, for steps_seeds_table:
    what each variant's steps add on the held-out TRAIN images, seed by seed."""
    by_variant = {}
    for result in filter(None, runs):
        for name, row in result["variants"].items():
            if "scores" in row:
                by_variant.setdefault(variant_name(name, result), []).append(
                    (int(result.get("seed", 42)), row["scores"])
                )
    return by_variant


def _trained_on(result) -> str:
    """The device a result was trained on: its GPU, or its CPU model without the clock some hosts
    append ("Intel(R) Xeon(R) Processor @ 2.80GHz" is the machine kind the earlier rounds name
    without it, and runs are paired by kind)."""
    machine = result.get("machine", {})
    return machine.get("gpu") or (machine.get("cpu") or "?").split(" @ ")[0]


def sampler_table(sampler) -> str:
    """benchmarks/sampler_ablation.py: sampler settings of one checkpoint, paired against DDIM 1."""
    if not sampler:
        return "(not run)"
    base = next(r for r in sampler["rows"] if r["steps"] == 1 and r["ensemble"] == 1)
    lines = [
        f"Checkpoint `{sampler['checkpoint']}`, scored on {sampler['scored_on']}.",
        "",
        "| DDIM steps | eta | time-ensembled | samples | Dice | − DDIM 1 (paired, 95 % interval) |",
        "|---|---|---|---|---|---|",
    ]
    for row in sampler["rows"]:
        mean, low, high = common.paired_bootstrap(row["per_image_dice"], base["per_image_dice"])
        lines.append(
            f"| {row['steps']} | {row['eta']:g} | {'yes' if row['time_ensemble'] else 'no'} | {row['ensemble']} | "
            f"{row['dice']:.3f} | {mean:+.3f} [{low:+.3f}, {high:+.3f}] |"
        )
    trajectory = ", ".join(f"t={t}: {d:.3f}" for t, d in sampler["trajectory_ddim10"].items())
    lines += ["", f"Dice of each step's own x0 estimate along deterministic DDIM 10: {trajectory}."]
    return "\n".join(lines)


def _source_rows(sampler: dict) -> dict:
    """{(steps, ensemble): {source: row}} of a sampler_ablation run with several self-condition
    sources; a one-step row, which hands no estimate on, stands under every source."""
    rows = {}
    for row in sampler["rows"]:
        by_source = rows.setdefault((row["steps"], row["ensemble"]), {})
        for source in [row["self_condition_on"]] if row.get("self_condition_on") else SELF_CONDITION_SOURCES:
            by_source[source] = row
    return rows


def _ece_difference(bins_a, bins_b):
    return common.ece_from_bins(*np.moveaxis(bins_a, -2, 0)) - common.ece_from_bins(*np.moveaxis(bins_b, -2, 0))


def sources_table(samplers: list, new: str = "mean", old: str = "last") -> str:
    """sampler_ablation --settings sources on several checkpoints (seeds) of one split: per setting,
    Dice and ECE with each step handed the mean of the estimates so far or the last one; the Dice
    difference per image averaged over the checkpoints with its bootstrap interval, and each
    checkpoint's ECE difference with an image-bootstrap interval of the pooled ECE."""
    samplers = [s for s in samplers if s]
    if not samplers:
        return "(not run)"
    per_run = [_source_rows(s) for s in samplers]
    lines = [
        f"| DDIM steps x samples | Dice, {new} (per checkpoint) | Dice, {old} | {new} − {old}, Dice, mean over "
        f"checkpoints [95 % CI] | ECE, {new} | ECE, {old} | {new} − {old}, ECE per checkpoint [95 % CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in per_run[0]:
        pairs = [rows[setting] for rows in per_run if new in rows.get(setting, {}) and old in rows.get(setting, {})]
        if not pairs or pairs[0][new] is pairs[0][old]:  # one step: the same row under both
            continue
        diffs = [np.asarray(p[new]["per_image_dice"]) - np.asarray(p[old]["per_image_dice"]) for p in pairs]
        ece_diffs = []
        for pair in pairs:
            bins = [np.asarray(pair[source]["per_image_calibration_bins"], dtype=np.float64) for source in (new, old)]
            mean, low, high = common.pooled_bootstrap(_ece_difference, bins, n=2000)
            ece_diffs.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]")

        def joined(source, metric, digits):
            return " / ".join(f"{p[source][metric]:.{digits}f}" for p in pairs)

        steps, ensemble = setting
        lines.append(
            f"| {steps} x {ensemble} | {joined(new, 'dice', 3)} | {joined(old, 'dice', 3)} | "
            f"{mean_difference(diffs)} | {joined(new, 'ece', 4)} | {joined(old, 'ece', 4)} | "
            f"{' / '.join(ece_diffs)} |"
        )
    checkpoints = ", ".join(f"`{s['checkpoint']}`" for s in samplers)
    return "\n".join(lines) + f"\n\nCheckpoints {checkpoints}, scored on {samplers[0]['scored_on']}."


def checkpoints_compared_table(pairs: list, source: str = "mean") -> str:
    """`pairs` = [(variant, default)]: sampler_ablation runs of two checkpoints per seed on the same
    images with the same sampling seeds: per setting, both Dice and ECE and the per-image Dice
    difference averaged over the seeds, with its bootstrap interval."""
    pairs = [(variant, default) for variant, default in pairs if variant and default]
    if not pairs:
        return "(not run)"
    lines = [
        "| DDIM steps x samples | Dice variant / default, per seed | ECE variant / default, per seed "
        "| variant − default, Dice, mean over seeds [95 % CI] |",
        "|---|---|---|---|",
    ]
    rows = [(_source_rows(v), _source_rows(d)) for v, d in pairs]
    for setting in rows[0][0]:
        found = [(v[setting][source], d[setting][source]) for v, d in rows if setting in v and setting in d]
        if not found:
            continue
        diffs = [np.asarray(a["per_image_dice"]) - np.asarray(b["per_image_dice"]) for a, b in found]
        steps, ensemble = setting
        dice = "; ".join(f"{a['dice']:.3f} / {b['dice']:.3f}" for a, b in found)
        ece = "; ".join(f"{a['ece']:.4f} / {b['ece']:.4f}" for a, b in found)
        lines.append(f"| {steps} x {ensemble} | {dice} | {ece} | {mean_difference(diffs)} |")
    checkpoints = "; ".join(f"`{v['checkpoint']}` vs `{d['checkpoint']}`" for v, d in pairs)
    return "\n".join(lines) + f"\n\nCheckpoints: {checkpoints}."


def sampler_change_table(runs: list, rows=("ddim1_ens1", "ddim10_ens1", "ddim50_ens1", "ddim10_ens5")) -> str:
    """`runs` = [(seed, new, old)]: the same checkpoints scored by benchmarks/kvasir.py with a new
    and an old sampler: per row, each seed's Dice and ECE under both and the per-image Dice
    difference averaged over the seeds, with its bootstrap interval."""
    runs = [(seed, new, old) for seed, new, old in runs if new and old]
    if not runs:
        return "(not run)"
    lines = [
        "| row | Dice new / old, per seed | ECE new / old, per seed | new − old, Dice, mean over seeds [95 % CI] |"
    ]
    lines.append("|---|---|---|---|")
    for key in rows:
        pairs = [(new, old) for _, new, old in runs if _paired(new, key, old, key)]
        if not pairs:
            continue
        diffs = [np.subtract(*_paired(new, key, old, key)) for new, old in pairs]
        dice = "; ".join(f"{new['rows'][key]['dice']:.3f} / {old['rows'][key]['dice']:.3f}" for new, old in pairs)
        ece = "; ".join(
            f"{new['calibration'][key]['ece']:.4f} / {old['calibration'][key]['ece']:.4f}" for new, old in pairs
        )
        lines.append(f"| {row_label(key)} | {dice} | {ece} | {mean_difference(diffs)} |")
    return "\n".join(lines)


def merged_ablation(pattern: str):
    """All ablation results files matching `pattern` as one, in file-name order; a variant run with
    a learning rate other than the default gets it in its name."""
    merged = None
    for path in sorted(common.RESULTS.glob(pattern)):
        if path.name.endswith("_smoke.json"):
            continue
        result = json.loads(path.read_text())
        variants = {variant_name(name, result): row for name, row in result["variants"].items()}
        if merged is None:
            merged = {**result, "variants": {}}
        merged["variants"].update(variants)
    return merged


SEED_ROWS = ("ddim10_ens1", "ddim10_ens5", "ddim10_ens5" + common.MC_DROPOUT)  # ours' rows set beside the UNet


def seeds_table(runs) -> str:
    """`runs` = [(seed, ours, unet)] of one budget: per seed, ours' SEED_ROWS and the UNet with the
    paired difference; then the per-image difference averaged over the seeds, with its bootstrap
    interval over the images (seed-to-seed variation of each model is then in the average)."""
    runs = [(seed, ours, unet) for seed, ours, unet in runs if ours and unet]
    if not runs:
        return "(not run)"
    lines = ["| seed | ours row | ours Dice | smp.Unet Dice | ours − UNet, paired [95 % CI] |", "|---|---|---|---|---|"]
    per_row = {key: [] for key in SEED_ROWS}
    for seed, ours, unet in runs:
        unet_key = next(iter(unet["rows"]))
        for key in SEED_ROWS:
            pair = _paired(ours, key, unet, unet_key)
            if pair is None:
                continue
            mean, low, high = common.paired_bootstrap(*pair)
            per_row[key].append(np.asarray(pair[0]) - np.asarray(pair[1]))
            lines.append(
                f"| {seed} | {row_label(key)} | {ours['rows'][key]['dice']:.3f} | {unet['rows'][unet_key]['dice']:.3f} | "
                f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] |"
            )
    for key, seeds, text in averaged_differences(per_row, digits=4):
        lines.append(f"| mean of {seeds} seeds | {row_label(key)} | | | **{text}** |")
    return "\n".join(lines)


def recipe_gap_table(runs: list, rows=("ddim10_ens1", "ddim10_ens5")) -> str:
    """`runs` = [(seed, ours new, ours old, UNet new, UNet old)]: two training recipes, each given to
    both models in the same round. Per row of ours, ours − UNet under each recipe and how much the
    new recipe widens that gap (the per-image difference of the two paired differences), per seed
    and averaged over the seeds with its bootstrap interval over the images."""
    runs = [run for run in runs if all(run[1:])]
    if not runs:
        return "(not run)"
    lines = [
        "| ours row | seed | ours − UNet, new recipe | ours − UNet, old recipe | gap new − gap old [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for key in rows:
        gaps = []  # per seed: (ours − UNet new, ours − UNet old, their difference), per image
        for seed, ours_new, ours_old, unet_new, unet_old in runs:
            pairs = [
                _paired(ours, key, unet, next(iter(unet["rows"])))
                for ours, unet in ((ours_new, unet_new), (ours_old, unet_old))
            ]
            if None in pairs or _paired(ours_new, key, ours_old, key) is None:  # each pair on the same images
                continue
            new, old = (np.subtract(*pair) for pair in pairs)
            gaps.append((new, old, new - old))
            lines.append(f"| {row_label(key)} | {seed} | {' | '.join(mean_difference([d]) for d in gaps[-1])} |")
        if len(gaps) > 1:
            cells = " | ".join(f"**{mean_difference(list(part))}**" for part in zip(*gaps))
            lines.append(f"| {row_label(key)} | mean of {len(gaps)} seeds | {cells} |")
    return "\n".join(lines)


STEP_PAIRS = (  # (row, row it is compared with) of the steps tables
    ("ddim5_ens1", "ddim1_ens1"),
    ("ddim10_ens1", "ddim1_ens1"),
    ("ddim50_ens1", "ddim10_ens1"),
    ("ddim10_ens5", "ddim1_ens1"),
    ("ddim10_ens5", "ddim10_ens1"),
    ("ddim10_ens5" + common.MC_DROPOUT, "ddim10_ens5"),
)


def steps_seeds_table(runs: list) -> str:
    """`runs` = [(seed, ours)] of one budget: per pair of rows in STEP_PAIRS, each seed's paired
    Dice difference and the per-image difference averaged over the seeds, with its bootstrap interval."""
    runs = [(seed, ours) for seed, ours in runs if ours]
    if not runs:
        return "(not run)"
    lines = [
        f"| comparison | {' | '.join(f'seed {seed}' for seed, _ in runs)} | mean over seeds [95 % CI] |",
        "|---|" + "---|" * len(runs) + "---|",
    ]
    for a, b in STEP_PAIRS:
        pairs = [_paired(ours, a, ours, b) for _, ours in runs]
        if any(pair is None for pair in pairs):
            continue
        diffs = [np.subtract(*pair) for pair in pairs]
        cells = " | ".join(f"{d.mean():+.4f}" for d in diffs)
        lines.append(f"| {row_label(a)} − {row_label(b)} | {cells} | {mean_difference(diffs, digits=4)} |")
    return "\n".join(lines)


def seeds_section(title: str, ours, unet, ours_seed43: str, unet_seed43: str, more=()) -> str:
    """The seeds table of one budget: seed 42's results as given, seed 43's loaded by file name, and
    any `more` seeds as (seed, ours file, UNet file)."""
    files = [(43, ours_seed43, unet_seed43), *more]
    return f"## Seeds, {title}\n\n" + seeds_table(
        [(42, ours, unet), *[(seed, load(ours_file), load(unet_file)) for seed, ours_file, unet_file in files]]
    )


ROUND_SEEDS = (42, 43, 44)


def round_run(slug: str, minutes: int, seed: int, size=128):
    """A round's val run of one budget and seed: kvasir_ours_<size>_<slug>fair<minutes>[_seed<N>].json,
    loaded (None if it was not run)."""
    return load(f"kvasir_ours_{size}_{slug}fair{minutes}{common.seed_suffix(seed)}.json")


def round_unet(unets: dict, minutes: int, seed: int, size=128):
    """The plain UNet of one budget and seed: `unets` = {minutes: seed 42's UNet result}; the other
    seeds' are kvasir_unet_<size>[_<minutes>min]_seed<N>.json (None if it was not run)."""
    budget = "" if minutes == 20 else f"_{minutes}min"
    return unets[minutes] if seed == 42 else load(f"kvasir_unet_{size}{budget}_seed{seed}.json")


def round_val_sections(slug: str, whose: str, old_slug: str, change_title: str, unets: dict, size=128) -> list:
    """A round's val sections at each budget of equal idle-core time that it ran, from its
    round_run files (seeds ROUND_SEEDS, whichever exist): against the UNet of each seed, its steps,
    and against the `old_slug` round's runs of the same seeds where those exist (`change_title`, a
    format string of {minutes}). `unets` = {minutes: seed 42's UNet result}; the other seeds' UNets
    are kvasir_unet_<size>[_<minutes>min]_seed<N>.json."""

    sections = []
    for minutes in unets:
        runs = [(seed, round_run(slug, minutes, seed, size)) for seed in ROUND_SEEDS]
        if not any(ours for _, ours in runs):
            continue
        title = f"{size} px, {minutes} minutes at equal idle-core time, {whose}"
        sections.append(
            f"## Seeds, {title}\n\n"
            + seeds_table([(seed, ours, round_unet(unets, minutes, seed, size)) for seed, ours in runs])
        )
        sections.append(f"## Steps, {title}\n\n" + steps_seeds_table(runs))
        old = [(seed, ours, round_run(old_slug, minutes, seed, size)) for seed, ours in runs]
        if any(previous for _, _, previous in old):
            sections.append(f"## {change_title.format(minutes=minutes)}\n\n" + sampler_change_table(old))
    return sections


def budget_sections(title: str, ours, unet, peer=None, previous=None) -> list:
    """Quality, calibration and paired-difference tables of one training budget."""
    return [
        f"## Quality, {title}\n\n" + quality_table(ours, unet, peer, previous),
        f"## Calibration and uncertainty vs the plain UNet, {title}\n\n" + calibration_table(ours, unet),
        f"## Paired Dice differences, {title}\n\n" + paired_table(ours, unet),
    ]


def first_of(*names):
    """The first of the results files that exists (newer runs first), loaded; None if none does."""
    return next((result for result in map(load, names) if result), None)


def main() -> int:
    size = 128
    # 20 minutes: the same-round pair run after the resize unification (issue 13) where it exists
    ours = first_of(f"kvasir_ours_{size}_issue13.json", f"kvasir_ours_{size}.json")
    unet = first_of(f"kvasir_unet_{size}_issue13.json", f"kvasir_unet_{size}.json")
    peer = first_of(f"kvasir_peer_{size}_wd0.json", f"kvasir_peer_{size}.json")  # weight decay 0, as ours
    previous = load(f"kvasir_ours_{size}_v1_patch1.json")  # the same run with the defaults before the 128 px ablation
    ours_long, unet_long = load(f"kvasir_ours_{size}_40min.json"), load(f"kvasir_unet_{size}_40min.json")
    ours_60, unet_60 = load(f"kvasir_ours_{size}_60min.json"), load(f"kvasir_unet_{size}_60min.json")
    # the fourth round's re-runs of ours at the step budgets of equal idle-core time (step_budget.py
    # now times both self-conditioning branches; the budgets above gave ours 1.17x the UNet's time)
    fair = [
        (minutes, load(f"kvasir_ours_{size}_fair{minutes}.json"), u)
        for minutes, u in ((20, unet), (40, unet_long), (60, unet_60))
    ]
    # the sixth round's default (zero-initialised diffusion inputs) at the same budgets
    sixth = [
        (minutes, load(f"kvasir_ours_{size}_r6fair{minutes}.json"), u) for minutes, u in ((20, unet), (40, unet_long))
    ]
    # the seventh round: the same checkpoints, each sampling step handed the mean of the estimates so far
    seventh = [
        (minutes, load(f"kvasir_ours_{size}_r7fair{minutes}.json"), u)
        for minutes, u in ((20, unet), (40, unet_long), (60, unet_60))
    ]
    # the ninth round's default: the UNet encodes the image once, a light head denoises per step
    ninth = [
        (minutes, load(f"kvasir_ours_{size}_r9fair{minutes}.json"), u) for minutes, u in ((20, unet), (40, unet_long))
    ]
    # the tenth round's default: the mask head with the mask scaled by 0.2 before noising
    tenth = [
        (minutes, load(f"kvasir_ours_{size}_r10fair{minutes}.json"), u)
        for minutes, u in ((20, unet), (40, unet_long), (60, unet_60))
    ]
    # the twelfth round's default: dropout 0.1, and MC dropout for the ensemble
    # (60 minutes: the thirteenth round's runs of the same default)
    twelfth = [
        (minutes, load(f"kvasir_ours_{size}_r12fair{minutes}.json"), u)
        for minutes, u in ((20, unet), (40, unet_long), (60, unet_60))
    ]
    fair_sections = []
    for runs, whose in (
        (twelfth, ", the twelfth round's default (dropout 0.1, MC dropout)"),
        (tenth, ", the tenth round's default (input scale 0.2)"),
        (ninth, ", the ninth round's default (mask head)"),
        (seventh, ", the seventh round's sampler"),
        (sixth, ", the sixth round's default"),
        (fair, ""),
    ):
        for minutes, ours_fair, unet_fair in runs:
            if ours_fair:
                fair_sections += budget_sections(
                    f"{size} px, {minutes} minutes at equal idle-core time{whose}", ours_fair, unet_fair
                )
    speed = load("speed.json")
    # the fifth round's variants next to the fourth round's defaults (same split, budget and code)
    fifth_round = [
        load(p.name)
        for p in sorted(common.RESULTS.glob("kvasir_ablation_128_round[45]_*.json"))
        if "_round5_" in p.name or p.name.startswith("kvasir_ablation_128_round4_default")
    ]
    heldout_unets = [
        load(f"kvasir_unet_{size}_heldout_round5.json"),
        load(f"kvasir_unet_{size}_heldout_round5_seed43.json"),
        load(f"kvasir_unet_{size}_heldout_round6_seed44.json"),
    ]
    # the round's runs, and the fifth round's defaults on the CPU, which its CPU repeats pair with
    sixth_round = [
        load(p.name)
        for p in sorted(common.RESULTS.glob("kvasir_ablation_128_round[56]_*.json"))
        if "_round6_" in p.name or p.name.startswith("kvasir_ablation_128_round5_default_cpu")
    ]
    # the eighth round: twice the ablation budget on the held-out images (H100, and seed 44 on the CPU)
    eighth_round = [load(p.name) for p in sorted(common.RESULTS.glob("kvasir_ablation_128_round8_*.json"))]
    # the twelfth round's dropout runs and the thirteenth round's two more seeds of the same default (CPU)
    dropout_runs = [load(f"kvasir_ablation_128_round12_dropout01{tag}.json") for tag in ("", "_seed43", "_seed44")]
    thirteenth_round = [load(f"kvasir_ablation_128_round13_default_seed{seed}.json") for seed in (45, 46)]
    heldout_steps = [
        (budget, [(int(r.get("seed", 42)), next(iter(r["variants"].values()))["scores"]) for r in runs if r])
        # (each of these files holds one variant)
        for budget, runs in (
            (
                "the twelfth round's default (dropout 0.1), 7,164 steps (its runs on the H200, and the "
                "thirteenth round's seeds 45 and 46, CPU)",
                dropout_runs + thirteenth_round,
            ),
            (
                "the sixth round's default, 3,626 steps (H200)",
                [load(f"kvasir_ablation_128_round6_zeroboth{tag}.json") for tag in ("", "_seed43", "_seed44")],
            ),
            (
                "the eighth round's default, 7,252 steps (H100)",
                [load(f"kvasir_ablation_128_round8_default{tag}.json") for tag in ("", "_seed43", "_seed44")],
            ),
        )
    ]
    sixty = [(42, seventh[2][1]), (43, load(f"kvasir_ours_{size}_r8fair60_seed43.json"))]
    # the ninth round's held-out pairs: the mask head against the CPU default of its seed, both
    # rescored by sampler_ablation with the same sampling seeds
    head_pairs = [
        (load("sampler_head2_round9.json"), load("sampler_sources_round7.json")),
        (load("sampler_head2_round9_seed43.json"), load("sampler_sources_round7_seed43.json")),
        (load("sampler_head2_round9_seed44.json"), load("sampler_sources_round9_seed44.json")),
    ]
    ninth_round = [
        load(f"kvasir_ablation_128_round9_{name}.json") for name in ("head2", "head2_seed43", "head2_seed44")
    ]
    # the twelfth round: dropout 0.1 and MC dropout at twice the head's ablation budget (H200)
    twelfth_round = [load(p.name) for p in sorted(common.RESULTS.glob("kvasir_ablation_128_round12_*.json"))]
    doubled_unets = [load(f"kvasir_unet_{size}_heldout_round8_seed{seed}.json") for seed in (42, 44)]
    # the tenth round: the head's input scale and training on its own noised estimate (H100)
    # (the H100 runs; the CPU repeat of today's default, round10_cpu_*, is quoted in BENCHMARKS.md)
    tenth_round = [
        load(p.name) for p in sorted(common.RESULTS.glob("kvasir_ablation_128_round10_*.json")) if "_cpu_" not in p.name
    ]
    # the fourteenth round: dropout 0.2 on the CPU, paired with the thirteenth round's default runs
    fourteenth_round = thirteenth_round + [
        load(f"kvasir_ablation_128_round14_dropout02_seed{seed}.json") for seed in (45, 46)
    ]
    # the fifteenth round: heavy augmentation (the SPEC's mode) against medium, on the CPU; ours
    # paired with the thirteenth round's default runs, the UNet with the eighth round's held-out runs
    fifteenth_round = thirteenth_round + [
        load(f"kvasir_ablation_128_round15_heavy_seed{seed}.json") for seed in (45, 46)
    ]
    fifteenth_long = [load(f"kvasir_ablation_128_round15_long_{recipe}_seed45.json") for recipe in ("default", "heavy")]
    heavy_unets = [load(f"kvasir_unet_{size}_heldout_round15_heavy_seed{seed}.json") for seed in (42, 44)]
    unet_recipes = [(seed, heavy, medium) for seed, heavy, medium in zip((42, 44), heavy_unets, doubled_unets)]
    # the sixteenth round: the same pair at the 60-minute step budgets, a second seed for ours and the
    # UNet's side at its own budget, on the CPU
    sixteenth_long = fifteenth_long + [
        load(f"kvasir_ablation_128_round16_long_{recipe}_seed46.json") for recipe in ("default", "heavy")
    ]
    long_unets = [
        load(f"kvasir_unet_{size}_heldout_round16_long_{recipe}_seed42.json") for recipe in ("medium", "heavy")
    ]
    exact_pairs = [
        (
            f"{recipe}, ours seed {seed}, UNet seed {unet_seed} ({unet_steps:,} steps)",
            f"uncertainty_heldout_128_{name}.json",
        )
        for recipe, seed, unet_seed, unet_steps, name in (
            ("medium", 45, 42, 6806, "r16_long_seed45_vs_unet42"),
            ("medium", 46, 42, 6806, "r16_long_seed46_vs_unet42"),
            ("heavy", 45, 42, 6806, "r16_long_heavy_seed45_vs_unet42"),
            ("heavy", 46, 42, 6806, "r16_long_heavy_seed46_vs_unet42"),
            ("heavy", 45, 42, 2644, "r15_heavy_seed45_vs_unet42"),
            ("heavy", 46, 44, 2644, "r15_heavy_seed46_vs_unet44"),
        )
    ]
    forty_minutes = [
        (seed, round_run("r12", 40, seed, size), round_unet({40: unet_long}, 40, seed, size)) for seed in ROUND_SEEDS
    ]
    # the seventeenth round: val at the 60-minute step budgets with heavy augmentation for both models,
    # paired with the same seeds' medium runs (ours: the thirteenth round's; the UNets: the third and eighth rounds')
    seventeenth = [
        (
            seed,
            load(f"kvasir_ours_{size}_r17heavy60{common.seed_suffix(seed)}.json"),
            round_run("r12", 60, seed, size),
            load(f"kvasir_unet_{size}_60min_heavy{common.seed_suffix(seed)}.json"),
            round_unet({60: unet_60}, 60, seed, size),
        )
        for seed in (42, 43)
    ]
    seventeenth_exact = [
        (
            f"heavy, seed {seed}, UNet 6,806 steps",
            f"uncertainty_val_{size}_60min_r17_heavy{common.seed_suffix(seed)}.json",
        )
        for seed in (42, 43)
    ]
    # the eighteenth round: dropout 0.2 against 0.1 on held-out TRAIN images, three fresh seeds on the
    # H200, pooled with the fourteenth round's two CPU seeds (each pair on its own device); then val at
    # 20 and 40 minutes with 0.2, today's default since, paired with the twelfth round's 0.1 runs
    eighteenth_round = [
        load(f"kvasir_ablation_128_round18_{slug}_seed{seed}.json")
        for seed in (47, 48, 49)
        for slug in ("default", "dropout02")
    ]
    eighteenth_unets = {20: unet, 40: unet_long, 60: unet_60}  # 60 minutes: run in the twentieth round
    eighteenth_val = {
        minutes: [
            (round_run("r18", minutes, seed, size), round_unet(eighteenth_unets, minutes, seed, size))
            for seed in ROUND_SEEDS
        ]
        for minutes in (40, 20, 60)
    }
    eighteenth_exact = [
        (f"dropout {dropout}, seed {seed}", f"uncertainty_val_{size}_40min_r18{tag}{common.seed_suffix(seed)}.json")
        for seed in ROUND_SEEDS
        for dropout, tag in (("0.2", ""), ("0.1", "_dropout01"))
    ]
    # the nineteenth round: recycled self-conditioning (up to 3 chained estimate passes in training) on
    # the CPU at equal idle-core time, paired with today's default of the same seeds: the fourteenth
    # round's "dropout 0.2" runs (seeds 45, 46; today's default since the eighteenth) and this round's 47
    nineteenth_round = [
        as_default(load(f"kvasir_ablation_128_round14_dropout02_seed{seed}.json"), "dropout 0.2") for seed in (45, 46)
    ] + [load("kvasir_ablation_128_round19_default_seed47.json")]
    nineteenth_round += [load(f"kvasir_ablation_128_round19_passes3_seed{seed}.json") for seed in (45, 46, 47)]
    # the twentieth round: the mask head with a view of the whole estimate (GlobalContext), seeds 47-49
    # on the H200, paired with the eighteenth round's H200 runs of today's default
    twentieth_round = [
        as_default(load(f"kvasir_ablation_128_round18_dropout02_seed{seed}.json"), "dropout 0.2")
        for seed in (47, 48, 49)
    ] + [load(f"kvasir_ablation_128_round20_context_seed{seed}.json") for seed in (47, 48, 49)]
    # the twenty-first round: the estimate pass also takes the loss, and dropout 0.3; every arm on the
    # AMD EPYC, seeds 47-49
    twenty_first_round = [
        load(f"kvasir_ablation_128_round21_{arm}_seed{seed}.json")
        for arm in ("default_amd", "estimate_pass", "dropout03")
        for seed in (47, 48, 49)
    ]
    # the twenty-second round: the estimate handed over with its gradient (unrolled), and training t
    # drawn with a density rising in t (k = 2 and 3); seeds 47-49 on the AMD EPYC, paired with the twenty-first
    # round's AMD runs of today's default
    twenty_second_round = [
        load(f"kvasir_ablation_128_round{run}_seed{seed}.json")
        for run in ("21_default_amd", "22_unrolled", "22_t_rising", "22_t_rising_k3")
        for seed in (47, 48, 49)
    ]
    # the twenty-third round: the head trained as a sampler (noise channel, fair CRPS of two draws);
    # seeds 47-49 on the AMD EPYC, paired with the twenty-first round's AMD runs of today's default
    twenty_third_round = [
        load(f"kvasir_ablation_128_round{run}_seed{seed}.json")
        for run in ("21_default_amd", "23_crps", "23_crps_dice", "23_crps_dice03")
        for seed in (47, 48, 49)
    ]
    # the twenty-fourth round: a sampler head beside today's head (fair CRPS + Dice of the draws' mean),
    # seeds 45-47 on the Intel Xeon, paired with the nineteenth round's Intel runs of today's default
    twenty_fourth_round = nineteenth_round[:3] + [
        load(f"kvasir_ablation_128_round24_sampler_head_seed{seed}.json") for seed in (45, 46, 47)
    ]
    sections = [
        heldout_round_section(
            "## Twenty-fourth round, held-out TRAIN images: a sampler head beside today's mask head "
            "(`--sampler-head --crps-dice-weight 1`: a second head draws each step's x0 around the first head's, "
            "trained with the fair CRPS of two draws + soft Dice of their mean, on the encoding without gradient), "
            "5,571 steps (equal idle-core time), against today's default, every arm on the Intel Xeon "
            "(seeds 45-47; `default` = the fourteenth and nineteenth rounds' runs, 7,164 steps)",
            twenty_fourth_round,
        ),
        heldout_round_section(
            "## Twenty-third round, held-out TRAIN images: the mask head trained as a sampler (`--crps-samples`: "
            "a noise channel, the fair CRPS of two draws in place of MSE + Dice + BCE), alone and with soft Dice of "
            "the draws' mean (`--crps-dice-weight 1` and 0.3), 6,481 steps each (equal idle-core time), against "
            "today's default, every arm on the AMD EPYC (seeds 47-49; `default` = the twenty-first round's runs, "
            "7,164 steps)",
            twenty_third_round,
        ),
        heldout_round_section(
            "## Twenty-second round, held-out TRAIN images: the estimate handed over with its gradient "
            "(`--unrolled-estimate`, 7,014 steps: equal idle-core time) and training t with a density rising in "
            "t (`--train-t-exponent 2` and 3, 7,164 steps: the same step) against today's default, every arm on "
            "the AMD EPYC (seeds 47-49; `default` = the twenty-first round's runs, 7,164 steps)",
            twenty_second_round,
        ),
        heldout_round_section(
            "## Twenty-first round, held-out TRAIN images: the estimate pass also takes the loss "
            "(`--estimate-pass-loss`), and dropout 0.3, against today's default (dropout 0.2), 7,164 steps "
            "each (no measurable step-time difference), every arm on the AMD EPYC (seeds 47-49)",
            twenty_first_round,
        ),
        heldout_round_section(
            "## Twentieth round, held-out TRAIN images: the mask head with a view of the whole estimate "
            "(`--mask-head-context`) against today's default, equal idle-core time (NVIDIA H200, seeds 47-49; "
            "`default` = dropout 0.2, the eighteenth round's runs, 7,164 steps; the variant 6,953 steps)",
            twentieth_round,
        ),
        "## Twentieth round, exact ranking on val at 60 minutes (uncertainty_ablation.py val, every pixel ranked): "
        "ours' 10 x 5 std against the UNet's p(1-p) of the same seed (seeds 42 and 43: 60-minute UNets re-trained "
        "on the Intel Xeon in this round, kvasir_unet_128_60min_intel_seed{42,43}, not the runs in the val tables, "
        "which kept no weights; seed 44: the fourteenth round's), dropout 0.2 (this round) and 0.1 (the "
        "fourteenth round's run of seed 44)\n\n"
        + exact_uncertainty_table(
            [
                (
                    f"dropout {dropout}, seed {seed}",
                    f"uncertainty_val_{size}_60min_{tag}{common.seed_suffix(seed)}.json",
                )
                for seed in ROUND_SEEDS
                for dropout, tag in (("0.2", "r18"), ("0.1", "r13"))
            ]
        ),
        heldout_round_section(
            "## Nineteenth round, held-out TRAIN images: recycled self-conditioning (1-3 chained estimate passes "
            "in training) against today's default, equal idle-core time (Intel Xeon, seeds 45-47; `default` = "
            "dropout 0.2, 7,164 steps, seeds 45 and 46 the fourteenth round's runs; the variant 7,011 steps)",
            nineteenth_round,
        ),
        "## Eighteenth round, held-out TRAIN images: dropout 0.2 against the twelfth round's default (0.1) "
        "(7,164 steps each, seeds 47-49 on the H200; `default` = 0.1)\n\n"
        + seeded_ablation_table(eighteenth_round)
        + "\n\n"
        + seed_averaged_ablation_table(eighteenth_round)
        + "\n\nPooled with the fourteenth round's seeds 45 and 46 (Intel Xeon), each pair on its own device:\n\n"
        + seed_averaged_ablation_table(fourteenth_round + eighteenth_round, by_device=False)
        + "\n\nUncertainty of each ensemble row:\n\n"
        + heldout_uncertainty_table(eighteenth_round, []),
        *round_val_sections(
            "r18",
            "dropout 0.2 (the eighteenth round's default)",
            "r12",
            "Dropout 0.2 against 0.1, val, {minutes} minutes, the same seeds (new = 0.2, the eighteenth round's "
            "default; old = 0.1, the twelfth round's runs)",
            eighteenth_unets,
        ),
        *(
            f"## Eighteenth round, uncertainty and calibration on val at {minutes} minutes, dropout 0.2: fixed "
            "bins (kvasir.py), one table per seed run (42, 43, 44 in turn)\n\n"
            + ("\n\n".join(calibration_table(ours, unet) for ours, unet in runs if ours and unet) or "(not run)")
            for minutes, runs in eighteenth_val.items()
        ),
        "## Eighteenth round, exact ranking on val at 40 minutes (uncertainty_ablation.py val, every pixel "
        "ranked): ours' 10 x 5 std against the UNet's p(1-p) of the same seed (seeds 42 and 43: the fourteenth "
        "round's 40-minute UNets re-trained on the Intel Xeon, not the runs in the tables above; seed 44: the "
        "eleventh round's), dropout 0.2 and the twelfth round's 0.1 checkpoints\n\n"
        + exact_uncertainty_table(eighteenth_exact),
        "## Seventeenth round, val at the 60-minute step budgets: heavy augmentation for both models "
        "(ours 18,421 steps, the UNet 6,806, seeds 42 and 43, Intel Xeon)\n\n"
        + seeds_table([(seed, ours, unet) for seed, ours, _, unet, _ in seventeenth])
        + "\n\nSteps:\n\n"
        + steps_seeds_table([(seed, ours) for seed, ours, *_ in seventeenth])
        + "\n\nUncertainty and calibration, fixed bins (kvasir.py), seed 42 then seed 43:\n\n"
        + ("\n\n".join(calibration_table(ours, unet) for _, ours, _, unet, _ in seventeenth if ours) or "(not run)")
        + "\n\nExact ranking (uncertainty_ablation.py val, every pixel ranked), ours' 10 x 5 std against the "
        "UNet's p(1-p):\n\n" + exact_uncertainty_table(seventeenth_exact),
        "## Seventeenth round, heavy against medium on val at the 60-minute step budgets (new = heavy; "
        "old = medium, the same seeds: ours the thirteenth round's runs, Intel Xeon; the UNets the 60-minute runs "
        "they were paired with, the third and eighth rounds', AMD EPYC)\n\n"
        "Ours:\n\n"
        + sampler_change_table([(seed, new, old) for seed, new, old, *_ in seventeenth])
        + "\n\nThe plain UNet:\n\n"
        + sampler_change_table([(seed, new, old) for seed, _, _, new, old in seventeenth], rows=("unet",))
        + "\n\nOurs − the UNet under each recipe, and how much heavy widens it:\n\n"
        + recipe_gap_table(seventeenth),
        "## Sixteenth round, held-out TRAIN images at the 60-minute step budget: heavy against medium, "
        "two seeds (18,421 steps each, Intel Xeon; seed 45 the fifteenth round's pair)\n\n"
        + seeded_ablation_table(sixteenth_long)
        + "\n\n"
        + seed_averaged_ablation_table(sixteenth_long)
        + "\n\nUncertainty of each ensemble row:\n\n"
        + heldout_uncertainty_table(sixteenth_long, [])
        + "\n\nAgainst the plain UNet of the same augmentation on the same held-out images (seed 42, 6,806 "
        "steps), medium:\n\n"
        + heldout_unet_table(sixteenth_long, long_unets[:1])
        + "\n\nheavy:\n\n"
        + heldout_unet_table(sixteenth_long, long_unets[1:], augmentation="heavy"),
        "## Sixteenth round, the plain UNet on held-out TRAIN images at its 60-minute step budget: heavy "
        "against medium (6,806 steps each, seed 42, Intel Xeon, side by side; new = heavy, old = medium)\n\n"
        + sampler_change_table([(42, long_unets[1], long_unets[0])], rows=("unet",))
        + "\n\n"
        + heldout_uncertainty_table([], long_unets),
        "## Sixteenth round, exact-ranking uncertainty: ours' 10 x 5 std against the plain UNet's p(1-p) "
        "on the same held-out images, each model trained with the augmentation named\n\n"
        + exact_uncertainty_table(exact_pairs),
        "## Fifteenth round, held-out TRAIN images: heavy augmentation against medium, the twelfth round's default "
        "(7,164 steps each, Intel Xeon, seeds 45 and 46; `default` = medium, the thirteenth round's runs)\n\n"
        + seeded_ablation_table(fifteenth_round)
        + "\n\n"
        + seed_averaged_ablation_table(fifteenth_round)
        + "\n\nUncertainty of each ensemble row:\n\n"
        + heldout_uncertainty_table(fifteenth_round, []),
        "## Fifteenth round, held-out TRAIN images at the 60-minute step budget: heavy against medium "
        "(18,421 steps each, Intel Xeon, seed 45, side by side)\n\n"
        + seeded_ablation_table(fifteenth_long)
        + "\n\nUncertainty of each ensemble row:\n\n"
        + heldout_uncertainty_table(fifteenth_long, []),
        "## Fifteenth round, the plain UNet on held-out TRAIN images: heavy against medium "
        "(2,644 steps each, seeds 42 and 44; new = heavy on the Intel Xeon, old = medium, the eighth round's runs)\n\n"
        + sampler_change_table(unet_recipes, rows=("unet",))
        + "\n\n"
        + heldout_uncertainty_table([], doubled_unets + heavy_unets),
        "## Errors made with confidence, val, 40 minutes, the twelfth round's default (dropout 0.1; probability "
        "below 1/15 or above 14/15)\n\n" + confident_errors_table(forty_minutes),
        "## Fourteenth round, held-out TRAIN images: dropout 0.2 against the twelfth round's default (0.1) "
        "(7,164 steps each, Intel Xeon, seeds 45 and 46)\n\n"
        + seeded_ablation_table(fourteenth_round)
        + "\n\n"
        + seed_averaged_ablation_table(fourteenth_round)
        + "\n\nUncertainty of each ensemble row:\n\n"
        + heldout_uncertainty_table(fourteenth_round, []),
        "## Thirteenth round, held-out TRAIN images: MC dropout re-tested, the twelfth round's default "
        "(7,164 steps each; seeds 42-44 the twelfth round's dropout 0.1 runs on the H200, 45 and 46 on the CPU)\n\n"
        + heldout_uncertainty_table(dropout_runs + thirteenth_round, doubled_unets),
        "## Twelfth round, held-out TRAIN images: dropout 0.1, and MC dropout for the ensemble "
        "(7,164 steps each, H200; `default` = the eleventh round's, no dropout)\n\n"
        + seeded_ablation_table(twelfth_round)
        + "\n\n"
        + seed_averaged_ablation_table(twelfth_round)
        + "\n\nUncertainty of each ensemble row, and the plain UNet on the same held-out images (fit split, "
        "twice its idle-core budget, 2,644 steps, the eighth round's CPU runs):\n\n"
        + heldout_uncertainty_table(twelfth_round, doubled_unets)
        + "\n\n"
        + heldout_unet_table(twelfth_round, doubled_unets, variant="dropout 0.1"),
        *round_val_sections(
            "r12",
            "the twelfth round's default (dropout 0.1, MC dropout)",
            "r10",
            "Dropout 0.1 against the tenth round's default, val, {minutes} minutes, the same seeds "
            "(new = dropout 0.1, old = no dropout)",
            {20: unet, 40: unet_long, 60: unet_60},
        ),
        "## 60 minutes against 40 minutes, the same seeds, the twelfth round's default (new = 60, old = 40)\n\n"
        + sampler_change_table(
            [(seed, round_run("r12", 60, seed, size), round_run("r12", 40, seed, size)) for seed in ROUND_SEEDS]
        ),
        "## Tenth round, held-out TRAIN images: the mask head's input scale, and refining its own "
        "noised estimate (3,582 steps each, H100)\n\n"
        + seeded_ablation_table(tenth_round)
        + "\n\n"
        + seed_averaged_ablation_table(tenth_round)
        + "\n\nThe plain UNet on the same held-out images (fit split, 1,322 steps, trained on the CPU), "
        "against the default and the input scale 0.2 of the round:\n\n"
        + heldout_unet_table(tenth_round, heldout_unets)
        + "\n\n"
        + heldout_unet_table(tenth_round, heldout_unets, variant="mask head + input scale 0.2"),
        *round_val_sections(
            "r10",
            "the tenth round's default (input scale 0.2)",
            "r9",
            "Input scale 0.2 against the ninth round's "
            "default, val, {minutes} minutes, the same seeds (new = input scale 0.2, old = 0.05)",
            {20: unet, 40: unet_long, 60: unet_60},
        ),
        "## 60 minutes against 40 minutes, the same seeds, the tenth round's default (new = 60, old = 40)\n\n"
        + sampler_change_table(
            [(seed, round_run("r10", 60, seed, size), round_run("r10", 40, seed, size)) for seed in ROUND_SEEDS]
        ),
        "## Ninth round, held-out TRAIN images: encode the image once, a light head per step "
        "(variant = mask head 2 blocks, 3,582 steps; default = the eighth round's, 3,626 steps; CPU)\n\n"
        + checkpoints_compared_table(head_pairs)
        + "\n\nThe plain UNet on the same held-out images, fit split and idle-core time (1,322 steps):\n\n"
        + heldout_unet_table(ninth_round, heldout_unets, variant="mask head 2 blocks"),
        *round_val_sections(
            "r9",
            "the ninth round's default (mask head)",
            "r7",
            "The mask head against the seventh round's "
            "default, val, {minutes} minutes, the same seeds (new = mask head, old = the seventh round's default)",
            {20: unet, 40: unet_long, 60: unet_60},
        ),
        "## Eighth round, held-out TRAIN images, twice the ablation budget (7,252 steps): dropout\n\n"
        + seeded_ablation_table(eighth_round)
        + "\n\n"
        + seed_averaged_ablation_table(eighth_round)
        + "\n\nAll seeds, each variant paired with the default of its seed on its own device:\n\n"
        + seed_averaged_ablation_table(eighth_round, by_device=False)
        + "\n\nThe plain UNet on the same held-out images, fit split and doubled idle-core time (2,644 steps, "
        "on the CPU):\n\n"
        + heldout_unet_table(
            eighth_round, [load(f"kvasir_unet_{size}_heldout_round8_seed{seed}.json") for seed in (42, 44)]
        ),
        *[
            f"## Steps on held-out TRAIN images, {budget}\n\n" + steps_seeds_table(runs)
            for budget, runs in heldout_steps
        ],
        seeds_section(
            f"{size} px, 60 minutes at equal idle-core time, the seventh round's sampler",
            seventh[2][1],
            unet_60,
            f"kvasir_ours_{size}_r8fair60_seed43.json",
            f"kvasir_unet_{size}_60min_seed43.json",
        ),
        f"## Steps, {size} px, 60 minutes at equal idle-core time, the seventh round's sampler\n\n"
        + steps_seeds_table(sixty),
        "## 60 minutes against 40 minutes, the same seeds, the seventh round's sampler (new = 60, old = 40)\n\n"
        + sampler_change_table(
            [(seed, run, load(f"kvasir_ours_{size}_r7fair40{common.seed_suffix(seed)}.json")) for seed, run in sixty]
        ),
        *fair_sections,
        *budget_sections(f"{size} px, 20 minutes (ours 1.17x the UNet's time)", ours, unet, peer, previous),
        *budget_sections(f"{size} px, 40 minutes (ours 1.17x the UNet's time)", ours_long, unet_long),
        *budget_sections(f"{size} px, 60 minutes (ours 1.17x the UNet's time)", ours_60, unet_60),
        seeds_section(
            f"{size} px, 20 minutes at equal idle-core time, the seventh round's sampler",
            seventh[0][1],
            unet,
            f"kvasir_ours_{size}_r7fair20_seed43.json",
            f"kvasir_unet_{size}_seed43.json",
            more=[(44, f"kvasir_ours_{size}_r7fair20_seed44.json", f"kvasir_unet_{size}_seed44.json")],
        ),
        seeds_section(
            f"{size} px, 40 minutes at equal idle-core time, the seventh round's sampler",
            seventh[1][1],
            unet_long,
            f"kvasir_ours_{size}_r7fair40_seed43.json",
            f"kvasir_unet_{size}_40min_seed43.json",
        ),
        *[
            f"## Steps, {size} px, {minutes} minutes at equal idle-core time, the seventh round's sampler\n\n"
            + steps_seeds_table(
                [
                    (seed, load(f"kvasir_ours_{size}_r7fair{minutes}{common.seed_suffix(seed)}.json"))
                    for seed in ROUND_SEEDS
                ]
            )
            for minutes in (20, 40)
        ],
        *[
            f"## The seventh round's sampler against the sixth's, the same checkpoints, {minutes} minutes\n\n"
            + sampler_change_table(
                [
                    (
                        seed,
                        load(f"kvasir_ours_{size}_r7fair{minutes}{common.seed_suffix(seed)}.json"),
                        load(f"kvasir_ours_{size}_r6fair{minutes}{common.seed_suffix(seed)}.json"),
                    )
                    for seed in (42, 43)
                ]
            )
            for minutes in (20, 40, 60)
        ],
        seeds_section(
            f"{size} px, 20 minutes at equal idle-core time, the sixth round's default",
            sixth[0][1],
            unet,
            f"kvasir_ours_{size}_r6fair20_seed43.json",
            f"kvasir_unet_{size}_seed43.json",
        ),
        seeds_section(
            f"{size} px, 40 minutes at equal idle-core time, the sixth round's default",
            sixth[1][1],
            unet_long,
            f"kvasir_ours_{size}_r6fair40_seed43.json",
            f"kvasir_unet_{size}_40min_seed43.json",
        ),
        seeds_section(
            f"{size} px, 20 minutes at equal idle-core time",
            fair[0][1],
            unet,
            f"kvasir_ours_{size}_fair20_seed43.json",
            f"kvasir_unet_{size}_seed43.json",
        ),
        seeds_section(
            f"{size} px, 40 minutes at equal idle-core time",
            fair[1][1],
            unet_long,
            f"kvasir_ours_{size}_fair40_seed43.json",
            f"kvasir_unet_{size}_40min_seed43.json",
        ),
        seeds_section(
            f"{size} px, 20 minutes (ours 1.17x the UNet's time)",
            ours,
            unet,
            f"kvasir_ours_{size}_seed43.json",
            f"kvasir_unet_{size}_seed43.json",
        ),
        "## Uncertainty vs error, 40 minutes\n\n" + uncertainty_table(ours_long),
        "## Uncertainty vs error, 20 minutes\n\n" + uncertainty_table(ours),
        "## Ablations, 64 px, 300 steps\n\n" + ablation_table(merged_ablation("kvasir_ablation_64*.json")),
        "## Ablations, 128 px, 6 minutes\n\n" + ablation_table(merged_ablation("kvasir_ablation_128_patch*.json")),
        "## Making the steps refine: ablations, 128 px\n\n"
        + refinement_ablation_table(merged_ablation("kvasir_ablation_128_[rs]e*.json")),
        "## Fourth round of ablations, 128 px, the 10-minute step budget of each variant\n\n"
        + seeded_ablation_table(
            [load(p.name) for p in sorted(common.RESULTS.glob("kvasir_ablation_128_round4_*.json"))]
        ),
        "## Fifth round of ablations, 128 px, held-out TRAIN images, the fourth round's budget\n\n"
        + seeded_ablation_table(fifth_round)
        + "\n\nThe plain UNet on the same held-out images, trained on the same fit split for the idle-core "
        "time of the default's 3,626 steps (1,322 steps):\n\n" + heldout_unet_table(fifth_round, heldout_unets),
        "## Sixth round of ablations, 128 px, held-out TRAIN images, the fourth round's budget\n\n"
        "On the lent H200, and the new default repeated on the CPU; `default` is the fifth round's "
        "default (zero-initialised inputs off), the new default is `zero-init x_t input and time FiLM`.\n\n"
        + seeded_ablation_table(sixth_round)
        + "\n\n"
        + seed_averaged_ablation_table(sixth_round)
        + "\n\nThe new default against the plain UNet of the fifth round (same held-out images, fit split "
        "and idle-core time):\n\n"
        + heldout_unet_table(sixth_round, heldout_unets, variant="zero-init x_t input and time FiLM"),
        "## Seventh round, held-out TRAIN images: each step handed the mean of the estimates or the last\n\n"
        + sources_table([load("sampler_sources_round7.json"), load("sampler_sources_round7_seed43.json")]),
        "## Seventh round, held-out TRAIN images: training on perturbed estimates\n\n"
        + checkpoints_compared_table(
            [
                (load(f"sampler_perturb_round7{tag}.json"), load(f"sampler_sources_round7{tag}.json"))
                for tag in ("", "_seed43")
            ]
        ),
        "## Making the steps refine: sampler settings\n\n" + sampler_table(load("sampler_ablation.json")),
        "## Sampler settings again, the fifth round's default on the CPU (3,626 steps)\n\n"
        + sampler_table(load("sampler_ablation_round5.json")),
        "## Speed\n\n" + speed_tables(speed),
    ]
    text = "\n\n".join(sections) + "\n"
    (common.RESULTS / "tables.md").write_text(text)
    print(text)
    newest = next((runs for runs in (twelfth, tenth, ninth, seventh, sixth) if runs[0][1] or runs[1][1]), None)
    if newest:  # the curves of today's default
        (_, main20, _), (_, main40, _), *longer = newest
        dice_vs_steps_plot(
            main20 or main40,
            unet if main20 else unet_long,
            peer,
            longer=[(main40, unet_long), *[(o, u) for _, o, u in longer]] if main20 else [],
        )
    elif ours:
        (_, fair20, _), *longer = fair
        if fair20:  # the curves at equal idle-core time
            dice_vs_steps_plot(fair20, unet, peer, longer=[(o, u) for _, o, u in longer])
        else:
            dice_vs_steps_plot(ours, unet, peer, longer=[(ours_long, unet_long), (ours_60, unet_60)])
    # the newest round's longest budget up to 40 minutes (where issue 11's targets are), at equal
    # idle-core time where it was run
    candidates = [
        (o, u) for runs in (twelfth[:2], tenth[:2], ninth, seventh[:2], sixth, fair) for _, o, u in reversed(runs)
    ]
    candidates += [(ours_60, unet_60), (ours_long, unet_long)]
    main_ours, main_unet = next(((o, u) for o, u in candidates if o), (ours, unet))
    for written in (reliability_plot(main_ours, main_unet), steps_plot(main_ours, main_unet)):
        if written:
            print(f"wrote {written}")
    # the twenty-third round: the mask head trained as a sampler, against today's default
    written = sampler_heldout_plot(
        [
            (label, [load(f"sampler_sources_round{run}_seed{seed}.json") for seed in (47, 48)])
            for label, run in (
                ("default", "22_default_amd"),
                ("crps samples", "23_crps"),
                ("crps samples + Dice on the mean", "23_crps_dice"),
            )
        ],
        IMAGES / "sampler_heldout_round23.png",
    )
    if written:
        print(f"wrote {written}")
    if speed:
        speed_plot(speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
