import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import evaluate
import train
import visualize
from models import ModelConfig, build_model
from vaestudy import evaluation, report, stats
from vaestudy.cli import UserError
from vaestudy.data import load_splits

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """Tiny checkpoints of both models at latent sizes 2 and 3, from a short real training run."""
    out = tmp_path_factory.mktemp("runs")
    train.main(["--data-dir", mnist_dir, "--out", str(out), "--latent", "2", "3", "--epochs", "2",
                "--limit", "1024", "--batch-size", "256", "--hidden", "32", "--device", "cpu"])
    return out


VARIANT = "hidden_32_batch-size_256_limit_1024"  # the tiny runs' settings name their folders
LABEL = "hidden 32, batch-size 256, limit 1024"


@pytest.fixture()
def outputs(trained, tmp_path):
    """A private copy of the checkpoints, so each test may write or break things freely."""
    shutil.copytree(trained, tmp_path / "out")
    return tmp_path / "out"


def run_evaluate(mnist_dir, out, *extra):
    extra = extra or ("--no-classifier",)  # training the classifier on 54k images is for real runs
    evaluate.main(["--out", str(out), "--data-dir", mnist_dir, "--device", "cpu", *extra])
    with open(out / "results.json") as f:
        return json.load(f)


def test_per_digit_mse_matches_independent_computation(mnist_dir, outputs):
    results = run_evaluate(mnist_dir, outputs)
    test_x, test_y = load_splits(mnist_dir, 0, "cpu")["test"]
    for entry in results["runs"]:
        ckpt = torch.load(entry["checkpoint"], weights_only=True)
        model = build_model(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            x_hat = model.decode(model.encode(test_x)[0])  # z = mu, computed without the repo's helper
        per_image = ((x_hat.double() - test_x.double()) ** 2).mean(dim=1)
        for digit in range(10):
            expected = per_image[test_y == digit].mean().item()
            assert entry["test"]["mse_per_digit"][digit] == pytest.approx(expected, rel=1e-4)
        counts = torch.bincount(test_y, minlength=10).double()
        weighted = (torch.tensor(entry["test"]["mse_per_digit"], dtype=torch.float64) * counts).sum() / counts.sum()
        assert entry["test"]["mse"] == pytest.approx(weighted.item(), rel=1e-5)
        assert entry["test"]["mse"] == pytest.approx(per_image.mean().item(), rel=1e-4)
        assert ("test_sampled" in entry) == (entry["model"] == "VAE")
    assert {(e["model"], e["latent"]) for e in results["runs"]} == {
        ("Autoencoder", 2), ("Autoencoder", 3), ("VAE", 2), ("VAE", 3)}
    assert set(results["selection"]) == {f"Autoencoder ({LABEL})", f"VAE ({LABEL})"}
    assert {e["variant"] for e in results["runs"]} == {LABEL}
    table = (outputs / "results.md").read_text()
    assert table.count("\n| VAE | 2 |") == 3 and "| model | latent | 0 | 1 |" in table


def test_sampled_z_is_seeded(mnist_dir, outputs):
    first = run_evaluate(mnist_dir, outputs)
    again = run_evaluate(mnist_dir, outputs)
    other = run_evaluate(mnist_dir, outputs, "--seed", "1", "--no-classifier")
    vae = lambda r: [e["test_sampled"]["mse"] for e in r["runs"] if e["model"] == "VAE"]
    assert vae(first) == vae(again) and vae(first) != vae(other)


def test_selection_rule_on_hand_made_results():
    val = {2: 0.05, 5: 0.03, 10: 0.0205, 20: 0.0203, 50: 0.0200, 100: 0.0201}
    assert stats.select_latent(val) == (50, 20)  # 0.0203 <= 0.0200 * 1.02 < 0.0205
    assert stats.select_latent(val, tolerance=0.0) == (50, 50)
    assert stats.select_latent({2: None, 5: 0.1}) == (5, 5)
    assert stats.select_latent({}) == (None, None)


def test_multi_seed_summary_has_mean_and_spread():
    entries = [{"model": "VAE", "variant": "default", "settings": {}, "latent": 20, "seed": s, "val": {"mse": v},
                "test": {"mse": v, "kl": 10.0,
                "mse_per_digit": [v] * 10}, "test_sampled": {"mse": v + 0.001}} for s, v in enumerate([0.01, 0.02,
                                                                                                       0.03])]
    (row,) = stats.summarize(entries)
    assert row["seeds"] == [0, 1, 2]
    assert row["test_mse"] == pytest.approx(0.02) and row["test_mse_std"] == pytest.approx(0.01)
    assert row["test_mse_per_digit_std"] == pytest.approx([0.01] * 10)
    assert "0.0200 ± 0.0100" in report.markdown_tables([row])


def test_non_finite_results_are_never_numbers(mnist_dir, outputs):
    path = outputs / "VAE" / VARIANT / "VAE_latent_2.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    results = run_evaluate(mnist_dir, outputs)
    (entry,) = [e for e in results["runs"] if e["model"] == "VAE" and e["latent"] == 2]
    assert entry["test"]["mse"] is None and entry["test"]["mse_per_digit"] == [None] * 10
    assert "NaN" not in (outputs / "results.json").read_text()
    assert "| VAE | 2 | 1 | 2 | n/a |" in (outputs / "results.md").read_text()
    assert results["selection"][f"VAE ({LABEL})"]["selected"] == 3


def test_classifier_measurements(mnist_dir, outputs):
    """With a (quickly trained) cached classifier: accuracy on reconstructions, Frechet distances."""
    from vaestudy import classifier
    splits = load_splits(mnist_dir, 0, "cpu", limit=1000)
    _, test_accuracy = classifier.load_or_train(str(outputs / "classifier.pt"), splits, 0, epochs=1)
    results = run_evaluate(mnist_dir, outputs, "--seed", "0")
    assert results["classifier"]["test_accuracy"] == test_accuracy
    floor = results["classifier"]["frechet_floor_val_vs_test"]
    net, _ = classifier.load_or_train(str(outputs / "classifier.pt"), splits, 0)
    test_x, test_y = load_splits(mnist_dir, 0, "cpu")["test"]
    for entry in results["runs"]:
        ckpt = torch.load(entry["checkpoint"], weights_only=True)
        model = build_model(ModelConfig(**ckpt["model_config"])).eval()
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():  # z = mu, and the digit it is read as, without the repository's helpers
            means = model.encode(test_x)[0].double()
            read_as = net(model.decode(means.float())).argmax(1)
        assert entry["classifier_accuracy"] == pytest.approx((read_as == test_y).double().mean().item(), abs=1e-6)
        assert entry["classifier_accuracy"] < test_accuracy - 0.1, "tiny models lose digits the originals keep"
        assert entry["frechet_distance"] > floor >= 0, "tiny models generate worse than real images"
        assert ("active_units" in entry) == (entry["model"] == "VAE")
        assert ("frechet_aggregate" in entry) == ("mutual_information" in entry) == (entry["model"] == "VAE")
        if entry["model"] == "VAE":
            variances = ((means - means.mean(0)) ** 2).sum(0) / (len(means) - 1)
            assert entry["active_units"] == sum(v > 0.01 for v in variances.tolist())
            assert entry["frechet_aggregate"] > floor
            # the split of the KL adds up to it, but for one draw of z per image
            split = entry["mutual_information"] + entry["marginal_kl"]
            assert split == pytest.approx(entry["test"]["kl"], rel=0.05, abs=0.05)
            assert 0 <= entry["mutual_information"] <= math.log(len(test_x)) + 1e-9
    for name in ("classifier_accuracy.jpg", "frechet_distance.jpg", "VAE/active_units.jpg"):
        with Image.open(outputs / name) as image:
            assert image.format == "JPEG" and image.size == (700, 450)


EXPECTED_FIGURES = {
    "class_results_MSE.jpg": (700, 450), "train_MSE.jpg": (700, 450), "val_MSE.jpg": (700, 450),
    "comparison_1.jpg": (1000, 180), "reconstruction_grid.jpg": (1000, 540), "decoding_grid.jpg": (1080, 580),
    "latent_space.jpg": (840, 450), "interpolation.jpg": (800, 400),
}


def test_visualize_writes_every_figure(mnist_dir, outputs):
    results = run_evaluate(mnist_dir, outputs)
    visualize.main(["--out", str(outputs), "--data-dir", mnist_dir, "--device", "cpu"])
    for model in ("Autoencoder", "VAE"):
        selected = results["selection"][f"{model} ({LABEL})"]["selected"]
        expected = {**EXPECTED_FIGURES, f"train_val_latent_{selected}_MSE.jpg": (700, 450)}
        if model == "VAE":
            expected["validation_KL_Divergence.jpg"] = (700, 450)
        if selected == 2:  # the manifold already shows latent 2: no second panel
            expected["decoding_grid.jpg"] = (540, 580)
        found = {p.name for p in (outputs / model / VARIANT).glob("*.jpg")}
        assert found == set(expected)
        for name, size in expected.items():
            with Image.open(outputs / model / VARIANT / name) as image:
                assert image.format == "JPEG" and image.size == size
                image.load()


def test_visualize_without_results_json_selects_by_evaluates_rule(mnist_dir, outputs):
    visualize.main(["--out", str(outputs), "--data-dir", mnist_dir, "--device", "cpu"])
    drawn = {model: [p.name for p in (outputs / model / VARIANT).glob("train_val_latent_*_MSE.jpg")]
             for model in ("Autoencoder", "VAE")}
    results = run_evaluate(mnist_dir, outputs)
    for model, names in drawn.items():
        assert names == [f"train_val_latent_{results['selection'][f'{model} ({LABEL})']['selected']}_MSE.jpg"]


def cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True)


@pytest.mark.parametrize("script", ["evaluate.py", "visualize.py"])
def test_error_paths_are_one_line(script, mnist_dir, outputs, tmp_path):
    def check(result, *fragments):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for fragment in fragments:
            assert fragment in lines[0]

    common = ["--data-dir", mnist_dir, "--device", "cpu"]
    check(cli(script, "--out", str(tmp_path / "empty"), *common), "no checkpoints", "run python train.py first")
    check(cli(script, "--out", str(outputs), "--data-dir", str(tmp_path / "nodata")), "MNIST is not under")

    before = {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file()}
    broken = outputs / "VAE" / VARIANT / "VAE_latent_3.pt"
    broken.write_bytes(broken.read_bytes()[:1000])  # truncated
    check(cli(script, "--out", str(outputs), *common), "VAE_latent_3.pt", "not a readable checkpoint")
    torch.save({"state_dict": {}}, broken)  # someone else's file
    check(cli(script, "--out", str(outputs), *common), "VAE_latent_3.pt", "not written by this repository")
    after = {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file() and p != broken}
    assert after == {p: b for p, b in before.items() if p != broken}, "nothing else was written"


def test_corrupt_results_json_is_named(mnist_dir, outputs):
    (outputs / "results.json").write_text("")
    with pytest.raises(UserError, match="results.json.*python evaluate.py"):
        visualize.main(["--out", str(outputs), "--data-dir", mnist_dir, "--device", "cpu"])
    assert (outputs / "results.json").read_text() == ""


def test_unfinished_runs_are_left_out(mnist_dir, outputs, capsys):
    path = outputs / "VAE" / VARIANT / "VAE_latent_3.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["epochs"] = 50  # as if interrupted after 2 of 50 epochs
    torch.save(ckpt, path)
    results = run_evaluate(mnist_dir, outputs)
    assert ("VAE", 3) not in {(e["model"], e["latent"]) for e in results["runs"]}
    assert "leaving out" in capsys.readouterr().err


def test_a_multi_seed_sweep_through_evaluate(mnist_dir, tmp_path, monkeypatch):
    """Two seeds of one configuration: one row with their mean and sample standard deviation, per
    digit too, and the per-digit figure draws those spreads as error bars."""
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "ae", "--latent", "2", "--epochs", "1",
                "--limit", "512", "--hidden", "16", "--seed", "0", "1", "--device", "cpu"])
    import matplotlib.axes
    drawn = []
    errorbar = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda ax, x, y, *a, **k: drawn.append((list(x), y, k.get("yerr"))) or errorbar(ax, x, y, *a,
                                                                                                        **k))
    results = run_evaluate(mnist_dir, tmp_path)
    (row,) = results["summary"]
    a, b = (e["test"] for e in results["runs"])
    assert row["seeds"] == [0, 1] and [e["seed"] for e in results["runs"]] == [0, 1]
    assert row["test_mse"] == pytest.approx((a["mse"] + b["mse"]) / 2, rel=1e-12)
    assert row["test_mse_std"] == pytest.approx(abs(a["mse"] - b["mse"]) / 2 ** 0.5, rel=1e-9)
    spreads = [abs(x - y) / 2 ** 0.5 for x, y in zip(a["mse_per_digit"], b["mse_per_digit"])]
    assert row["test_mse_per_digit_std"] == pytest.approx(spreads, rel=1e-9)
    (per_digit,) = [d for d in drawn if d[0] == list(range(10))]
    assert per_digit[1] == pytest.approx(row["test_mse_per_digit"]) and per_digit[2] == pytest.approx(spreads)
    assert "| Autoencoder | 2 | 2 |" in (tmp_path / "results.md").read_text()


def test_visualize_draws_around_a_checkpoint_of_nans(mnist_dir, outputs):
    path = outputs / "VAE" / VARIANT / "VAE_latent_2.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    result = cli("visualize.py", "--out", str(outputs), "--data-dir", mnist_dir, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "leaving " + str(path) + " out of the explorer: its weights or codes are not finite" in result.stderr
    assert (outputs / "VAE" / VARIANT / "comparison_1.jpg").exists()


def error_line(result):
    """The one error line of a failed script (after any progress bar), checked to be the only one."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def test_unreadable_results_json_is_one_line(mnist_dir, outputs):
    (outputs / "results.json").mkdir()  # unreadable as a file, even for root
    result = cli("visualize.py", "--out", str(outputs), "--data-dir", mnist_dir, "--device", "cpu")
    assert error_line(result) == f"error: cannot read {outputs / 'results.json'}: Is a directory"


def test_a_degenerate_autoencoder_code_is_one_line_in_visualize(mnist_dir, outputs):
    path = outputs / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt"
    ckpt = torch.load(path, weights_only=True)
    last = [k for k in ckpt["model"] if k.startswith("encoder.") and k.endswith(".weight")][-1]
    ckpt["model"][last] = torch.zeros_like(ckpt["model"][last])  # every image gets the same code: no spread
    torch.save(ckpt, path)
    result = cli("visualize.py", "--out", str(outputs), "--data-dir", mnist_dir, "--device", "cpu")
    assert error_line(result).startswith(
        f"error: Autoencoder ({LABEL}): its codes are too degenerate to fit a Gaussian")


def test_evaluate_measures_only_what_changed(mnist_dir, outputs, monkeypatch):
    first = run_evaluate(mnist_dir, outputs)
    measured = []
    measure_run = evaluation.measure_run
    monkeypatch.setattr(evaluation, "measure_run", lambda run, *a: measured.append(run.path) or measure_run(run, *a))
    assert run_evaluate(mnist_dir, outputs) == first and measured == [], "nothing changed: nothing measured"
    changed = outputs / "VAE" / VARIANT / "VAE_latent_3.pt"
    ckpt = torch.load(changed, weights_only=True)
    ckpt["model"]["decoder.0.bias"] += 0.1
    torch.save(ckpt, changed)
    train.main(["--data-dir", mnist_dir, "--out", str(outputs), "--model", "ae", "--latent", "4", "--epochs", "1",
                "--limit", "1024", "--batch-size", "256", "--hidden", "32", "--device", "cpu"])
    again = run_evaluate(mnist_dir, outputs)
    assert sorted(measured) == sorted([str(changed),
                                       str(outputs / "Autoencoder" / VARIANT / "Autoencoder_latent_4.pt")])
    assert [e for e in again["runs"] if e["checkpoint"] != str(changed) and e["latent"] != 4] == \
        [e for e in first["runs"] if e["checkpoint"] != str(changed)]
    measured.clear()
    run_evaluate(mnist_dir, outputs, "--no-classifier", "--seed", "1")
    assert len(measured) == 5, "another setting: everything measured again"


def test_report_only_renders_the_same_report_from_results_json_alone(mnist_dir, outputs, tmp_path):
    run_evaluate(mnist_dir, outputs)
    written = {name: (outputs / name).read_bytes() for name in ("results.json", "results.md")}
    (outputs / "results.md").unlink()
    for checkpoint in outputs.rglob("*.pt"):
        checkpoint.unlink()  # nothing measured: no checkpoint needed
    evaluate.main(["--out", str(outputs), "--report-only"])
    assert {name: (outputs / name).read_bytes() for name in written} == written
    with pytest.raises(UserError, match=r"--report-only needs a readable .*results.json"):
        evaluate.main(["--out", str(tmp_path / "nothing"), "--report-only"])
