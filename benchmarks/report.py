"""Figures and Markdown tables for BENCHMARKS.md from the results JSON of kvasir.py and speed.py.

    python benchmarks/report.py      # writes docs/images/bench_*.png and benchmarks/results/tables.md

Missing results files are skipped (their tables say so).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402

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
        rows.append((int(steps), int(ensemble), row))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def quality_table(ours, unet, peer, previous=None) -> str:
    lines = ["| model | params | sampler | Dice (mean ± std) | IoU (mean ± std) | val images | s / image (128 px, batch 8) | optimizer steps in budget |",
             "|---|---|---|---|---|---|---|---|"]
    if ours:
        for steps, ensemble, row in step_rows(ours):
            lines.append(f"| ours (diffusion) | {ours['train']['parameters'] / 1e6:.1f}M | DDIM {steps} steps, ensemble {ensemble} | "
                         f"{fmt(row['dice'], row['dice_std'])} | {fmt(row['iou'], row['iou_std'])} | {row['images']} | "
                         f"{row['seconds_per_image']:.2f} | {ours['train']['optimizer_steps']} |")
    if previous:
        row = previous["rows"]["ddim10_ens1"]
        config = previous["config"]
        lines.append(f"| ours, earlier defaults (patch size {config.get('patch_size', 1)}, linear x0 output) | "
                     f"{previous['train']['parameters'] / 1e6:.1f}M | DDIM 10 steps, ensemble 1 | {fmt(row['dice'], row['dice_std'])} | "
                     f"{fmt(row['iou'], row['iou_std'])} | {row['images']} | {row['seconds_per_image']:.2f} | {previous['train']['optimizer_steps']} |")
    for name, result, sampler in (("smp.Unet resnet18, random init, Dice+BCE", unet, "one forward pass"),
                                  ("med-seg-diff-pytorch 0.3.3 (peer)", peer, None)):
        if not result:
            lines.append(f"| {name} | – | – | not run | | | | |")
            continue
        for row in result["rows"].values():
            lines.append(f"| {name} | {result['train']['parameters'] / 1e6:.1f}M | {sampler or row.get('sampler', 'default')} | "
                         f"{fmt(row['dice'], row['dice_std'])} | {fmt(row['iou'], row['iou_std'])} | {row['images']} | "
                         f"{row['seconds_per_image']:.2f} | {result['train']['optimizer_steps']} |")
    return "\n".join(lines)


def uncertainty_table(ours) -> str:
    if not ours:
        return "(not run)"
    u = ours["uncertainty_error"]
    return "\n".join([
        "| ensemble | Pearson r (std vs error) | AUROC (std detects error pixels) | error pixels | mean std on errors | mean std on correct pixels |",
        "|---|---|---|---|---|---|",
        f"| {ours['ensemble_key'].replace('_ens', ' steps, ').replace('ddim', 'DDIM ')} samples | {u['pearson_r']:.3f} | {u['auroc']:.3f} | "
        f"{100 * u['error_pixel_share']:.1f}% | {u['mean_std_on_errors']:.3f} | {u['mean_std_on_correct']:.3f} |",
    ])


def ablation_table(ablation) -> str:
    if not ablation:
        return "(not run)"
    base = ablation.get("default_config", {})
    lines = [f"Variants override the default of the time (`{base.get('prediction_type')}`, `{base.get('schedule')}`, "
             f"dice_weight {base.get('dice_weight')}, input_scale {base.get('input_scale')}, patch_size {base.get('patch_size', 1)}, "
             f"bounded_x0 {base.get('bounded_x0', False)}).", "",
             f"| variant | Dice on {ablation['scored_on']} (DDIM {ablation['ddim_steps']}) | IoU | optimizer steps | params |",
             "|---|---|---|---|---|"]
    for name, row in ablation["variants"].items():
        params = row["train"].get("parameters")
        lines.append(f"| {name} | {fmt(row['dice'], row['dice_std'])} | {row['iou']:.3f} | {row['train']['optimizer_steps']} | "
                     f"{'–' if params is None else f'{params / 1e6:.1f}M'} |")
    return "\n".join(lines)


def speed_tables(speed) -> str:
    if not speed:
        return "(not run)"
    peaks = speed["matmul_peak_tflops"]
    lines = [f"Matmul peak measured in the same run: bf16 {peaks['bf16']:.2f} TFLOP/s, fp32 {peaks['fp32']:.2f} TFLOP/s.", "",
             "| size | precision | batch | s / step (median) | images / s | params | GFLOP / step | achieved TFLOP/s | share of peak | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in speed["training"]:
        rss = "–" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(f"| {r['size']} | {r['precision']} | {r['batch']} | {r['step_seconds']:.2f} | {r['images_per_second']:.1f} | "
                     f"{r['parameters'] / 1e6:.1f}M | {r['gflops_per_step']:.0f} | {r['achieved_tflops']:.3f} | {100 * r['share_of_peak']:.0f}% | {rss} |")
    lines += ["", "| size | batch | DDIM steps | s / image |", "|---|---|---|---|"]
    for r in speed.get("sampling", []):
        lines.append(f"| {r['size']} | {r['batch']} | {r['steps']} | {r['seconds_per_image']:.3f} |")
    peer = speed.get("peer")
    if peer and "images_per_second" in peer:
        lines += ["", "| model | params | training images / s (128 px, batch 8, bf16) | default sampler s / image, batch 1 | batch 8 |",
                  "|---|---|---|---|---|"]
        ours = next(r for r in speed["training"] if r["size"] == peer["size"] and r["precision"] == "bf16")
        lines.append(f"| ours | {peer['ours_parameters'] / 1e6:.1f}M | {ours['images_per_second']:.1f} | "
                     f"{peer.get('ours_seconds_per_step_batch1', float('nan')):.3f} per DDIM step | {peer.get('ours_seconds_per_step_batch8', float('nan')):.3f} per DDIM step |")
        lines.append(f"| med-seg-diff-pytorch 0.3.3 (dim {peer['unet_dim']}) | {peer['parameters'] / 1e6:.1f}M | {peer['images_per_second']:.1f} | "
                     f"{peer.get('default_sampler_seconds_per_image_batch1', float('nan')):.1f} ({peer.get('default_sampler_steps')} steps) | "
                     f"{peer.get('default_sampler_seconds_per_image_batch8', float('nan')):.1f} |")
        lines.append(f"\nOurs / peer training throughput: **{peer['ours_over_peer_training']:.2f}x**.")
    return "\n".join(lines)


def dice_vs_steps_plot(ours, unet, peer, longer=None) -> None:
    """Dice against DDIM steps for `ours` with the anchors as lines; `longer` = (ours, unet) of a
    longer budget, drawn in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [r for r in step_rows(ours) if r[1] == 1]
    steps = [r[0] for r in rows]
    dice = np.array([r[2]["dice"] for r in rows])
    sem = np.array([r[2]["dice_std"] / np.sqrt(r[2]["images"]) for r in rows])
    ax.errorbar(steps, dice, yerr=sem, marker="o", capsize=3, label="ours, DDIM, ensemble 1")
    for s, e, row in step_rows(ours):
        if e > 1:
            ax.errorbar([s], [row["dice"]], yerr=[row["dice_std"] / np.sqrt(row["images"])], marker="*", markersize=12,
                        linestyle="none", capsize=3, label=f"ours, DDIM {s}, ensemble {e}")
    for result, label, colour in ((unet, "smp.Unet resnet18 (plain)", "tab:green"), (peer, "MedSegDiff peer", "tab:red")):
        for style, row in zip(("--", ":"), (result or {}).get("rows", {}).values()):
            sampler = row.get("sampler", "one pass")
            ax.axhline(row["dice"], linestyle=style, color=colour, label=f"{label}, {sampler}: {row['dice']:.3f} ({row['images']} img)")
    if longer and longer[0]:
        long_ours, long_unet = longer
        rows = [r for r in step_rows(long_ours) if r[1] == 1]
        ax.errorbar([r[0] for r in rows], [r[2]["dice"] for r in rows],
                    yerr=[r[2]["dice_std"] / np.sqrt(r[2]["images"]) for r in rows], marker="s", capsize=3, color="tab:gray",
                    label=f"ours, {long_ours['budget_minutes']:.0f}-min budget")
        if long_unet:
            row = next(iter(long_unet["rows"].values()))
            ax.axhline(row["dice"], linestyle="-.", color="tab:olive",
                       label=f"smp.Unet, {long_unet['budget_minutes']:.0f}-min budget: {row['dice']:.3f}")
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("DDIM steps")
    ax.set_ylabel("mean Dice, Kvasir-SEG val (± s.e.m.)")
    ax.set_title(f"Dice vs sampling steps, {ours['image_size']} px, {ours['budget_minutes']:.0f}-min CPU budget unless noted")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "bench_dice_vs_steps.png", dpi=120)
    plt.close(fig)


def speed_plot(speed) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['size']}px\n" + r['precision'].replace('+', '+\n') for r in speed["training"]]
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
    plt.close(fig)


def merged_ablation(pattern: str):
    """All ablation results files matching `pattern` as one, in file-name order; a variant run with
    a learning rate other than the default gets it in its name."""
    merged = None
    for path in sorted(common.RESULTS.glob(pattern)):
        if path.name.endswith("_smoke.json"):
            continue
        result = json.loads(path.read_text())
        lr = result.get("lr", 3e-4)
        variants = {(name if lr == 3e-4 else f"{name}, lr {lr:g}"): row for name, row in result["variants"].items()}
        if merged is None:
            merged = {**result, "variants": {}}
        merged["variants"].update(variants)
    return merged


def main() -> int:
    size = 128
    ours, unet, peer = load(f"kvasir_ours_{size}.json"), load(f"kvasir_unet_{size}.json"), load(f"kvasir_peer_{size}.json")
    previous = load(f"kvasir_ours_{size}_v1_patch1.json")  # the same run with the defaults before the 128 px ablation
    ours_long, unet_long = load(f"kvasir_ours_{size}_40min.json"), load(f"kvasir_unet_{size}_40min.json")
    speed = load("speed.json")
    sections = [f"## Quality, {size} px, 20 minutes\n\n" + quality_table(ours, unet, peer, previous),
                f"## Quality, {size} px, 40 minutes\n\n" + quality_table(ours_long, unet_long, None),
                "## Uncertainty vs error, 40 minutes\n\n" + uncertainty_table(ours_long),
                "## Uncertainty vs error, 20 minutes\n\n" + uncertainty_table(ours),
                "## Ablations, 64 px, 300 steps\n\n" + ablation_table(merged_ablation("kvasir_ablation_64*.json")),
                "## Ablations, 128 px, 6 minutes\n\n" + ablation_table(merged_ablation("kvasir_ablation_128_*.json")),
                "## Speed\n\n" + speed_tables(speed)]
    text = "\n\n".join(sections) + "\n"
    (common.RESULTS / "tables.md").write_text(text)
    print(text)
    if ours:
        dice_vs_steps_plot(ours, unet, peer, longer=(ours_long, unet_long))
    if speed:
        speed_plot(speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
