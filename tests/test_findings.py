"""Findings with their uncertainty: Welch's test against published values, the selection seed by
seed, every metric kept per seed, and the record of where each run was made."""
import json
import math

import pytest
import torch

import evaluate
import train
from vaestudy import report, stats
from vaestudy.checkpoints import load_checkpoint
from vaestudy.device import device_name

TINY = ["--model", "vae", "--latent", "2", "--limit", "256", "--batch-size", "128", "--hidden", "16",
        "--device", "cpu"]


def test_the_prediction_interval_of_one_more_seed_is_the_textbook_one():
    """1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.302653 (any t table), so 2 ± 4.302653 sqrt(4/3)."""
    low, high = stats.prediction_interval([1.0, 2.0, 3.0])
    assert (low, high) == (pytest.approx(2 - 4.302653 * math.sqrt(4 / 3), abs=1e-5),
                           pytest.approx(2 + 4.302653 * math.sqrt(4 / 3), abs=1e-5))
    assert stats.prediction_interval([1.0]) is None
    rows = [{"model": "VAE", "settings": {}, "latent": 2, "seeds": [0, 1, 2], "epochs": [50] * 3,
             "test_mse_sampled": 2.0, "test_mse_sampled_std": 1.0, "test_kl": 5.0, "test_kl_std": 0.0,
             "by_seed": {"test_mse_sampled": [1.0, 2.0, 3.0], "test_kl": [5.0, 5.0, 5.0]}}]
    table = report.study_table(rows)
    assert "| 0.0391 | 2.0000 ± 1.0000 | within (-2.9683 to 6.9683) | 5.14 | 5.00 | above (5.00 to 5.00) |" in table


def test_welch_against_a_published_example():
    """Wikipedia's "Welch's t-test", example 1: t = -2.46, df = 24.9, p = 0.021 for A1 - A2."""
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    test = stats.welch(a2, a1)  # mean(a1) - mean(a2)
    assert round(test["t"], 2) == -2.46 and round(test["df"], 1) == 25.0 and round(test["p"], 3) == 0.021
    half = test["high"] - test["difference"]
    assert test["low"] == pytest.approx(test["difference"] - half)
    se = math.sqrt(stats.mean_std(a1)[1] ** 2 / 15 + stats.mean_std(a2)[1] ** 2 / 15)
    assert half == pytest.approx(stats.student_t_quantile(0.975, test["df"]) * se)
    assert stats.welch([1.0], [2.0, 3.0]) is None and stats.welch([1.0, 1.0], [2.0, 2.0]) is None


@pytest.mark.parametrize("t, df, cdf", [
    (2.0, 5, 0.9490302605850709),  # scipy.stats.t.cdf(2, 5)
    (-1.0, 2, 0.5 - 1 / (2 * math.sqrt(3))),  # df 2 in closed form: 1/2 + t / (2 sqrt(2 + t^2))
    (3.0, 1, 0.5 + math.atan(3.0) / math.pi),  # df 1 is Cauchy's
    (0.0, 7.5, 0.5)])
def test_student_t_cdf_against_known_values(t, df, cdf):
    assert stats.student_t_cdf(t, df) == pytest.approx(cdf, abs=1e-6)


@pytest.mark.parametrize("df, quantile", [(2, 4.302652729911275), (10, 2.2281388519649385), (1, 12.706204736174707)])
def test_student_t_quantile_against_tables(df, quantile):
    assert stats.student_t_quantile(0.975, df) == pytest.approx(quantile, rel=1e-6)


def vae_row(latent, val_by_seed):
    mean, std = stats.mean_std(val_by_seed)
    return {"model": "VAE", "variant": "default", "settings": {}, "latent": latent, "seeds": [0, 1, 2],
            "epochs": [50] * 3, "val_mse": mean, "val_mse_std": std, "by_seed": {"val_mse": val_by_seed}}


def test_the_selection_on_the_mean_and_over_every_combination_of_seeds():
    """On the mean, 10 is within 2% of 20's error and selected. Over the 3 x 3 pairings of one seed per
    size, by hand: against 20's 0.0168 (twice), 10's 0.0170 and 0.0169 are within 2% (0.017136) and
    0.0172 is not; against 0.0166 (0.016932) only 0.0169 is: 10 in 2 + 1 + 2 = 5, 20 in 4."""
    summary = [vae_row(10, [0.0170, 0.0172, 0.0169]), vae_row(20, [0.0168, 0.0166, 0.0168])]
    chosen = stats.selections(summary)["VAE"]
    assert chosen["selected"] == 10
    assert chosen["combination_counts"] == [[10, 5], [20, 4]] and chosen["combinations"] == 9
    line = report.selection_lines({"VAE": chosen}, summary)[0]
    assert line == ("VAE: lowest validation MSE at latent 20; smallest latent size within 2% of it: 10 (selected); "
                    "over the 9 combinations of one seed per size: 10 in 56%, 20 in 44%")


def hand_made_entry(latent, seed, val_mse):
    errors = {"mse": val_mse, "mse_per_digit": [val_mse] * 10, "kl": 10.0}
    return {"model": "VAE", "variant": "default", "settings": {}, "latent": latent, "seed": seed, "epochs": 50,
            "split_seed": 0, "test": errors, "val": errors, "test_sampled": errors, "active_units": 5}


def test_the_combinations_of_a_hand_made_results_json(tmp_path, capsys):
    """Three sizes with 3, 2 and 1 seeds: 3 x 2 x 1 = 6 combinations, by hand. Latent 2 (0.05) is never
    within 2% of the lowest. With 5's 0.0100, 5 is the lowest; with its 0.0104, 10's 0.0101 is, and
    0.0104 is more than 2% above it (0.010302): 10. So 5 in 3 combinations and 10 in 3."""
    runs = [hand_made_entry(2, s, 0.05) for s in range(3)] + [hand_made_entry(5, 0, 0.0100),
                                                              hand_made_entry(5, 1, 0.0104),
                                                              hand_made_entry(10, 0, 0.0101)]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs, "classifier": None, "seed": 0}))
    evaluate.main(["--out", str(tmp_path), "--report-only"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["selection"]["VAE"]["combinations"] == 6
    assert results["selection"]["VAE"]["combination_counts"] == [[5, 3], [10, 3]]
    assert "over the 6 combinations of one seed per size: 5 in 50%, 10 in 50%" in (tmp_path / "results.md").read_text()
    printed = " ".join(capsys.readouterr().out.split())
    assert "over the 6 combinations of one seed per size: 5 in 50%, 10 in 50%" in printed, "the printout says it too"


def test_holm_against_a_hand_computation():
    """m = 4: sorted 0.005, 0.01, 0.03, 0.04 become 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    and max(0.06, 1 x 0.04) = 0.06 (monotone); back in the original order."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.01, None]) == [0.01, None], "no test is not counted"
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0], "capped at 1"


def test_p_values_are_never_printed_as_zero():
    assert [report.fmt_p(p) for p in (0.0004, 0.004, 0.04, 0.5, None)] == ["< 0.001", "0.004", "0.04", "0.50", "n/a"]
    assert stats.ranges_apart([1, 2, 3], [4, 5, 6]) and not stats.ranges_apart([1, 2, 5], [4, 5, 6])
    assert stats.ranges_apart([1], [2, 3]) is None


def test_the_precision_table_tests_the_difference():
    a, b = [0.0162, 0.0167, 0.0166], [0.0175, 0.0171, 0.0173]
    rows = []
    for settings, values in (({}, a), ({"precision": "bf16"}, b)):
        mean, std = stats.mean_std(values)
        rows.append({"model": "VAE", "latent": 20, "settings": settings, "seeds": [0, 1, 2], "test_mse": mean,
                     "test_mse_std": std, "test_kl": mean * 1000, "test_kl_std": std * 1000,
                     "by_seed": {"test_mse": values, "test_kl": [v * 1000 for v in values]}})
    table = report.precision_table(rows[:1], rows[1:], (("test MSE", "test_mse", 4), ("KL", "test_kl", 2)))
    test = stats.welch(a, b)
    assert 0 < test["p"] < 0.05, "three seeds far enough apart to tell"
    holm = min(1, 2 * test["p"])  # two tests of the same p: each doubled
    assert f"| {test['low']:+.5f} to {test['high']:+.5f} | {report.fmt_p(test['p'])} | {report.fmt_p(holm)} | apart |" \
        in table
    assert "over the 2 Welch tests of this table" in table


@pytest.mark.slow
def test_every_run_records_where_it_was_made(mnist_dir, tmp_path, capsys):
    out = ["--out", str(tmp_path), "--data-dir", mnist_dir]
    train.main([*TINY, "--epochs", "1", *out])
    train.main([*TINY, "--epochs", "2", "--resume", *out])
    (path,) = tmp_path.rglob("*.pt")
    first, resumed = load_checkpoint(str(path))[0]["trained_by"]
    for made in (first, resumed):
        assert made["torch"] == str(torch.__version__) and made["device"] == f"cpu: {device_name(torch.device('cpu'))}"
        assert len(made["commit"]) == 40 or made["commit"] == "unknown"
        assert made["date"].endswith("UTC") and made["python"].count(".") == 2
    assert (first["from_epoch"], resumed["from_epoch"]) == (0, 1), "a process per stretch of epochs"
    evaluate.main([*out, "--no-classifier", "--nll-samples", "0", "--device", "cpu"])
    results = json.loads((tmp_path / "results.json").read_text())
    (entry,) = results["runs"]
    assert entry["trained_by"] == [first, resumed] and entry["measured_by"]["device"] == first["device"]
    for e in results["runs"]:  # a results.json from before the record: its entries say "unknown"
        del e["trained_by"], e["measured_by"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    evaluate.main([*out, "--report-only"])
    (entry,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert entry["trained_by"] == "unknown" and entry["measured_by"] == "unknown"


def test_a_group_of_one_latent_size_says_there_is_nothing_to_select():
    summary = [vae_row(20, [0.0168, 0.0166, 0.0168])]
    line = report.selection_lines(stats.selections(summary), summary)[0]
    assert line == "VAE: one latent size trained (20): nothing to select"
