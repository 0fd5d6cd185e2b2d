"""The benchmark scripts' --smoke runs (seconds each) and their small helpers.

The Kvasir-SEG runs skip when ../shared/data/kvasir-seg is absent; the peer and plain-UNet runs
skip when benchmarks/.peer-venv (benchmarks/setup_peer.sh) is absent.
"""

import contextlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import common, data_loading, kvasir, report, sampling_cost, speed, step_budget, uncertainty_ablation

needs_kvasir = pytest.mark.skipif(
    not (common.DEFAULT_DATA / "splits" / "train.txt").is_file(),
    reason=f"Kvasir-SEG not found at {common.DEFAULT_DATA}",
)
needs_peer_venv = pytest.mark.skipif(not common.PEER_PYTHON.exists(), reason="benchmarks/.peer-venv not set up")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The scripts set torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_uncertainty_error_stats_separates_errors():
    stats = common.UncertaintyErrorStats()
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[:, :2] = 1
    probabilities = torch.zeros(1, 4, 4)
    probabilities[0, :, :1] = 1.0  # column 1 is a missed foreground column: the errors
    uncertainty = torch.zeros(4, 4)
    uncertainty[:, 1] = 0.4  # exactly on the errors
    stats.add(uncertainty, probabilities, truth)
    result = stats.result()
    assert result["auroc"] == pytest.approx(1.0)
    assert result["pearson_r"] == pytest.approx(1.0, abs=1e-6)
    assert result["error_pixel_share"] == pytest.approx(0.25)


def test_calibration_of_a_calibrated_predictor_is_zero():
    """Every bin holds 150 pixels at its centre p = (b + 0.5) / 15 and exactly 150 p of them
    (an integer, 10 b + 5) are foreground: ECE 0, and each bin's frequency equals its confidence."""
    stats = common.CalibrationStats()
    for b in range(15):
        p = (b + 0.5) / 15
        truth = np.zeros((10, 15), dtype=np.uint8)
        truth.ravel()[: 10 * b + 5] = 1
        stats.add(torch.full((1, 10, 15), p), truth)
    result = stats.result()
    assert result["ece"] == pytest.approx(0.0, abs=1e-6)  # float32 probabilities
    assert result["count"] == [150] * 15 and result["pixels"] == 15 * 150
    assert result["frequency"] == pytest.approx(result["confidence"], abs=1e-6)
    assert result["confidence"] == pytest.approx([(b + 0.5) / 15 for b in range(15)], abs=1e-6)


def test_calibration_of_an_overconfident_predictor():
    """p = 0.95 where 70 % are foreground, p = 0.05 where 30 % are: ECE = 0.25 exactly, the
    other 13 bins empty (None), Brier score known."""
    stats = common.CalibrationStats()
    truth = np.zeros((2, 100), dtype=np.uint8)
    truth[0, :70] = 1  # row 0: predicted 0.95, 70 % foreground
    truth[1, :30] = 1  # row 1: predicted 0.05, 30 % foreground
    probabilities = torch.tensor([[0.95] * 100, [0.05] * 100])[None]
    stats.add(probabilities, truth)
    result = stats.result()
    assert result["ece"] == pytest.approx(0.25)
    assert result["count"][0] == 100 and result["count"][14] == 100 and sum(result["count"]) == 200
    assert result["frequency"][14] == pytest.approx(0.7) and result["confidence"][14] == pytest.approx(0.95)
    assert result["frequency"][0] == pytest.approx(0.3) and result["confidence"][1] is None
    brier = 0.7 * 0.05**2 + 0.3 * 0.95**2  # the same for both rows, by symmetry
    assert result["brier"] == pytest.approx(brier)


def test_calibration_upsamples_like_the_scoring():
    """Probabilities at model resolution are upsampled to the mask's resolution before binning."""
    stats = common.CalibrationStats()
    stats.add(torch.full((1, 4, 4), 0.9), np.ones((8, 12), dtype=np.uint8))
    result = stats.result()
    assert result["pixels"] == 96 and result["ece"] == pytest.approx(0.1)


def test_pq_auroc_is_one_when_errors_sit_at_the_highest_pq():
    """p(1-p) as the uncertainty: the error pixels are the ones at p = 0.55 / 0.45 (p(1-p) = 0.2475,
    near the 0.25 top: binned over [0, 0.25], not clipped into one bin), the correct ones are
    confident (p(1-p) <= 0.09)."""
    truth = np.zeros((4, 10), dtype=np.uint8)
    truth[:2] = 1
    p = torch.tensor(
        [
            [0.99] * 8 + [0.45] * 2,  # foreground: 8 right, 2 missed at p = 0.45
            [0.9] * 8 + [0.45] * 2,
            [0.01] * 8 + [0.55] * 2,  # background: 8 right, 2 false positives at 0.55
            [0.1] * 8 + [0.55] * 2,
        ]
    )[None]
    stats = common.UncertaintyErrorStats(upper=common.UncertaintyErrorStats.PQ_UPPER)
    stats.add_pq(p, truth)
    result = stats.result()
    assert result["auroc"] == pytest.approx(1.0)
    assert result["error_pixel_share"] == pytest.approx(0.2)
    assert result["mean_std_on_errors"] == pytest.approx(0.2475, abs=1e-3)
    # with the std's [0, 0.5] range the same values still separate, but a p(1-p) near 0.25 must
    # not be clipped: the top bin of the p(1-p) histogram is 0.25, so 0.2475 lands below it
    assert np.flatnonzero(stats.hist_error).max() < stats.BINS - 1


def test_paired_bootstrap_contains_a_known_shift():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.3, 0.9, size=120)
    a = b + 0.02 + rng.normal(0, 0.05, size=120)  # a known shift of 0.02 plus paired noise
    mean, low, high = common.paired_bootstrap(a, b, n=2000)
    assert mean == pytest.approx(np.mean(a - b))
    assert low < 0.02 < high and low < mean < high
    assert common.paired_bootstrap(a, b, n=2000) == (mean, low, high)  # seeded


def test_paired_bootstrap_of_identical_inputs_is_zero_width():
    values = np.linspace(0.2, 0.9, 50)
    assert common.paired_bootstrap(values, values, n=500) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        common.paired_bootstrap([0.1, 0.2], [0.1])


def test_binary_entropy_and_mutual_information_known_values():
    ua = uncertainty_ablation
    # 0 and 1 are floored at PROB_FLOOR = 1e-6, whose entropy is 2e-5 bits
    assert ua.binary_entropy(torch.tensor([0.5, 0.0, 1.0, 0.25])).tolist() == pytest.approx(
        [1.0, 0.0, 0.0, 0.8112781], abs=5e-5
    )
    # members along dim 1: two members that disagree completely (0 and 1) -> MI = H(0.5) - 0 = 1 bit;
    # two members that agree at 0.5 -> all the entropy is shared, MI = 0; 0.2 and 0.6 -> H(0.4) - mean H
    members = torch.tensor([[[0.0, 0.5, 0.2]], [[1.0, 0.5, 0.6]]]).permute(1, 0, 2)  # (1, 2 members, 3 pixels)
    expected_last = 0.9709506 - (0.7219281 + 0.9709506) / 2
    assert ua.mutual_information(members, dim=1)[0].tolist() == pytest.approx([1.0, 0.0, expected_last], abs=5e-5)


def test_component_maps_time_and_total_variance():
    """2 members x 2 steps at one pixel: member 0 steps (0.2, 0.4), member 1 steps (0.6, 1.0)."""
    probs = torch.tensor([[0.2, 0.4], [0.6, 1.0]]).reshape(1, 2, 2, 1, 1)
    maps = uncertainty_ablation.component_maps(probs, members=2)
    assert maps["p_T"].item() == pytest.approx(0.55)  # mean of member means 0.3 and 0.8
    assert maps["std_T"].item() == pytest.approx(0.25)  # population std of 0.3 and 0.8
    assert maps["p_F"].item() == pytest.approx(0.7)  # final steps 0.4 and 1.0
    assert maps["std_F"].item() == pytest.approx(0.3)
    assert maps["time_var"].item() == pytest.approx((0.01 + 0.04) / 2)  # within-member variances
    # total = within-member + between-member variance: 0.025 + 0.25 ** 2
    assert maps["total_var"].item() == pytest.approx(0.025 + 0.0625)
    # only the first member: no spread across members
    assert uncertainty_ablation.component_maps(probs, members=1)["std_T"].item() == 0.0


class CpuRuntime:
    """select_runtime's interface without autocast, so the benchmark's sampling and segment()
    both compute in float32 on the CPU."""

    to_device = staticmethod(lambda x: x)
    autocast = staticmethod(contextlib.nullcontext)


def test_step_probs_reproduce_segment_mean_and_std():
    """The benchmark consumes reverse_process itself; its members x steps, averaged as segment()
    averages them (eta 1, time-ensembling, same seed), must give segment()'s probabilities and
    uncertainty exactly, or the candidates would not be about the sampler users get."""
    from src.models import DiffusionConfig, DiffusionSegmentation

    torch.manual_seed(0)
    model = DiffusionSegmentation(
        DiffusionConfig(
            image_size=(32, 32),
            base_channels=8,
            channel_mults=(1, 2),
            attention_resolutions=(2,),
            num_heads=1,
            zero_init_noisy_input=False,  # hears x_t, so the members differ as a trained model's do
        )
    ).eval()

    images = torch.rand(2, 3, 32, 32)
    probs = uncertainty_ablation.sample_step_probs(model, images, CpuRuntime, steps=3, members=4, eta=1.0, seed=7)
    assert probs.shape == (2, 4, 3, 32, 32)
    maps = uncertainty_ablation.component_maps(probs, members=4)
    output = model.segment(images, steps=3, ensemble=4, seed=7, eta=1.0, time_ensemble=True)
    assert torch.allclose(maps["p_T"], output.probabilities[:, 0], atol=1e-6)
    assert torch.allclose(maps["std_T"], output.ensemble_std, atol=1e-6)
    assert maps["std_T"].max() > 0  # the members do differ


def test_deep_ensemble_interleaves_the_checkpoints_members():
    """--deep-ensemble: with two models and 4 members, members 0 and 2 are the first model's two
    samples and 1 and 3 the second's, so the first two members (a smaller ensemble) hold one of each."""
    import argparse

    from tests.helpers import tiny_model

    first, second = tiny_model(image_size=(32, 32)).eval(), tiny_model(image_size=(32, 32)).eval()
    with torch.no_grad():  # tiny_model seeds its weights: make the second a different training's
        for weight in second.parameters():
            weight.add_(torch.randn_like(weight) * 0.1)
    args = argparse.Namespace(steps=2, ensemble=4, eta=1.0, seed=3, member_flips=False, mc_dropout=False)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pooled = uncertainty_ablation.sampled_step_probs(args, [first, second], images, CpuRuntime, start=0)
        alone = [uncertainty_ablation.sample_step_probs(m, images, CpuRuntime, 2, 2, 1.0, 3) for m in (first, second)]
    assert pooled.shape == (2, 4, 2, 32, 32)
    assert torch.equal(pooled[:, 0::2], alone[0]) and torch.equal(pooled[:, 1::2], alone[1])
    assert not torch.equal(alone[0], alone[1])


def test_several_unet_weights_average_their_probabilities():
    torch.manual_seed(0)
    unets = [torch.nn.Conv2d(3, 1, 1).eval() for _ in range(2)]
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        alone = [uncertainty_ablation.unet_probs(u, images, CpuRuntime) for u in unets]
        pooled = uncertainty_ablation.unets_probs(unets, images, CpuRuntime)
    assert pooled.shape == (2, 8, 8) and torch.allclose(pooled, (alone[0] + alone[1]) / 2)
    assert torch.equal(uncertainty_ablation.unets_probs(unets[:1], images, CpuRuntime), alone[0])


def test_deep_ensemble_needs_whole_members_per_checkpoint():
    with pytest.raises(SystemExit, match="--ensemble 5 is not a whole number of members for each of 2 checkpoints"):
        uncertainty_ablation.main(["val", "--ours-checkpoint", "a.pth", "--deep-ensemble", "b.pth", "--ensemble", "5"])


def test_quantile_error_stats_gives_the_exact_auroc():
    """Scores of errors (3, 4) against correct pixels (1, 2, 3.5): of the 6 pairs the error is
    higher in 5, so AUROC 5/6; a tie (error and correct at the same score) counts half."""
    stats = common.QuantileErrorStats.from_sample([1, 2, 3, 3.5, 4], bins=64)
    stats.add(np.array([1, 3, 2, 4, 3.5]), np.array([0, 1, 0, 1, 0]))
    assert stats.auroc() == pytest.approx(5 / 6)
    tied = common.QuantileErrorStats.from_sample([1, 2], bins=8)
    tied.add(np.array([2, 2, 1]), np.array([1, 0, 0]))  # error at 2 vs correct at 2 (tie) and 1 (below)
    assert tied.auroc() == pytest.approx(0.75)
    errors, corrects = stats.per_image()
    assert errors.shape == corrects.shape == (1, stats.bins) and errors.sum() == 2 and corrects.sum() == 3


def test_candidate_names_with_commas_survive_the_command_line():
    names = uncertainty_ablation.split_candidates(
        "K=5: ens std (current),K=10: MI, members, K=1: expected entropy, steps x members"
    )
    assert names == ["K=5: ens std (current)", "K=10: MI, members", "K=1: expected entropy, steps x members"]
    assert set(names) <= {f"K={k}: {n}" for k in (1, 5, 10) for n in uncertainty_ablation.BASE_CANDIDATES}


def test_exact_auroc_ranks_ties_at_half():
    exact = uncertainty_ablation.exact_auroc
    assert exact([1, 3, 2, 4, 3.5], [0, 1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert exact([2, 2, 1], [1, 0, 0]) == pytest.approx(0.75)
    assert exact([0.0] * 6, [1, 0, 1, 0, 0, 0]) == pytest.approx(0.5)  # all tied: chance


def test_auroc_and_ece_from_counts_match_the_pooled_stats():
    rng = np.random.default_rng(0)
    u, e = rng.uniform(size=5000), rng.uniform(size=5000) < 0.2
    fixed = common.UncertaintyErrorStats(upper=1.0)
    fixed._accumulate(u, np.where(e, 1.0, 0.0), np.zeros(5000), 0.5)  # error = (p > 0.5) != 0 = e
    assert common.auroc_from_histograms(fixed.hist_error, fixed.hist_correct) == pytest.approx(fixed.result()["auroc"])
    p, y = rng.uniform(size=5000), rng.uniform(size=5000) < 0.3
    calibration = common.CalibrationStats()
    calibration.add_pixels(p, y)
    assert common.ece_from_bins(calibration.count, calibration.sum_p, calibration.sum_y) == pytest.approx(
        calibration.result()["ece"]
    )


def test_pooled_bootstrap_of_an_auroc_difference():
    """Model a's scores separate errors perfectly on every image, b's not at all: the pooled AUROC
    difference is 0.5 on any resample (a zero-width interval); identical models give exactly 0."""
    images, bins = 20, 4
    a_err, a_cor = np.zeros((images, bins)), np.zeros((images, bins))
    a_err[:, 3], a_cor[:, 0] = 5, 50
    b_err, b_cor = np.zeros((images, bins)), np.zeros((images, bins))
    b_err[:, 1], b_cor[:, 1] = 5, 50

    def diff(e1, c1, e2, c2):
        return common.auroc_from_histograms(e1, c1) - common.auroc_from_histograms(e2, c2)

    assert common.pooled_bootstrap(diff, [a_err, a_cor, b_err, b_cor], n=300) == pytest.approx((0.5, 0.5, 0.5))
    assert common.pooled_bootstrap(diff, [a_err, a_cor, a_err, a_cor], n=300) == (0.0, 0.0, 0.0)
    # a difference that varies by image: its interval has width and holds the pooled point estimate
    rng = np.random.default_rng(3)
    noisy = b_err.copy()
    noisy[:, 3] = rng.integers(0, 6, size=images)
    point, low, high = common.pooled_bootstrap(diff, [noisy, b_cor, b_err, b_cor], n=500)
    assert low < point < high and high - low > 0.01
    with pytest.raises(ValueError):
        common.pooled_bootstrap(diff, [a_err, a_cor[:3], b_err, b_cor])


def fake_results():
    """Small ours / plain-UNet results dicts with the keys kvasir.py writes."""
    rng = np.random.default_rng(0)
    stems = [f"img{i}" for i in range(10)]
    calibration = common.CalibrationStats()
    calibration.add_pixels(rng.uniform(size=2000), rng.uniform(size=2000) < 0.4)
    cal = calibration.result()
    unc = {
        "pearson_r": 0.3,
        "auroc": 0.8,
        "error_pixel_share": 0.05,
        "mean_std_on_errors": 0.2,
        "mean_std_on_correct": 0.05,
        "pixels": 2000,
        "upper": 0.25,
    }

    def row(level):
        dice = np.clip(level + rng.normal(0, 0.05, size=10), 0, 1)
        return {
            "dice": float(dice.mean()),
            "dice_std": float(dice.std()),
            "iou": 0.6,
            "iou_std": 0.1,
            "images": 10,
            "seconds_per_image": 0.1,
            "per_image_dice": dice.tolist(),
        }

    keys = ["ddim1_ens1", "ddim5_ens1", "ddim10_ens1", "ddim25_ens1", "ddim50_ens1", "ddim10_ens5"]
    ours = {
        "model": "ours",
        "image_size": 128,
        "budget_minutes": 40,
        "ensemble_key": "ddim10_ens5",
        "rows": {key: row(0.7 + 0.01 * i) for i, key in enumerate(keys)},
        "scored_stems": stems,
        "calibration": {key: cal for key in keys},
        "uncertainty_error": {**unc, "upper": 0.5},
        "uncertainty_error_pq": unc,
        "uncertainty_error_pq_rows": {key: unc for key in keys},
    }
    unet = {
        "model": "unet",
        "image_size": 128,
        "budget_minutes": 40,
        "rows": {"unet": row(0.72)},
        "scored_stems": stems,
        "calibration": {"unet": cal},
        "uncertainty_error_pq": unc,
    }
    return ours, unet


def test_confident_errors_counts_the_outer_bins_share_of_errors_and_ece():
    """Bins at 0.01 / 0.5 / 0.99 with 10 / 5 / 10 pixels, 10 % / 40 % / 80 % of them foreground: the
    wrong pixels are 1, 3 (0.5 counts as foreground) and 2, so the outer bins hold 3 of 6; the
    calibration gaps 0.9, 0.5 and 1.9 give them 2.8 of 3.3 of the ECE."""
    calibration = {"count": [10, 5, 10], "confidence": [0.01, 0.5, 0.99], "frequency": [0.1, 0.4, 0.8]}
    errors, ece = report.confident_errors(calibration)
    assert errors == pytest.approx(0.5) and ece == pytest.approx(2.8 / 3.3)


def test_report_plots_are_written_from_fake_results(tmp_path):
    ours, unet = fake_results()
    reliability = report.reliability_plot(ours, unet, tmp_path / "reliability.png")
    steps = report.steps_plot(ours, unet, tmp_path / "dice_vs_steps.png")
    for path in (reliability, steps):
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # older results without the new keys: nothing to draw, no error
    assert report.reliability_plot({"rows": {}}, None, tmp_path / "none.png") is None
    assert report.steps_plot(None, unet, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_report_tables_from_fake_results():
    ours, unet = fake_results()
    paired = report.paired_table(ours, unet, n=500)
    assert "ours DDIM 10, ensemble 5 − smp.Unet" in paired and "ours DDIM 50 − DDIM 1 (ensemble 1)" in paired
    assert paired.count("\n") == 1 + 6 + 4  # header + 6 rows vs the UNet + 4 steps-vs-1 rows
    table = report.calibration_table(ours, unet)
    assert "ensemble std" in table and "p(1-p) of the sigmoid" in table
    unet_other = {**unet, "scored_stems": list(reversed(unet["scored_stems"]))}
    assert "not paired" in report.paired_table(ours, unet_other, n=100)
    assert report.paired_table(None, unet) == "(not run)" and "predates" in report.calibration_table({"rows": {}}, None)


def test_heldout_uncertainty_table_lists_each_ensemble_row_beside_the_unets():
    ours, unet = fake_results()
    mc_key = "ddim10_ens5" + common.MC_DROPOUT
    ours["rows"][mc_key] = ours["rows"]["ddim10_ens5"]
    ours["calibration"][mc_key] = ours["calibration"]["ddim10_ens5"]
    ours["uncertainty_error_pq_rows"][mc_key] = {**ours["uncertainty_error_pq"], "auroc": 0.9}
    ours["uncertainty_error_std_rows"] = {"ddim10_ens5": {"auroc": 0.81}, mc_key: {"auroc": 0.85}}
    run = {"seed": 43, "variants": {"dropout 0.1": {"scores": ours}}, "machine": {"gpu": "G"}}
    table = report.heldout_uncertainty_table([run, None], [{**unet, "seed": 44, "machine": {"cpu": "C"}}])
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + 1  # header, the two ensemble rows, the UNet
    assert lines[3].startswith("| dropout 0.1, 43 | DDIM 10, ensemble 5, MC dropout |")
    assert lines[3].endswith("| 0.900 | 0.850 | G |")
    assert lines[4].startswith("| smp.Unet (plain), 44 | sigmoid |") and lines[4].endswith("| – | C |")
    assert report.heldout_uncertainty_table([], []) == "(not run)"


def test_exact_uncertainty_table_reads_the_paired_figures_of_each_file(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = {
        "K=5: ens std (current)": {"auroc": 0.9, "ece": 0.03},
        "plain UNet: p(1-p) of its sigmoid": {"auroc": 0.92, "ece": 0.035},
    }
    paired = {"auroc_minus_unet": [-0.02, -0.04, 0.001], "dice_minus_unet": [0.01, -0.02, 0.03]}
    result = {"models": {"ours_steps": 18421}, "rows": rows, "bootstrap": {"K=5: ens std (current)": paired}}
    (tmp_path / "pair.json").write_text(json.dumps(result))
    without_unet = {**result, "rows": {"K=5: ens std (current)": rows["K=5: ens std (current)"]}}
    (tmp_path / "ours_only.json").write_text(json.dumps(without_unet))
    table = report.exact_uncertainty_table([("heavy, 45", "pair.json"), ("x", "ours_only.json"), ("y", "absent.json")])
    lines = table.splitlines()
    assert len(lines) == 3  # header, separator, the one file scored against a UNet
    assert (
        lines[2]
        == "| heavy, 45 | 18,421, 0.900 | 0.920 | -0.020 [-0.040, +0.001] | 0.0300 / 0.0350 | +0.010 [-0.020, +0.030] |"
    )
    assert report.exact_uncertainty_table([("y", "absent.json")]) == "(not run)"


def test_seeds_table_averages_the_per_image_differences_over_seeds():
    runs = []
    for seed, shift in ((42, 0.02), (43, 0.04)):
        ours, unet = fake_results()
        for key in report.SEED_ROWS[:2]:  # ours = the UNet + shift on every image
            dice = [d + shift for d in unet["rows"]["unet"]["per_image_dice"]]
            ours["rows"][key] = {**ours["rows"][key], "per_image_dice": dice, "dice": float(np.mean(dice))}
        runs.append((seed, ours, unet))
    table = report.seeds_table(runs + [(44, None, None)])  # a seed not run is left out
    assert table.count("\n") == 1 + 2 * 2 + 2  # ours has no MC dropout row: that row is left out
    assert "| 42 | DDIM 10, ensemble 1 |" in table and "+0.0400 [+0.0400, +0.0400]" in table
    assert table.count("| mean of 2 seeds |") == 2 and "**+0.0300 [+0.0300, +0.0300]**" in table
    mc_key = "ddim10_ens5" + common.MC_DROPOUT
    for _, ours, _ in runs:
        ours["rows"][mc_key] = ours["rows"]["ddim10_ens5"]
    assert "| 43 | DDIM 10, ensemble 5, MC dropout |" in report.seeds_table(runs)
    assert report.seeds_table([(42, None, None)]) == "(not run)"


def test_recipe_gap_table_gives_how_much_a_recipe_widens_ours_lead_per_seed_and_on_average():
    def shifted(result, key, base, shift):  # every image of `key` = the UNet's `base` + shift
        dice = [d + shift for d in base]
        result["rows"][key] = {**result["rows"].get(key, {}), "per_image_dice": dice, "dice": float(np.mean(dice))}

    runs = []
    for seed, (lead_new, lead_old, unet_gain) in ((42, (0.05, 0.01, -0.02)), (43, (0.03, 0.01, 0.02))):
        ours_new, unet_new = fake_results()
        ours_old, unet_old = fake_results()
        base = unet_old["rows"]["unet"]["per_image_dice"]
        shifted(unet_new, "unet", base, unet_gain)
        for key in ("ddim10_ens1", "ddim10_ens5"):
            shifted(ours_new, key, base, unet_gain + lead_new)
            shifted(ours_old, key, base, lead_old)
        runs.append((seed, ours_new, ours_old, unet_new, unet_old))
    lines = report.recipe_gap_table(runs + [(44, None, None, None, None)]).splitlines()  # seed 44 not run
    assert len(lines) == 2 + 2 * 3  # two rows of ours, each with two seeds and their mean
    assert lines[2].startswith("| DDIM 10, ensemble 1 | 42 | +0.050 [+0.050, +0.050] | +0.010 [+0.010, +0.010]")
    assert lines[2].endswith("| +0.040 [+0.040, +0.040] |")
    assert lines[4] == (
        "| DDIM 10, ensemble 1 | mean of 2 seeds | **+0.040 [+0.040, +0.040]** | **+0.010 [+0.010, +0.010]** "
        "| **+0.030 [+0.030, +0.030]** |"
    )
    runs[1][2]["scored_stems"] = list(reversed(runs[1][2]["scored_stems"]))  # seed 43's old pair: other images
    lines = report.recipe_gap_table(runs).splitlines()
    assert len(lines) == 2 + 2 and all("| 42 |" in line for line in lines[2:])  # one seed: no mean row
    reordered = list(reversed(runs[0][1]["scored_stems"]))  # seed 42's new pair: aligned, but not with its old
    runs[0][1]["scored_stems"] = runs[0][3]["scored_stems"] = reordered
    assert len(report.recipe_gap_table(runs).splitlines()) == 2
    assert report.recipe_gap_table([(42, None, None, None, None)]) == "(not run)"


def test_seeded_ablation_table_pairs_each_variant_with_the_default_of_its_seed():
    def result(seed, name, shift):
        ours, _ = fake_results()
        rows = {key: ours["rows"][key] for key in ("ddim1_ens1", "ddim10_ens1")}
        base = rows["ddim10_ens1"]["per_image_dice"]
        rows["ddim10_ens1"] = {**rows["ddim10_ens1"], "per_image_dice": [d + shift for d in base]}
        train = {"optimizer_steps": 100, "parameters": 8_500_000}
        return {"seed": seed, "variants": {name: {"scores": {"rows": rows}, "train": train}}, "machine": {"cpu": "X"}}

    table = report.seeded_ablation_table(
        [result(42, "wider", 0.03), result(42, "default", 0.0), result(43, "default", 0.0), result(43, "wider", -0.01)]
    )
    assert table.count("\n") == 1 + 4
    assert table.splitlines()[2].startswith("| default | 42 |") and table.splitlines()[3].startswith("| default | 43 |")
    assert "| wider | 42 |" in table and "+0.030 [+0.030, +0.030]" in table
    assert "| wider | 43 |" in table and "-0.010 [-0.010, -0.010]" in table
    assert "| default | 42 |" in table and table.count("| – |") == 2
    assert report.seeded_ablation_table([None]) == "(not run)"
    # a default run at another learning rate is a variant, named by it, not a second reference
    table = report.seeded_ablation_table([result(42, "default", 0.0), {**result(42, "default", -0.02), "lr": 1e-3}])
    assert "| default, lr 0.001 | 42 |" in table and "-0.020 [-0.020, -0.020]" in table
    # ... and so is one trained with another augmentation
    heavy = {**result(42, "default", 0.01), "augmentation": "heavy"}
    table = report.seeded_ablation_table([result(42, "default", 0.0), heavy])
    assert "| default, heavy augmentation | 42 |" in table and "+0.010 [+0.010, +0.010]" in table
    # with a default of the seed on each device, a variant is paired with the one of its own device
    on_gpu = {**result(42, "default", 0.05), "machine": {"gpu": "G"}}
    table = report.seeded_ablation_table([on_gpu, result(42, "default", 0.0), result(42, "wider", 0.01)])
    assert "+0.010 [+0.010, +0.010]" in table.splitlines()[-1]  # against the CPU default, not -0.040
    table = report.seeded_ablation_table([on_gpu, result(42, "wider", 0.01)])
    assert "-0.040 [-0.040, -0.040]" in table.splitlines()[-1]  # no CPU default: the seed's other one


def test_seed_averaged_ablation_table_averages_each_variants_paired_differences_over_its_seeds():
    def result(seed, name, shift, lr=3e-4):
        ours, _ = fake_results()
        rows = {key: {**ours["rows"][key]} for key in ("ddim1_ens1", "ddim10_ens1")}
        for row in rows.values():
            row["per_image_dice"] = [d + shift for d in ours["rows"]["ddim10_ens1"]["per_image_dice"]]
        return {"seed": seed, "lr": lr, "variants": {name: {"scores": {"rows": rows}}}, "machine": {"cpu": "X"}}

    runs = [result(42, "default", 0.0), result(43, "default", 0.1), result(42, "wider", 0.03)]
    runs += [result(43, "wider", 0.11), result(42, "once", 0.05), result(42, "default", 0.2, lr=1e-3)]
    lines = report.seed_averaged_ablation_table(runs).splitlines()
    assert len(lines) == 3  # header, rule, "wider": one seed of "once" or of the other lr is no average
    assert lines[2] == "| wider | X | 2 | +0.020 [+0.020, +0.020] | +0.020 [+0.020, +0.020] |"  # (0.03 + 0.01) / 2
    # the same variant on another device is averaged on its own, against that device's defaults
    on_gpu = [{**r, "machine": {"gpu": "G"}} for r in (result(42, "default", 0.1), result(43, "default", 0.0))]
    on_gpu += [{**r, "machine": {"gpu": "G"}} for r in (result(42, "wider", 0.1), result(43, "wider", 0.04))]
    lines = report.seed_averaged_ablation_table(runs + on_gpu).splitlines()
    assert lines[3] == "| wider | G | 2 | +0.020 [+0.020, +0.020] | +0.020 [+0.020, +0.020] |"  # (0.0 + 0.04) / 2
    assert report.seed_averaged_ablation_table([result(42, "default", 0.0)]) == "(no variant with two seeds)"
    # pooled over devices: a third seed run only on the GPU joins the CPU's two, each against its own default
    seed44 = [{**r, "machine": {"gpu": "G"}} for r in (result(44, "default", 0.0), result(44, "wider", 0.08))]
    assert len(report.seed_averaged_ablation_table(runs + seed44).splitlines()) == 3  # by device: G has one seed
    lines = report.seed_averaged_ablation_table(runs + seed44, by_device=False).splitlines()
    assert (
        lines[2] == "| wider | each paired on its own device | 3 | +0.040 [+0.040, +0.040] | +0.040 [+0.040, +0.040] |"
    )


def test_heldout_unet_table_pairs_each_default_with_the_unet_of_its_seed():
    ours, unet = fake_results()

    def ablation(seed, shift, lr=3e-4):
        rows = {key: {**ours["rows"][key]} for key in ("ddim10_ens1", "ddim10_ens5")}
        for row in rows.values():
            row["per_image_dice"] = [d + shift for d in unet["rows"]["unet"]["per_image_dice"]]
        scores = {"rows": rows, "scored_stems": ours["scored_stems"]}
        return {"seed": seed, "lr": lr, "variants": {"default": {"scores": scores}}}

    runs = [ablation(42, -0.02), ablation(43, 0.01), ablation(42, 0.05, lr=1e-3)]
    lines = report.heldout_unet_table(runs, [unet]).splitlines()
    assert len(lines) == 2 + 4 + 2  # two seeds x two rows, their mean per row; the other lr's default is no reference
    unet_dice = unet["rows"]["unet"]["dice"]
    assert lines[2].startswith("| 42 | ? | DDIM 10")
    assert lines[2].endswith(f"| 42 | {unet_dice:.3f} | -0.020 [-0.020, -0.020] |")  # the UNet's seed and Dice
    assert lines[4].startswith("| 43 |") and lines[4].endswith("| +0.010 [+0.010, +0.010] |")  # the only UNet
    assert lines[6] == "| mean of 2 runs | | DDIM 10, ensemble 1 | | | | **-0.005 [-0.005, -0.005]** |"
    # with a UNet of seed 43 too, the seed-43 default is paired with it
    unet_43 = {**unet, "seed": 43, "rows": {"unet": {**unet["rows"]["unet"]}}}
    unet_43["rows"]["unet"]["per_image_dice"] = [d + 0.03 for d in unet["rows"]["unet"]["per_image_dice"]]
    lines = report.heldout_unet_table(runs, [unet, None, unet_43]).splitlines()
    assert "| 43 |" in lines[4] and lines[4].endswith("| -0.020 [-0.020, -0.020] |")
    other_images = {**unet, "scored_stems": list(reversed(unet["scored_stems"]))}
    assert report.heldout_unet_table([ablation(42, 0.0)], [other_images]).count("\n") == 1  # not paired: no rows
    assert report.heldout_unet_table([ablation(42, 0.0)], [None]) == "(not run)"
    # a run of another augmentation is the reference only when that augmentation is asked for
    heavy = {**ablation(44, 0.04), "augmentation": "heavy"}
    assert "| 44 |" not in report.heldout_unet_table(runs + [heavy], [unet])
    lines = report.heldout_unet_table(runs + [heavy], [unet], augmentation="heavy").splitlines()
    assert len(lines) == 2 + 2 and lines[2].startswith("| 44 |") and lines[2].endswith("| +0.040 [+0.040, +0.040] |")


def test_heldout_steps_of_each_variant_pair_each_run_with_itself_and_a_renamed_default_is_the_reference():
    def run(seed, name, one, ten):  # per-image Dice of DDIM 1 and DDIM 10 (and 50, 10 x 5 alike)
        rows = {
            key: {"per_image_dice": list(dice)}
            for key, dice in (("ddim1_ens1", one), ("ddim10_ens1", ten), ("ddim50_ens1", ten), ("ddim10_ens5", ten))
        }
        return {"seed": seed, "variants": {name: {"scores": {"rows": rows}}}}

    old = run(45, "dropout 0.2", [0.5, 0.7], [0.6, 0.8])
    renamed = report.as_default(old, "dropout 0.2")
    assert list(renamed["variants"]) == ["default"] and list(old["variants"]) == ["dropout 0.2"]  # a copy
    assert report.as_default(None, "dropout 0.2") is None
    by_variant = report.seeded_scores_by_variant([renamed, run(46, "default", [0.5, 0.5], [0.5, 0.7]), None])
    assert list(by_variant) == ["default"] and [seed for seed, _ in by_variant["default"]] == [45, 46]
    lines = report.steps_seeds_table(by_variant["default"]).splitlines()
    assert lines[0] == "| comparison | seed 45 | seed 46 | mean over seeds [95 % CI] |"
    assert lines[2].startswith("| DDIM 10, ensemble 1 − DDIM 1, ensemble 1 | +0.1000 | +0.1000 | +0.1000 [")
    assert lines[3].startswith("| DDIM 50, ensemble 1 − DDIM 10, ensemble 1 | +0.0000 | +0.0000 | +0.0000 [")
    assert report.seeded_scores_by_variant([None]) == {}


def test_ours_step_time_is_the_mean_of_both_self_conditioning_branches(monkeypatch):
    # the fastest of a few random steps would time only the branch without the estimate pass
    from src.device import select_runtime
    from src.models import DiffusionSegmentation

    calls = []
    original = DiffusionSegmentation.network_output

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    def network_calls_of_one_step(step, batch):
        calls.clear()
        step(*batch)
        return float(len(calls))  # stands in for the seconds: 2 calls with the estimate pass, 1 without

    monkeypatch.setattr(DiffusionSegmentation, "network_output", counting)
    monkeypatch.setattr(kvasir, "measure_step_seconds", network_calls_of_one_step)
    args = kvasir.parse_args(["--smoke"])
    runtime = select_runtime("cpu", "fp32")
    assert kvasir.estimate_ours_step(args, kvasir.model_config(args), runtime) == 1.5
    assert kvasir.estimate_ours_step(args, kvasir.model_config(args, self_condition=False), runtime) == 1.0
    # recycled: the estimate branch at 1, 2 and 3 passes (2, 3, 4 calls) equally likely, then the coin
    assert kvasir.estimate_ours_step(args, kvasir.model_config(args, self_condition_passes=3), runtime) == 2.0


def test_step_budget_of_other_models_never_overwrites_the_quality_budgets():
    assert step_budget.default_out(["ours", "unet"]).name == "step_budget.json"
    assert step_budget.default_out(["peer"]).name == "step_budget_peer.json"
    assert step_budget.default_out(["ours"]).name == "step_budget_ours.json"
    assert step_budget.default_out(["ours"], ["base 48"]).name == "step_budget_variants.json"


def test_unknown_ablation_variants_are_a_usage_error_naming_them(capsys):
    for parse in (step_budget.main, sampling_cost.parse_args, lambda a: kvasir.parse_args(["--model", "ablation", *a])):
        with pytest.raises(SystemExit) as stopped:
            parse(["--variants", "mask head 1 block,no such variant"])
        assert stopped.value.code == 2
        assert "unknown ['no such variant']" in capsys.readouterr().err
    assert kvasir.parse_args(["--variants", "default,mask head 1 block"]).variants == ["default", "mask head 1 block"]


@needs_kvasir
def test_uncertainty_ablation_val_without_unet_weights_scores_ours_alone(tmp_path):
    from src.checkpoint import save_checkpoint
    from tests.helpers import tiny_model

    model = tiny_model(image_size=(32, 32))
    state = {"model_config": model.config.to_dict(), "model": model.state_dict(), "ema": None, "step": 3}
    checkpoint = save_checkpoint(state, tmp_path / "tiny.pth")
    out = tmp_path / "uncertainty.json"
    arguments = ["val", "--ours-checkpoint", str(checkpoint), "--image-size", "32", "--steps", "2", "--ensemble", "2"]
    arguments += ["--ensembles", "2", "--eval-images", "2", "--candidates", "K=2: ens std (current)", "--out", str(out)]
    assert uncertainty_ablation.main(arguments) == 0
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"K=2: ens std (current)"} and "bootstrap" not in result
    assert 0 <= result["rows"]["K=2: ens std (current)"]["auroc"] <= 1


def test_holdout_split_is_disjoint_and_seeded():
    stems = [f"s{i}" for i in range(20)]
    fit, held = common.holdout_split(stems, 5)
    assert len(held) == 5 and not set(fit) & set(held) and sorted(fit + held) == sorted(stems)
    assert common.holdout_split(stems, 5) == (fit, held)


def test_epochs_for_budget_leaves_the_clock_to_end_the_run():
    # 600 steps fit 10 minutes: twice that is planned, so the wall clock (which anneals the lr) binds
    assert kvasir.epochs_for_budget(step_seconds=1.0, minutes=10, steps_per_epoch=100) == 12
    assert kvasir.epochs_for_budget(step_seconds=100.0, minutes=1, steps_per_epoch=100) == 1


def test_speed_smoke(tmp_path):
    out = tmp_path / "speed.json"
    assert speed.main(["--smoke", "--no-peer", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {row["precision"] for row in result["training"]} == set(speed.PRECISIONS)
    assert all(row["images_per_second"] > 0 and row["gflops_per_step"] > 0 for row in result["training"])
    assert result["matmul_peak_tflops"]["bf16"] > 0 and result["sampling"]


def test_speed_profile_writes_the_top_operators(tmp_path):
    assert speed.main(["--smoke", "--profile", "--threads", "1", "--out", str(tmp_path / "speed.json")]) == 0
    text = (tmp_path / "profile_32_smoke.txt").read_text()
    assert text.startswith("32 px, batch 2, bf16") and "aten::" in text and "Self CPU" in text


def test_sampling_latency_times_the_earlier_and_todays_inference_path(tmp_path):
    out = tmp_path / "latency.json"
    assert sampling_cost.main(["--latency", "--smoke", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [name.split(":")[0] for name in result["seconds_per_image"]] == ["before", "after"]
    assert result["gflop_per_image"] > 0
    # no path can beat the matmul peak measured in the same run
    assert all(seconds > result["seconds_at_peak"] for seconds in result["seconds_per_image"].values())


@needs_kvasir
def test_kvasir_smoke_ours(tmp_path):
    out = tmp_path / "ours.json"
    assert kvasir.main(["--smoke", "--model", "ours", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # today's default has dropout: its ensemble is also scored with each sample's own dropout draw
    assert set(result["rows"]) == {"ddim1_ens1", "ddim2_ens1", "ddim10_ens2", "ddim10_ens2_mcdropout"}
    assert all(0 <= row["dice"] <= 1 for row in result["rows"].values())
    assert -1 <= result["uncertainty_error"]["pearson_r"] <= 1 or np.isnan(result["uncertainty_error"]["pearson_r"])
    # calibration and p(1-p) statistics of every row, the ensemble row's p(1-p) on its own
    assert set(result["calibration"]) == set(result["rows"]) == set(result["uncertainty_error_pq_rows"])
    for calibration in result["calibration"].values():
        assert 0 <= calibration["ece"] <= 1 and len(calibration["count"]) == 15 and calibration["pixels"] > 0
    assert result["uncertainty_error_pq"] == result["uncertainty_error_pq_rows"]["ddim10_ens2"]
    assert (
        result["uncertainty_error_pq"]["upper"] == 0.25 and result["uncertainty_error"]["upper"] == 1.0
    )  # the entropy map
    # per-image Dice of every row, in the order of scored_stems (the val split's first 2)
    assert len(result["scored_stems"]) == 2
    assert all(len(row["per_image_dice"]) == 2 for row in result["rows"].values())
    assert set(result["uncertainty_error_std_rows"]) == {"ddim10_ens2", "ddim10_ens2_mcdropout"}  # their std
    assert 0 <= result["uncertainty_error_std_rows"]["ddim10_ens2_mcdropout"]["auroc"] <= 1


@needs_kvasir
def test_kvasir_smoke_ours_trains_the_variant_named(tmp_path):
    out = tmp_path / "ours.json"
    variant = "no dropout (the eleventh round's default)"
    assert kvasir.main(["--smoke", "--model", "ours", "--variants", variant, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["dropout"] == 0.0
    assert set(result["rows"]) == {"ddim1_ens1", "ddim2_ens1", "ddim10_ens2"}  # no dropout, no MC dropout row


@needs_kvasir
def test_kvasir_smoke_ablation_trains_with_the_augmentation_asked_for_beside_the_medium_run(tmp_path):
    out = tmp_path / "heavy.json"
    assert (
        kvasir.main(
            ["--smoke", "--model", "ablation", "--variants", "default", "--augmentation", "heavy", "--out", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["augmentation"] == "heavy"
    checkpoint = Path(result["variants"]["default"]["train"]["checkpoint"])
    assert checkpoint.parent.name == "ablation_32_0_heavy_smoke"  # the medium run's folder is left alone
    assert torch.load(checkpoint, weights_only=True)["train_config"]["augmentation_mode"] == "heavy"


@needs_kvasir
def test_kvasir_resume_continues_a_cut_off_run_exactly(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from src.training import trainer as trainer_module
    from src.training.interrupt import Interrupted

    def run(checkpoints, *flags):
        monkeypatch.setattr(common, "CHECKPOINTS", tmp_path / checkpoints)
        out = tmp_path / checkpoints / "run.json"  # one name: --resume finds the run by it
        assert kvasir.main(["--smoke", "--model", "ours", "--max-steps", "6", "--out", str(out), *flags]) == 0
        return json.loads(out.read_text())

    full = run("full")
    original = trainer_module._Trainer._train_step

    def step_then_closed(self, images, masks):
        loss = original(self, images, masks)
        if self.progress.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as a closed session ends the command, mid-run
        return loss

    monkeypatch.setattr(trainer_module._Trainer, "_train_step", step_then_closed)
    with pytest.raises(Interrupted):
        run("cut")
    monkeypatch.setattr(trainer_module._Trainer, "_train_step", original)
    with pytest.raises(SystemExit, match=r"--resume: .*last.pth was trained with other settings: seed 42 \(now 7\)"):
        run("cut", "--resume", "--seed", "7")
    resumed = run("cut", "--resume")
    assert "resuming at step 3" in capsys.readouterr().out
    assert resumed["train"]["resumed_from_step"] == 3 and full["train"]["resumed_from_step"] is None
    assert resumed["train"]["optimizer_steps"] == full["train"]["optimizer_steps"] == 6
    for key, row in full["rows"].items():  # the same weights, so the same masks on every image
        assert resumed["rows"][key]["per_image_dice"] == row["per_image_dice"], key
    last = tmp_path / "cut" / "run" / "last.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a checkpoint cut short is a one-line error, and stays
    with pytest.raises(SystemExit, match=r"--resume: .*last.pth: not a readable checkpoint"):
        run("cut", "--resume")
    assert last.stat().st_size == len(data) // 2
    # nothing to continue yet (a run the cut-off command never reached) starts fresh
    assert run("other", "--resume")["train"]["resumed_from_step"] is None
    with pytest.raises(SystemExit):
        kvasir.parse_args(["--model", "unet", "--resume"])
    assert "--resume continues trainings of ours" in capsys.readouterr().err


def test_ours_trains_one_variant_at_most():
    assert kvasir.ours_overrides(None) == {} and kvasir.ours_overrides(["dropout 0.1"]) == {"dropout": 0.1}
    with pytest.raises(SystemExit, match="trains one variant"):
        kvasir.ours_overrides(["default", "dropout 0.1"])


def run_kvasir_in_peer_venv(out, *arguments, module: str = "kvasir") -> dict:
    """benchmarks.kvasir (or another `module`) with `arguments` under benchmarks/.peer-venv (the
    anchors live there): its JSON."""
    done = subprocess.run(
        common.module_command(common.PEER_PYTHON, module, *arguments, "--out", out),
        capture_output=True,
        text=True,
        timeout=120,
        env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(common.ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@needs_kvasir
@needs_peer_venv
@pytest.mark.parametrize("model", ["unet", "peer"])
def test_kvasir_smoke_anchors(tmp_path, model):
    result = run_kvasir_in_peer_venv(tmp_path / f"{model}.json", "--smoke", "--model", model)
    rows = result["rows"]
    assert set(rows) == ({"unet"} if model == "unet" else {"peer_ddim2", "peer_default"})
    assert all(0 <= row["dice"] <= 1 and row["images"] == 2 for row in rows.values())
    assert all(len(row["per_image_dice"]) == 2 and row["forward_seconds_per_image"] > 0 for row in rows.values())
    if model == "unet":  # its own p(1-p) and calibration, as ours records them
        assert 0 <= result["calibration"]["unet"]["ece"] <= 1 and result["calibration"]["unet"]["pixels"] > 0
        assert result["uncertainty_error_pq"]["upper"] == 0.25 and result["uncertainty_error_pq"]["pixels"] > 0
        assert len(result["scored_stems"]) == 2
    else:
        assert "calibration" not in result


@needs_peer_venv
def test_sampling_cost_times_each_variant_beside_the_default_and_the_unet(tmp_path):
    arguments = ("--smoke", "--batch-size", "2", "--variants", "mask head 1 block")
    seconds = run_kvasir_in_peer_venv(tmp_path / "cost.json", *arguments, module="sampling_cost")["seconds_per_image"]
    for model in ("ours", "ours, mask head 1 block"):
        assert {f"{model} DDIM {s}, ensemble {e}" for s, e in sampling_cost.SETTINGS} <= set(seconds)
    assert "plain UNet forward" in seconds and all(value > 0 for value in seconds.values())


@needs_kvasir
@needs_peer_venv
def test_kvasir_smoke_unet_held_out_scores_train_images_never_val(tmp_path):
    arguments = ("--smoke", "--model", "unet", "--held-out", "--ablation-holdout", "2")
    result = run_kvasir_in_peer_venv(tmp_path / "unet_held_out.json", *arguments)
    train_stems = common.read_stems(common.DEFAULT_DATA, "train")[:4]  # the smoke run's train split
    assert result["scored_stems"] == common.holdout_split(train_stems, 2, seed=0)[1]  # the ablation's split
    assert not set(result["scored_stems"]) & set(common.read_stems(common.DEFAULT_DATA, "val"))
    assert result["scored_on"] == "2 held-out TRAIN images" and result["rows"]["unet"]["images"] == 2
    assert result["augmentation"] == "medium"  # the benchmark's recipe unless told


@needs_kvasir
def test_data_loading_smoke(tmp_path):
    out = tmp_path / "loading.json"
    assert data_loading.main(["--smoke", "--threads", "1", "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())["rows"]
    assert row["size"] == 32 and row["cache"] and len(row["epoch_seconds"]) == 2
    assert all(seconds > 0 for seconds in row["epoch_seconds"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_speed_cuda_without_a_gpu_says_so_and_exits_2(capsys):
    from benchmarks import speed_cuda

    assert speed_cuda.main(["--sizes", "128", "--batch-sizes", "8", "32"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def fake_sampler_run(shift_by_source: dict, images: int = 10, checkpoint: str = "c.pth") -> dict:
    """A sampler_ablation --settings sources result: per source, every row's per-image Dice shifted;
    each image's calibration bins put all its pixels at p = 0.9, foreground as often as `truth`."""
    base = np.linspace(0.5, 0.9, images)

    def row(steps, ensemble, source, shift, truth):
        count, sum_p, sum_y = np.zeros((3, 15))
        count[13], sum_p[13], sum_y[13] = 100, 90, 100 * truth
        bins = [[count.tolist(), sum_p.tolist(), sum_y.tolist()]] * images
        dice = (base + shift).tolist()
        return {"steps": steps, "eta": 1.0, "time_ensemble": True, "ensemble": ensemble, "self_condition_on": source,
                "dice": float(np.mean(dice)), "ece": abs(truth - 0.9), "per_image_dice": dice,
                "per_image_calibration_bins": bins}  # fmt: skip

    rows = [row(1, 1, None, 0.0, 0.9)]
    for steps, ensemble in ((10, 1), (10, 5)):
        rows += [row(steps, ensemble, source, shift, truth) for source, (shift, truth) in shift_by_source.items()]
    return {"checkpoint": checkpoint, "scored_on": f"{images} held-out TRAIN images", "rows": rows}


def test_sources_table_pairs_mean_with_last_per_checkpoint_and_averages_dice_over_them():
    runs = [fake_sampler_run({"mean": (0.02, 0.85), "last": (0.0, 0.80)}) for _ in range(2)]
    runs[1] = fake_sampler_run({"mean": (0.04, 0.85), "last": (0.0, 0.80)})
    lines = report.sources_table(runs).splitlines()
    assert lines[2].startswith("| 10 x 1 |") and lines[3].startswith("| 10 x 5 |")  # no row for one step
    assert "| +0.030 [+0.030, +0.030] |" in lines[2]  # (0.02 + 0.04) / 2 on every image
    # ECE 0.05 (mean) against 0.10 (last) on every image: -0.05 for each checkpoint
    assert "| 0.0500 / 0.0500 | 0.1000 / 0.1000 | -0.0500 [-0.0500, -0.0500] / -0.0500 [-0.0500, -0.0500] |" in lines[2]
    assert report.sources_table([None]) == "(not run)"


def test_checkpoints_compared_table_pairs_a_variant_with_the_default_of_each_seed():
    pairs = [
        (fake_sampler_run({"mean": (0.03, 0.9)}), fake_sampler_run({"mean": (0.0, 0.9)})),
        (fake_sampler_run({"mean": (0.01, 0.9)}), fake_sampler_run({"mean": (0.0, 0.9)})),
    ]
    lines = report.checkpoints_compared_table(pairs).splitlines()
    assert lines[2].startswith("| 1 x 1 |") and lines[2].endswith("| +0.000 [+0.000, +0.000] |")  # one step: same rows
    assert lines[3].startswith("| 10 x 1 |") and lines[3].endswith("| +0.020 [+0.020, +0.020] |")
    assert report.checkpoints_compared_table([(None, pairs[0][1])]) == "(not run)"


def test_sampler_change_table_compares_the_same_checkpoints_scored_two_ways():
    runs = []
    for seed, shift in ((42, 0.01), (43, 0.03)):
        new, _ = fake_results()
        old, _ = fake_results()
        for key in ("ddim10_ens1", "ddim50_ens1"):
            dice = [d + shift for d in old["rows"][key]["per_image_dice"]]
            new["rows"][key] = {**new["rows"][key], "per_image_dice": dice, "dice": float(np.mean(dice))}
        runs.append((seed, new, old))
    lines = report.sampler_change_table(runs).splitlines()
    assert len(lines) == 2 + 4  # DDIM 1, 10, 50 and 10 x 5
    assert lines[3].startswith("| DDIM 10, ensemble 1 |") and lines[3].endswith("| +0.020 [+0.020, +0.020] |")
    assert lines[2].endswith("| +0.000 [+0.000, +0.000] |")  # DDIM 1 unchanged
    one_seed = report.sampler_change_table(runs[:1]).splitlines()
    assert one_seed[3].endswith("| +0.010 [+0.010, +0.010] |")  # one seed: its own paired difference
    assert report.sampler_change_table([(42, None, None)]) == "(not run)"


def test_steps_seeds_table_gives_each_seeds_step_gain_and_their_average():
    runs = []
    for seed, gain in ((42, 0.01), (43, 0.03)):
        ours, _ = fake_results()
        base = ours["rows"]["ddim1_ens1"]["per_image_dice"]
        for key in ("ddim5_ens1", "ddim10_ens1", "ddim50_ens1", "ddim10_ens5"):
            ours["rows"][key] = {**ours["rows"][key], "per_image_dice": [d + gain for d in base]}
        runs.append((seed, ours))
    lines = report.steps_seeds_table(runs + [(44, None)]).splitlines()
    assert lines[0] == "| comparison | seed 42 | seed 43 | mean over seeds [95 % CI] |"
    assert lines[3] == "| DDIM 10, ensemble 1 − DDIM 1, ensemble 1 | +0.0100 | +0.0300 | +0.0200 [+0.0200, +0.0200] |"
    assert lines[4].startswith("| DDIM 50, ensemble 1 − DDIM 10, ensemble 1 | +0.0000 | +0.0000 |")
    assert len(lines) == 2 + len(report.STEP_PAIRS) - 1  # no MC dropout row in these results: its pair is left out
    assert report.steps_seeds_table([(42, None)]) == "(not run)"


def test_sampler_ablation_scores_dice_and_per_image_calibration_bins_for_each_source(tiny_dataset):
    from benchmarks import sampler_ablation
    from src.device import select_runtime
    from tests.helpers import tiny_model
    from utils.data_utils import SegmentationDataset

    dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=(16, 16))
    model, runtime = tiny_model().eval(), select_runtime("cpu", "fp32")
    scored = {
        source: sampler_ablation.score_setting(model, dataset, runtime, (4, 1.0, True, 2), source, seed=0)
        for source in ("mean", "last")
    }
    dice, bins = scored["mean"]
    assert len(dice) == len(bins) == len(dataset) and all(0 <= d <= 1 for d in dice)
    truth = dataset.load_original_mask(0)
    count, sum_p, sum_y = np.asarray(bins[0])
    assert count.sum() == truth.size and sum_y.sum() == (np.asarray(truth) != 0).sum()  # original resolution
    assert np.all(sum_p <= count)
    ece = common.pooled_ece(bins)
    pooled = common.CalibrationStats()
    for b in bins:
        pooled.count, pooled.sum_p, pooled.sum_y = pooled.count + b[0], pooled.sum_p + b[1], pooled.sum_y + b[2]
    assert ece == pytest.approx(pooled.result()["ece"])
    assert scored["mean"][1] != scored["last"][1]  # the source reaches the sampler
    with pytest.raises(SystemExit):
        sampler_ablation.main(["--checkpoint", "c.pth", "--self-condition-on", "mean,first"])


def test_sampler_spread_measures_how_far_the_draws_lie_from_the_mean_heads_x0(tiny_dataset):
    from benchmarks import sampler_spread
    from tests.helpers import tiny_model
    from utils.data_utils import SegmentationDataset

    dataset = SegmentationDataset(tiny_dataset / "images", tiny_dataset / "masks", image_size=(16, 16))
    fresh = tiny_model(sampler_head=True).eval()  # its output layer at zero: it draws the mean head's x0
    result = sampler_spread.draw_spread(fresh, dataset, steps=3, seed=0)
    assert result["mean_abs_draw_minus_x0"] == 0 and result["other_side_share"] == 0
    assert result["dice_draws"] == result["dice_mean_head"] and result["images"] == len(dataset)
    torch.nn.init.normal_(fresh.sampler_head.output[-1].weight, std=0.5)  # as if trained
    result = sampler_spread.draw_spread(fresh, dataset, steps=3, seed=0)
    assert result["mean_abs_draw_minus_x0"] > 0 and 0 < result["other_side_share"] < 1
    assert "sampler_draw" not in vars(fresh)  # the recording wrapper is gone
    with pytest.raises(ValueError, match="no sampler head"):
        sampler_spread.draw_spread(tiny_model().eval(), dataset)
