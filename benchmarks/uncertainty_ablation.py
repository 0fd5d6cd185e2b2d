"""Which per-pixel uncertainty map of our sampler detects its own errors best (issue 11)?

Candidates are computed from the x0 estimates of every reverse step of every ensemble member
(model.reverse_process, eta 1, seeded), and scored against the plain UNet's p(1-p):
AUROC of the score as a detector of wrongly classified pixels, ECE of the probability behind the
mask, Dice. The choice is made on 100 images held out of the TRAIN split (the ablation runs'
split, never val); the winner is then scored once on val against the headline UNets.

    # 1. a plain UNet on the ablation run's fit split, for the idle-core time the ablation run got
    benchmarks/.peer-venv/bin/python -m benchmarks.uncertainty_ablation train-unet \
        --ours-checkpoint benchmarks/results/checkpoints/ablation_128_33/last.pth
    # 2. every candidate on the 100 held-out TRAIN images
    benchmarks/.peer-venv/bin/python -m benchmarks.uncertainty_ablation heldout \
        --ours-checkpoint benchmarks/results/checkpoints/ablation_128_33/last.pth \
        --unet-weights benchmarks/results/uncertainty_checkpoints/unet_fit_345.pt
    # 3. the winner, once, on val
    benchmarks/.peer-venv/bin/python -m benchmarks.uncertainty_ablation val --candidates <winner> \
        --ours-checkpoint benchmarks/results/checkpoints/kvasir_ours_128_40min/last.pth \
        --unet-weights benchmarks/results/checkpoints/kvasir_unet_128_40min.pt
    # a diagnostic: several trainings pooled as one ensemble (--deep-ensemble), members interleaved,
    # against the mean of as many UNets
    benchmarks/.peer-venv/bin/python -m benchmarks.uncertainty_ablation val --ensemble 15 --ensembles 3,15 \
        --ours-checkpoint A/last.pth --deep-ensemble B/last.pth,C/last.pth --unet-weights UA.pt,UB.pt,UC.pt

It runs under benchmarks/.peer-venv because the plain UNet (segmentation_models_pytorch) lives there.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from benchmarks.flips import flip_averaged, flip_members
from src.models.segmentation import binary_entropy

UNET_CHECKPOINTS = common.RESULTS / "uncertainty_checkpoints"  # ours; results/checkpoints is not written to


def split_candidates(text: str) -> list:
    """Candidate names hold commas ("MI, members"): split only where the next name begins."""
    return [name.strip() for name in re.split(r",\s*(?=K=\d+: |plain UNet)", text) if name.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("train-unet", "heldout", "val", "bin-check", "tables"))
    p.add_argument("--data", default=str(common.DEFAULT_DATA))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--ours-checkpoint", help="our checkpoint (every mode but tables)")
    p.add_argument(
        "--deep-ensemble",
        type=lambda s: [x for x in s.split(",") if x],
        default=[],
        help="more of our checkpoints (comma-separated) pooled with --ours-checkpoint: each samples "
        "--ensemble / (1 + their number) members, interleaved (a diagnostic: several trainings' budget)",
    )
    p.add_argument(
        "--unet-weights",
        default=None,
        help="plain UNet state dict to compare with (heldout, val); several, comma-separated: "
        "their sigmoids' mean (a deep ensemble of the UNet, to set beside --deep-ensemble)",
    )
    p.add_argument(
        "--unet-steps",
        type=int,
        default=None,
        help="train-unet: optimizer steps (default: the ablation run's steps times ours/UNet idle-core "
        "step time from results/step_budget.json, the headline protocol)",
    )
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--ensemble", type=int, default=10, help="members sampled; smaller ensembles use the first N")
    p.add_argument("--ensembles", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10])
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument(
        "--member-flips",
        action="store_true",
        help="member k sees the image flipped by benchmarks.flips.MEMBER_FLIPS[k %% 4] (test-time augmentation)",
    )
    p.add_argument("--unet-flips", action="store_true", help="the UNet's probability: its mean over the 4 flips")
    p.add_argument(
        "--mc-dropout",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="each member encodes the image with its own dropout draw (segment(..., mc_dropout=True))",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--holdout", type=int, default=100)
    p.add_argument(
        "--candidates",
        type=split_candidates,
        default=None,
        help="score only these candidates, comma-separated full names as in the heldout JSON "
        '("K=5: ens std (current),K=10: MI, members"); default all',
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="image resamples of the paired bootstrap")
    p.add_argument("--eval-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The plain UNet on the fit split
# ---------------------------------------------------------------------------------------------


def unet_steps_for(ours_steps: int) -> int:
    """The headline protocol's exchange rate: the UNet gets the idle-core time that ours's steps took."""
    budget = json.loads((common.RESULTS / "step_budget.json").read_text())["seconds_per_step"]
    return round(ours_steps * budget["ours"] / budget["unet"])


def train_unet(args) -> dict:
    from benchmarks import kvasir
    from src.checkpoint import load_checkpoint

    state = load_checkpoint(args.ours_checkpoint)
    steps = args.unet_steps or unet_steps_for(state["step"])
    train_stems = common.read_stems(args.data, "train")
    fit, held = common.holdout_split(train_stems, args.holdout, seed=0)  # the ablation mode's split
    # the ablation run trained on exactly these stems (its linked data folder): check, don't assume
    fit_of_run = sorted(p.stem for p in (Path(args.ours_checkpoint).parent / "data" / "images").iterdir())
    if fit_of_run != fit:
        raise SystemExit(
            f"{args.ours_checkpoint} was not trained on holdout_split(train, {args.holdout}, seed=0)'s fit part"
        )
    kargs = kvasir.parse_args(
        [
            "--model",
            "unet",
            "--image-size",
            str(args.image_size),
            "--max-steps",
            str(steps),
            "--seed",
            str(args.seed),
            "--threads",
            str(args.threads),
        ]
    )
    fit_set = common.kvasir_dataset(args.data, fit, args.image_size, augmentations=kargs.augmentation)
    torch.manual_seed(kargs.seed)  # as kvasir.main + run_unet seed it
    net = kvasir.plain_unet()
    model, _, info = kvasir.train_loop(kargs, kvasir.unet_loss, net, fit_set, f"unet_fit_{steps}")
    weights = UNET_CHECKPOINTS / f"unet_fit_{steps}.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    (weights.parent / ".gitignore").write_text("*\n")  # 57 MB of weights stay out of git
    torch.save(model.state_dict(), weights)
    info.update(
        weights=str(weights),
        ours_checkpoint=args.ours_checkpoint,
        ours_steps=state["step"],
        fit_images=len(fit),
        held_out_images=len(held),
    )
    return {"mode": "train-unet", "train": info}


# ---------------------------------------------------------------------------------------------
# Uncertainty maps from the reverse process
# ---------------------------------------------------------------------------------------------

# binary_entropy: the one segment()'s uncertainty map uses (src/models/segmentation.py)


def mutual_information(member_probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """BALD (Houlsby et al. 2011): H(mean over members) - mean over members of H(member), the part
    of the predictive entropy that comes from the members disagreeing. member_probs: foreground
    probabilities with the members along `dim`. >= 0 (H is concave)."""
    return (binary_entropy(member_probs.mean(dim)) - binary_entropy(member_probs).mean(dim)).clamp(min=0)


def component_maps(step_probs: torch.Tensor, members: int) -> dict:
    """The model-resolution maps every candidate is built from. step_probs: (B, K, S, h, w)
    foreground probability of the x0 estimate of member k at reverse step s; the first `members`
    members are used.

    p_T       mean over members of each member's time-ensembled probability (segment()'s default mask)
    std_T     std over members of the time-ensembled member probabilities (segment()'s uncertainty)
    meanH_T   mean over members of H(time-ensembled member probability)
    p_F, std_F, meanH_F   the same from each member's FINAL x0 only (no time-ensembling)
    meanH_all mean over members and steps of H(step estimate): the expected entropy
    time_var  mean over members of the variance of a member's estimates across its steps
    total_var variance over all steps x members (time_var + the variance of the members' means)"""
    probs = step_probs[:, :members].float()
    timed, final = probs.mean(2), probs[:, :, -1]
    return {
        "p_T": timed.mean(1),
        "std_T": timed.std(1, unbiased=False),
        "meanH_T": binary_entropy(timed).mean(1),
        "p_F": final.mean(1),
        "std_F": final.std(1, unbiased=False),
        "meanH_F": binary_entropy(final).mean(1),
        "meanH_all": binary_entropy(probs).mean((1, 2)),
        "time_var": probs.var(2, unbiased=False).mean(1),
        "total_var": probs.flatten(1, 2).var(1, unbiased=False),
    }


MARGIN_EPS = 0.02  # keeps margin / spread finite where the members and steps agree exactly


def _margin_score(p, spread):
    """1 / (1 + |p - 0.5| / (spread + eps)): high where the mean sits near the threshold in units of
    its own spread, i.e. where another draw could land on the other side."""
    return 1 / (1 + (p - 0.5).abs() / (spread + MARGIN_EPS))


def _entropy(m, key):
    return binary_entropy(m[key])


# name -> (probability map that makes the mask, score from the (upsampled) component maps)
BASE_CANDIDATES = {
    "ens std (current)": ("p_T", lambda m: m["std_T"]),
    "p(1-p) of mean (= its entropy's ranking)": ("p_T", lambda m: m["p_T"] * (1 - m["p_T"])),
    "MI, members": ("p_T", lambda m: (_entropy(m, "p_T") - m["meanH_T"]).clamp(min=0)),
    "MI, steps x members": ("p_T", lambda m: (_entropy(m, "p_T") - m["meanH_all"]).clamp(min=0)),
    "expected entropy, steps x members": ("p_T", lambda m: m["meanH_all"]),
    "time variance": ("p_T", lambda m: m["time_var"]),
    "total variance, steps x members": ("p_T", lambda m: m["total_var"]),
    "entropy + 2 ens std": ("p_T", lambda m: _entropy(m, "p_T") + 2 * m["std_T"]),
    "entropy + 2 total std": ("p_T", lambda m: _entropy(m, "p_T") + 2 * m["total_var"].sqrt()),
    "margin / ens std": ("p_T", lambda m: _margin_score(m["p_T"], m["std_T"])),
    "margin / total std": ("p_T", lambda m: _margin_score(m["p_T"], m["total_var"].sqrt())),
    "final x0: ens std": ("p_F", lambda m: m["std_F"]),
    "final x0: p(1-p) of mean": ("p_F", lambda m: m["p_F"] * (1 - m["p_F"])),
    "final x0: MI": ("p_F", lambda m: (_entropy(m, "p_F") - m["meanH_F"]).clamp(min=0)),
}
# rank averages: the mean of the base candidates' quantiles (each score's CDF on the sample)
RANK_CANDIDATES = {
    "rank avg: p(1-p), ens std": ("p_T", ("p(1-p) of mean (= its entropy's ranking)", "ens std (current)")),
    "rank avg: p(1-p), total variance": (
        "p_T",
        ("p(1-p) of mean (= its entropy's ranking)", "total variance, steps x members"),
    ),
    "rank avg: p(1-p), MI steps x members": (
        "p_T",
        ("p(1-p) of mean (= its entropy's ranking)", "MI, steps x members"),
    ),
}
UNET = "plain UNet: p(1-p) of its sigmoid"


def sample_step_probs(
    model,
    images: torch.Tensor,
    runtime,
    steps: int,
    members: int,
    eta: float,
    seed: int,
    flips: bool = False,
    mc_dropout: bool = False,
) -> torch.Tensor:
    """(B, K, S, h, w): the foreground probability of every step's x0 estimate of `members`
    samples per image, consumed from model.reverse_process (rows ordered as segment() orders them,
    image-major, so member k of image b is row b * K + k; one seed for the whole batch). With
    `flips`, member k sees the image flipped by MEMBER_FLIPS[k % 4], its estimates flipped back;
    with `mc_dropout`, each member encodes the image with its own dropout draw, as segment() does."""
    repeated = runtime.to_device(images.repeat_interleave(members, dim=0))
    if flips:
        repeated = flip_members(repeated, members)
    estimates = []
    with runtime.autocast():
        for _, _, x0 in model.reverse_process(repeated, steps, "ddim", eta, seed, mc_dropout=mc_dropout):
            if flips:
                x0 = flip_members(x0, members)
            estimates.append(model.x0_to_probabilities(x0.float())[:, 0].cpu())
    probs = torch.stack(estimates, dim=1)  # (B*K, S, h, w)
    return probs.reshape(images.shape[0], members, *probs.shape[1:])


def sampled_step_probs(args, models: list, images: torch.Tensor, runtime, start: int) -> torch.Tensor:
    """sample_step_probs with the command line's sampling options, seeded by the batch's first index.
    Several models (--deep-ensemble) each sample --ensemble / len(models) members, interleaved:
    member k comes from model k % len(models), so every smaller ensemble (the first N members)
    draws on the models evenly."""
    per_model = [
        sample_step_probs(
            model,
            images,
            runtime,
            args.steps,
            args.ensemble // len(models),
            args.eta,
            args.seed + start,
            args.member_flips,
            args.mc_dropout,
        )
        for model in models
    ]
    return torch.stack(per_model, dim=2).flatten(1, 2)  # (B, K / M, M, S, h, w) -> (B, K, S, h, w)


def unet_probs(unet, images: torch.Tensor, runtime, flips: bool = False) -> torch.Tensor:
    """(B, h, w) the plain UNet's sigmoid, as kvasir.run_unet scores it; with `flips` its mean
    over the four flips of the image (test-time augmentation)."""

    def predict(x):
        return torch.sigmoid(unet(x * 2 - 1).float())

    with runtime.autocast():
        images = runtime.to_device(images)
        return (flip_averaged(predict, images) if flips else predict(images)).cpu()[:, 0]


def unets_probs(unets: list, images: torch.Tensor, runtime, flips: bool = False) -> torch.Tensor:
    """(B, h, w) the mean of several plain UNets' probabilities (unet_probs): one UNet's own, or a
    deep ensemble's, whose p(1-p) is then the UNet's counterpart of --deep-ensemble's."""
    return torch.stack([unet_probs(unet, images, runtime, flips) for unet in unets]).mean(0)


def candidate_scores(maps: dict, ensembles, rank_cdfs=None, names=None) -> dict:
    """{candidate: (probability map, score map)} for every ensemble size. maps: {f"K={k}": component
    maps, "unet": its probability}; maps may be at model or original resolution (scores are taken
    after upsampling the components, as UncertaintyErrorStats.add_pq takes p(1-p) after upsampling
    p). rank_cdfs: {base name: (edges, quantiles)} for the rank averages (None: skip them)."""
    out = {}
    for k in ensembles:
        m = maps[f"K={k}"]
        base = {}
        for name, (prob, fn) in BASE_CANDIDATES.items():
            base[name] = fn(m)
            full = f"K={k}: {name}"
            if names is None or full in names:
                out[full] = (m[prob], base[name])
        if rank_cdfs is not None:
            for name, (prob, parts) in RANK_CANDIDATES.items():
                full = f"K={k}: {name}"
                if names is None or full in names:
                    ranks = [
                        torch.from_numpy(np.interp(base[part].numpy(), *rank_cdfs[f"K={k}: {part}"])) for part in parts
                    ]
                    out[full] = (m[prob], sum(ranks) / len(ranks))
    if "unet" in maps and (names is None or UNET in names):
        out[UNET] = (maps["unet"], maps["unet"] * (1 - maps["unet"]))
    return out


def _resize(maps: dict, size) -> dict:
    """Bilinear upsampling of every (h, w) map of one image to the mask's original size."""
    keys = list(maps)
    stacked = common.resize_maps(torch.stack([maps[k].float() for k in keys]), size)
    return {k: stacked[i] for i, k in enumerate(keys)}


def load_models(args):
    from src.checkpoint import load_checkpoint, load_model
    from src.device import select_runtime

    runtime = select_runtime()
    paths = [args.ours_checkpoint, *args.deep_ensemble]
    models = [runtime.prepare_model(load_model(path, use_ema=True)).eval() for path in paths]
    info = {"ours_checkpoint": args.ours_checkpoint, "ours_steps": load_checkpoint(args.ours_checkpoint)["step"]}
    if args.deep_ensemble:
        info["deep_ensemble"] = args.deep_ensemble
    unets = []
    if args.unet_weights:
        from benchmarks import kvasir

        for path in args.unet_weights.split(","):
            unet = runtime.prepare_model(kvasir.plain_unet())
            unet.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            unets.append(unet.eval())
        info["unet_weights"] = args.unet_weights
    return models, unets, runtime, info


def sample_maps(
    args, models: list, unets: list, runtime, dataset, count: int, ensembles: list, began: float
) -> tuple[list, float]:
    """Samples the first `count` images in batches of 8: each image's component maps per ensemble
    size (and the UNet's probability), and the seconds spent sampling."""
    per_image_maps = []
    sampling_seconds = 0.0
    with torch.no_grad():
        for start in range(0, count, 8):
            indices = list(range(start, min(start + 8, count)))
            images = torch.stack([dataset[i][0] for i in indices])
            clock = time.perf_counter()
            step_probs = sampled_step_probs(args, models, images, runtime, start)
            sampling_seconds += time.perf_counter() - clock
            unet_p = unets_probs(unets, images, runtime, args.unet_flips) if unets else None
            components = {k: component_maps(step_probs, k) for k in ensembles}
            for offset in range(len(indices)):
                maps = {f"K={k}": {n: v[offset] for n, v in components[k].items()} for k in ensembles}
                if unet_p is not None:
                    maps["unet"] = unet_p[offset]
                per_image_maps.append(maps)
            print(f"  sampled {indices[-1] + 1}/{count} ({time.perf_counter() - began:.0f} s)", flush=True)
    return per_image_maps, sampling_seconds


def rank_cdfs_of(per_image_maps: list, ensembles: list) -> dict:
    """Each base score's empirical CDF (quantile edges, levels) over every pixel at model resolution."""

    def sample_of(fn):
        return torch.cat([fn(m).flatten() for m in per_image_maps]).numpy()

    quantiles = np.linspace(0, 1, 4097)
    rank_cdfs = {}
    for k in ensembles:
        for name, (_, fn) in BASE_CANDIDATES.items():
            edges = np.quantile(sample_of(lambda m, fn=fn, k=k: fn(m[f"K={k}"])), quantiles)
            unique, first = np.unique(edges, return_index=True)  # np.interp needs increasing x
            rank_cdfs[f"K={k}: {name}"] = (unique, quantiles[first])
    return rank_cdfs


def quantile_stats(per_image_maps: list, ensembles: list, rank_cdfs: dict, names) -> dict:
    """One QuantileErrorStats per candidate, its bins from the candidate's scores at model resolution."""
    model_res = [candidate_scores(m, ensembles, rank_cdfs, names) for m in per_image_maps]
    return {
        name: common.QuantileErrorStats.from_sample(torch.cat([s[name][1].flatten() for s in model_res]).numpy())
        for name in model_res[0]
    }


def legacy_stats(ensembles: list) -> dict:
    """The old fixed-bin statistics of the current std, p(1-p) of the mean and the UNet's p(1-p)."""
    legacy = {}
    for k in ensembles:
        legacy[f"K={k}: ens std (current)"] = common.UncertaintyErrorStats()
        legacy[f"K={k}: p(1-p) of mean (= its entropy's ranking)"] = common.UncertaintyErrorStats(
            upper=common.UncertaintyErrorStats.PQ_UPPER
        )
    legacy[UNET] = common.UncertaintyErrorStats(upper=common.UncertaintyErrorStats.PQ_UPPER)
    return legacy


def score_original_resolution(
    dataset, per_image_maps: list, ensembles: list, rank_cdfs: dict, names, stats: dict, legacy: dict, began: float
) -> tuple[dict, dict, dict]:
    """Adds every image's candidates at the original mask resolution to `stats` and `legacy`; returns
    each candidate's probability label and each label's per-image calibration counts and Dice."""
    count = len(per_image_maps)
    prob_keys = {}
    calibration, dice = {}, {}
    for index, maps in enumerate(per_image_maps):
        truth = dataset.load_original_mask(index)
        y = truth.ravel() != 0
        size = truth.shape[-2:]
        full = {
            key: (_resize(value, size) if isinstance(value, dict) else _resize({"p": value}, size)["p"])
            for key, value in maps.items()
        }
        scores = candidate_scores(full, ensembles, rank_cdfs, names)
        for name, (p, u) in scores.items():
            p_flat = p.numpy().ravel()
            stats[name].add(u.numpy().ravel(), (p_flat > 0.5) != y)
            prob_keys[name] = _prob_label(name)
        for label in set(prob_keys.values()):
            p = _prob_of(label, full)
            cal = common.CalibrationStats()
            cal.add_pixels(p.numpy().ravel(), y)
            calibration.setdefault(label, []).append((cal.count.copy(), cal.sum_p.copy(), cal.sum_y.copy()))
            dice.setdefault(label, []).append(common.score_probabilities(_prob_of(label, maps)[None], truth)["dice"])
        for name, collector in legacy.items():
            if name not in scores:
                continue
            p, u = scores[name]
            model_p = _prob_of(_prob_label(name), maps)[None]
            if "p(1-p)" in name:
                collector.add_pq(model_p, truth)
            else:
                collector.add(_component_of(name, maps), model_p, truth)
        if (index + 1) % 20 == 0:
            print(f"  scored {index + 1}/{count} ({time.perf_counter() - began:.0f} s)", flush=True)
    return prob_keys, calibration, dice


def score_rows(stats: dict, legacy: dict, prob_keys: dict, calibration: dict, dice: dict) -> dict:
    """Each candidate's AUROC, its probability's ECE and Dice, and its error pixel share."""
    rows = {}
    for name, collector in stats.items():
        label = prob_keys[name]
        rows[name] = {
            "auroc": collector.auroc(),
            "probability": label,
            "ece": common.pooled_ece(calibration[label]),
            "dice": float(np.mean(dice[label])),
            "error_pixel_share": float(
                collector.per_image()[0].sum() / (collector.per_image()[0].sum() + collector.per_image()[1].sum())
            ),
        }
        if name in legacy:
            rows[name]["auroc_fixed_bins"] = legacy[name].result()["auroc"]
    return rows


def score(args, stems: list, scored_on: str) -> dict:
    """Two passes over the images: sample once and keep every member's component maps at model
    resolution (which also give the quantile bins and rank CDFs of each score), then score each
    candidate at the original mask resolution."""
    models, unets, runtime, info = load_models(args)
    dataset = common.kvasir_dataset(args.data, stems, args.image_size)
    count = len(dataset) if args.eval_images is None else min(len(dataset), args.eval_images)
    ensembles = [k for k in args.ensembles if k <= args.ensemble]
    names = set(args.candidates) | {UNET} if args.candidates else None
    began = time.perf_counter()
    per_image_maps, sampling_seconds = sample_maps(args, models, unets, runtime, dataset, count, ensembles, began)

    # pass 1 at model resolution: each score's quantiles, for its bins and the rank averages
    rank_cdfs = rank_cdfs_of(per_image_maps, ensembles)
    stats = quantile_stats(per_image_maps, ensembles, rank_cdfs, names)
    # the old fixed-bin statistics too, to compare with the figures already in BENCHMARKS.md
    legacy = legacy_stats(ensembles)

    # pass 2 at the original resolution
    prob_keys, calibration, dice = score_original_resolution(
        dataset, per_image_maps, ensembles, rank_cdfs, names, stats, legacy, began
    )
    rows = score_rows(stats, legacy, prob_keys, calibration, dice)
    result = {
        "scored_on": scored_on,
        "images": count,
        "steps": args.steps,
        "members_sampled": args.ensemble,
        "ensembles": ensembles,
        "eta": args.eta,
        "member_flips": args.member_flips,
        "unet_flips": args.unet_flips,
        "mc_dropout": args.mc_dropout,
        "seed": args.seed,
        "models": info,
        "rows": rows,
        "sampling_seconds_per_image": sampling_seconds / count,
        "total_minutes": (time.perf_counter() - began) / 60,
    }
    _store = {"stats": stats, "calibration": calibration, "dice": dice, "prob_keys": prob_keys}
    return result, _store


def _prob_label(name: str) -> str:
    if name == UNET:
        return "unet"
    k = name.split(":")[0]
    return f"{k}: {BASE_CANDIDATES.get(name.split(': ', 1)[1], RANK_CANDIDATES.get(name.split(': ', 1)[1]))[0]}"


def _prob_of(label: str, maps: dict) -> torch.Tensor:
    if label == "unet":
        return maps["unet"]
    k, key = label.split(": ")
    return maps[k][key]


def _component_of(name: str, maps: dict) -> torch.Tensor:
    return maps[name.split(":")[0]]["std_T"]


def bootstrap_against_unet(store: dict, names, n: int, seed: int = 0) -> dict:
    """Paired over the same images (resampled together): AUROC and ECE of each candidate minus the
    plain UNet's, Dice (paired_bootstrap on per-image Dice), and the AUROC minus that of the
    current ensemble std of the same ensemble size, where that was scored too."""
    unet_err, unet_cor = store["stats"][UNET].per_image()
    unet_cal = [np.array([c[i] for c in store["calibration"]["unet"]]) for i in range(3)]
    out = {}
    for name in names:
        err, cor = store["stats"][name].per_image()
        label = store["prob_keys"][name]
        cal = [np.array([c[i] for c in store["calibration"][label]]) for i in range(3)]

        def auroc_diff(e, c, ue, uc):
            return common.auroc_from_histograms(e, c) - common.auroc_from_histograms(ue, uc)

        def ece_diff(n1, p1, y1, n2, p2, y2):
            return common.ece_from_bins(n1, p1, y1) - common.ece_from_bins(n2, p2, y2)

        current = f"{name.split(':')[0]}: ens std (current)"  # segment()'s uncertainty today, same ensemble
        out[name] = {
            "auroc_minus_unet": common.pooled_bootstrap(auroc_diff, [err, cor, unet_err, unet_cor], n, seed),
            "auroc": common.pooled_bootstrap(lambda e, c: common.auroc_from_histograms(e, c), [err, cor], n, seed),
            "ece_minus_unet": common.pooled_bootstrap(ece_diff, [*cal, *unet_cal], n, seed),
            "dice_minus_unet": common.paired_bootstrap(store["dice"][label], store["dice"]["unet"], n, seed),
        }
        if current in store["stats"] and current != name:
            out[name]["auroc_minus_current"] = common.pooled_bootstrap(
                auroc_diff, [err, cor, *store["stats"][current].per_image()], n, seed
            )
    out[UNET] = {
        "auroc": common.pooled_bootstrap(lambda e, c: common.auroc_from_histograms(e, c), [unet_err, unet_cor], n, seed)
    }
    return out


def run_heldout(args) -> dict:
    train_stems = common.read_stems(args.data, "train")
    _, held = common.holdout_split(train_stems, args.holdout, seed=0)
    result, store = score(args, held, f"{len(held)} held-out TRAIN images (holdout_split seed 0)")
    if UNET in store["stats"]:
        result["bootstrap"] = bootstrap_against_unet(store, [n for n in result["rows"] if n != UNET], args.bootstrap)
    _print_rows(result)
    return {"mode": "heldout", **result}


def run_val(args) -> dict:
    val = common.read_stems(args.data, "val")
    result, store = score(args, val, f"{len(val)} val images")
    if UNET in store["stats"]:  # without --unet-weights: ours' rows alone
        result["bootstrap"] = bootstrap_against_unet(store, [n for n in result["rows"] if n != UNET], args.bootstrap)
    result["scored_stems"] = val[: result["images"]]
    _print_rows(result)
    return {"mode": "val", **result}


def _print_rows(result: dict) -> None:
    unet = result["rows"].get(UNET, {}).get("auroc", float("nan"))
    for name, row in sorted(result["rows"].items(), key=lambda item: -item[1]["auroc"]):
        extra = f", fixed bins {row['auroc_fixed_bins']:.4f}" if "auroc_fixed_bins" in row else ""
        print(
            f"{name:60s} AUROC {row['auroc']:.4f} ({row['auroc'] - unet:+.4f} vs UNet{extra})  "
            f"ECE {row['ece']:.4f}  Dice {row['dice']:.4f}",
            flush=True,
        )


def exact_auroc(u, error) -> float:
    """AUROC by the rank-sum (Mann-Whitney) formula on every pixel, ties at their average rank:
    the reference the binned statistics are checked against (memory grows with the pixels)."""
    u, error = np.asarray(u, dtype=np.float64).ravel(), np.asarray(error).ravel().astype(bool)
    _, inverse, counts = np.unique(u, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based ranks, ties averaged
    positives, negatives = error.sum(), (~error).sum()
    return float((average_rank[inverse][error].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def run_bin_check(args) -> dict:
    """On the first --eval-images val images: the AUROC of the ensemble std (K = --ensembles' first)
    and of p(1-p) of the mean, exactly (every pixel ranked), with the quantile bins used here, and
    with UncertaintyErrorStats' fixed bins over [0, upper] that kvasir.py reports."""
    models, _, runtime, info = load_models(args)
    stems = common.read_stems(args.data, "val")
    dataset = common.kvasir_dataset(args.data, stems, args.image_size)
    count = min(len(dataset), args.eval_images or len(dataset))
    k = args.ensembles[0]
    pixels = {"std": [], "pq": [], "error": []}
    fixed = {
        "std": common.UncertaintyErrorStats(),
        "pq": common.UncertaintyErrorStats(upper=common.UncertaintyErrorStats.PQ_UPPER),
    }
    model_res = {"std": [], "pq": []}
    with torch.no_grad():
        for start in range(0, count, 8):  # the batches and seeds of score(), so the maps are the same
            indices = list(range(start, min(start + 8, count)))
            images = torch.stack([dataset[i][0] for i in indices])
            maps = component_maps(sampled_step_probs(args, models, images, runtime, start), k)
            for offset, index in enumerate(indices):
                truth = dataset.load_original_mask(index)
                full = _resize({n: maps[n][offset] for n in ("p_T", "std_T")}, truth.shape[-2:])
                p = full["p_T"].double().numpy().ravel()
                pixels["std"].append(full["std_T"].numpy().ravel())
                pixels["pq"].append(p * (1 - p))
                pixels["error"].append((p > 0.5) != (truth.ravel() != 0))
                fixed["std"].add(maps["std_T"][offset], maps["p_T"][offset][None], truth)
                fixed["pq"].add_pq(maps["p_T"][offset][None], truth)
                model_res["std"].append(maps["std_T"][offset].flatten())
                p_model = maps["p_T"][offset].flatten()
                model_res["pq"].append(p_model * (1 - p_model))
    error = np.concatenate(pixels["error"])
    rows = {}
    for name in ("std", "pq"):
        u = np.concatenate(pixels[name])
        quantile = common.QuantileErrorStats.from_sample(torch.cat(model_res[name]).numpy())
        for image_u, image_e in zip(pixels[name], pixels["error"]):
            quantile.add(image_u, image_e)
        rows[f"K={k}: {'ens std' if name == 'std' else 'p(1-p) of mean'}"] = {
            "exact": exact_auroc(u, error),
            "quantile_bins": quantile.auroc(),
            "fixed_bins": fixed[name].result()["auroc"],
            "share_of_pixels_in_lowest_fixed_bin": float(
                (fixed[name].hist_error[0] + fixed[name].hist_correct[0]) / error.size
            ),
        }
        print(name, rows[f"K={k}: {'ens std' if name == 'std' else 'p(1-p) of mean'}"], flush=True)
    return {"mode": "bin-check", "images": count, "pixels": int(error.size), "models": info, "rows": rows}


def _ci(triple, digits: int = 3) -> str:
    point, low, high = triple
    return f"{point:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _choice_lines(heldout: dict, heldout_check: dict | None, other: dict | None) -> list:
    """The held-out choice table's lines: every candidate's AUROC at 5 and 10 members, against the UNet."""
    rows, boot = heldout["rows"], heldout["bootstrap"]
    unet = rows[UNET]
    head = [
        "candidate",
        "AUROC, 5 members",
        "AUROC, 10 members",
        "10 members − UNet, 345 steps (paired, 95 % interval)",
    ]
    if heldout_check:
        head += ["10 members − UNet, 1104 steps (paired)", "5 members − ens std (paired)"]
    if other:
        head += ["10 members, ablation_128_0"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = list(BASE_CANDIDATES) + list(RANK_CANDIDATES)
    names.sort(key=lambda n: -rows[f"K=10: {n}"]["auroc"])
    for name in names:
        k5, k10 = rows[f"K=5: {name}"], rows[f"K=10: {name}"]
        cells = [name, f"{k5['auroc']:.3f}", f"{k10['auroc']:.3f}", _ci(boot[f"K=10: {name}"]["auroc_minus_unet"])]
        if heldout_check:
            check = heldout_check["bootstrap"]
            cells += [
                _ci(check[f"K=10: {name}"]["auroc_minus_unet"]),
                _ci(check[f"K=5: {name}"]["auroc_minus_current"])
                if "auroc_minus_current" in check[f"K=5: {name}"]
                else "–",
            ]
        if other:
            cells.append(f"{other['rows'][f'K=10: {name}']['auroc']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**plain UNet, p(1-p) of its sigmoid** (345 steps)", f"{unet['auroc']:.3f}", "", ""]
    if heldout_check:
        cells += [f"1104 steps: {heldout_check['rows'][UNET]['auroc']:.3f}", ""]
    if other:
        cells.append("")
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def _calibration_lines(heldout: dict, heldout_check: dict | None) -> list:
    """The held-out ECE and Dice table's lines (after a blank line), against the UNet's sigmoid."""
    rows, boot = heldout["rows"], heldout["bootstrap"]
    unet = rows[UNET]
    lines = [
        "",
        "| probability | members | ECE (15 bins) | Dice | ECE − UNet, 345 steps (paired) | Dice − UNet, 345 steps (paired) |",
        "|---|---|---|---|---|---|",
    ]
    for k in heldout["ensembles"]:
        for name, label in (
            ("ens std (current)", "mean over members x steps (segment())"),
            ("final x0: ens std", "mean of the members' final x0"),
        ):
            row, b = rows[f"K={k}: {name}"], boot[f"K={k}: {name}"]
            lines.append(
                f"| {label} | {k} | {row['ece']:.4f} | {row['dice']:.3f} | {_ci(b['ece_minus_unet'], 4)} | {_ci(b['dice_minus_unet'])} |"
            )
    lines.append(f"| plain UNet's sigmoid, 345 steps | – | {unet['ece']:.4f} | {unet['dice']:.3f} | | |")
    if heldout_check:
        u = heldout_check["rows"][UNET]
        lines.append(f"| plain UNet's sigmoid, 1104 steps | – | {u['ece']:.4f} | {u['dice']:.3f} | | |")
    return lines


def _val_lines(vals: dict) -> list:
    """The val confirmation table's lines (after a blank line): each run's candidates and the UNet."""
    lines = [
        "",
        "| val, budget | uncertainty | members | AUROC (95 % interval) | − UNet p(1-p) (paired) | − ens std, same members (paired) | ECE | ECE − UNet (paired) | Dice − UNet (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, val in vals.items():
        vrows, vboot = val["rows"], val["bootstrap"]
        for name in sorted((n for n in vrows if n != UNET), key=lambda n: (int(n.split(":")[0][2:]), n)):
            k, short = name.split(": ", 1)
            b = vboot[name]
            current = _ci(b["auroc_minus_current"]) if "auroc_minus_current" in b else "–"
            point, low, high = b["auroc"]
            lines.append(
                f"| {label} | {short} | {k[2:]} | {point:.3f} [{low:.3f}, {high:.3f}] | {_ci(b['auroc_minus_unet'])} | {current} | "
                f"{vrows[name]['ece']:.4f} | {_ci(b['ece_minus_unet'], 4)} | {_ci(b['dice_minus_unet'])} |"
            )
        point, low, high = vboot[UNET]["auroc"]
        lines.append(
            f"| {label} | plain UNet, p(1-p) | – | {point:.3f} [{low:.3f}, {high:.3f}] | | | {vrows[UNET]['ece']:.4f} | | |"
        )
    return lines


def markdown_tables(heldout: dict, vals: dict, heldout_check: dict | None = None, other: dict | None = None) -> str:
    """BENCHMARKS.md's tables from the results JSONs: the held-out choice (every candidate, both
    ensemble sizes; heldout_check: the same samples against the UNet of equal steps, with the
    paired difference to the current std; other: the same candidates on another ablation
    checkpoint) and the val confirmation ({label: val JSON})."""
    lines = _choice_lines(heldout, heldout_check, other)
    lines += _calibration_lines(heldout, heldout_check)
    lines += _val_lines(vals)
    return "\n".join(lines)


def run_tables(args) -> dict:
    """Print the markdown tables from results/uncertainty_*.json (no sampling)."""

    def load(name):
        path = common.RESULTS / name
        return json.loads(path.read_text()) if path.is_file() else None

    vals = {}
    for label, stem in (("40 min", "uncertainty_val_128_40min"), ("20 min", "uncertainty_val_128_20min")):
        vals[label] = load(f"{stem}.json")
        single = load(f"{stem}_k1.json")  # the same candidates from 1 sample per image, a separate run
        if single:
            for key in ("rows", "bootstrap"):
                vals[label][key].update({n: v for n, v in single[key].items() if n != UNET})
    text = markdown_tables(
        load("uncertainty_heldout_128_33.json"),
        vals,
        load("uncertainty_heldout_128_33_unet1104.json"),
        load("uncertainty_heldout_128_0.json"),
    )
    print(text)
    return {"mode": "tables", "markdown": text}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode != "tables" and not args.ours_checkpoint:
        raise SystemExit(f"{args.mode} needs --ours-checkpoint")
    models = 1 + len(args.deep_ensemble)
    if args.ensemble % models:
        raise SystemExit(
            f"--ensemble {args.ensemble} is not a whole number of members for each of {models} checkpoints"
        )
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = {
        "train-unet": train_unet,
        "heldout": run_heldout,
        "val": run_val,
        "bin-check": run_bin_check,
        "tables": run_tables,
    }[args.mode]
    result = run(args)
    out = Path(args.out or common.RESULTS / f"uncertainty_{args.mode.replace('-', '_')}.json")
    result.update(machine=common.machine_info(), peak_rss_mib=common.peak_rss_mib())
    common.write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
