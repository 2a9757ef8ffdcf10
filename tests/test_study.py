"""The study's own Autoencoder as a variant, dead code units, the rate-distortion figure, and the
README's main table as results.json has it."""
import json
import os

import pytest
import torch
from PIL import Image

import evaluate
import train
from vaestudy import published, report, stats
from vaestudy.checkpoints import load_checkpoint
from vaestudy.data import load_splits

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(mnist_dir, out, *extra):
    train.main(["--latent", "2", "--epochs", "1", "--limit", "2048", "--data-dir", mnist_dir, "--out", str(out),
                "--device", "cpu", *extra])


def evaluated(mnist_dir, out):
    evaluate.main(["--out", str(out), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    return json.loads((out / "results.json").read_text())


def test_code_relu_is_a_variant_with_dead_units_reported(mnist_dir, tmp_path):
    tiny(mnist_dir, tmp_path, "--model", "ae", "--latent", "8")
    tiny(mnist_dir, tmp_path, "--model", "ae", "--latent", "8", "--code-relu")
    path = tmp_path / "Autoencoder" / "code-relu_limit_2048" / "Autoencoder_latent_8.pt"
    ckpt, model = load_checkpoint(str(path))  # rebuilt from the checkpoint alone, ReLU included
    assert ckpt["model_config"]["code_relu"] is True
    test_x = load_splits(mnist_dir, 0, "cpu")["test"][0]
    with torch.no_grad():
        codes = model.encode(test_x)[0]
    assert (codes >= 0).all()
    found = evaluated(mnist_dir, tmp_path)
    dead = {e["variant"]: e["dead_units"] for e in found["runs"]}
    assert dead["limit 2048"] == 0, "a linear code is never exactly zero"
    expected = int(((codes == 0).double().mean(0) >= 0.99).sum())  # computed here, without the helper
    assert dead["code-relu, limit 2048"] == expected
    assert "| dead units |" in (tmp_path / "results.md").read_text()


def test_beta_sweep_prefers_the_studys_settings():
    row = lambda settings, latent=20: {"model": "VAE", "settings": settings, "latent": latent, "test_kl": 5.0}
    summary = [row({"hidden": [64]}), row({"hidden": [64], "beta": 0.5}), row({}), row({"beta": 0.1}),
               row({"beta": 0.1}, latent=2), row({"limit": 10})]
    rows, shared = stats.beta_sweep(summary)
    assert shared == {} and [r["settings"] for r in rows] == [{}, {"beta": 0.1}, {"beta": 0.1}]
    rows, shared = stats.beta_sweep(summary[:2] + summary[5:])
    assert shared == {"hidden": [64]} and len(rows) == 2
    assert stats.beta_sweep([row({}), row({"limit": 10})]) == ([], None)


def test_rate_distortion_figure_from_two_betas(mnist_dir, tmp_path):
    tiny(mnist_dir, tmp_path, "--model", "vae", "--latent", "2", "3")
    figure = tmp_path / "VAE" / "rate_distortion.jpg"
    evaluated(mnist_dir, tmp_path)
    assert not figure.exists(), "one beta: nothing to compare"
    tiny(mnist_dir, tmp_path, "--model", "vae", "--latent", "2", "3", "--beta", "0.25")
    tiny(mnist_dir, tmp_path, "--model", "ae", "--latent", "20")
    found = evaluated(mnist_dir, tmp_path)
    rows, shared = stats.beta_sweep(found["summary"])
    assert shared == {"limit": 2048} and sorted((stats.beta_of(r), r["latent"]) for r in rows) == [
        (0.25, 2), (0.25, 3), (1.0, 2), (1.0, 3)]
    low, high = (min((r for r in rows if r["latent"] == 3), key=stats.beta_of),
                 max((r for r in rows if r["latent"] == 3), key=stats.beta_of))
    assert low["test_kl"] > high["test_kl"], "a lower beta buys a higher rate"
    table = report.rate_distortion_table(found["summary"]).splitlines()
    assert [line.split(" | ")[:2] for line in table[2:]] == [["| 0.25", "2"], ["| 0.25", "3"], ["| 1", "2"], ["| 1",
                                                                                                              "3"]]
    assert table[-1].split(" | ")[4] == report.fmt(high["test_mse"]), "the row of beta 1, latent 3"
    assert "rate and distortion" in (tmp_path / "results.md").read_text().lower()
    with Image.open(figure) as image:
        assert image.format == "JPEG" and image.size == (1300, 500)


def summary_row(model, settings, latent, **values):
    row = {"model": model, "settings": settings, "latent": latent, "seeds": [0]}
    for key in ("test_mse", "test_mse_sampled", "test_kl"):
        row[key], row[key + "_std"] = values.get(key), None
    row["by_seed"] = values.get("by_seed", {})
    return row


def relu_row(latent, mses, dead):
    """A study-ReLU Autoencoder row of three seeds with these test errors and dead units."""
    row = summary_row("Autoencoder", {"code_relu": True}, latent, test_mse=sum(mses) / len(mses),
                      by_seed={"test_mse": mses, "dead_units": dead})
    return dict(row, seeds=[0, 1, 2])


def test_study_table_places_the_study_against_each_seed():
    study_ae = {latent: ae for latent, (ae, _, _) in published.STUDY.items()}
    summary = [relu_row(2, [study_ae[2] - 0.002, study_ae[2] + 0.001, study_ae[2]], [0, 0, 1]),  # spans it
               relu_row(10, [study_ae[10] + 0.001, study_ae[10] + 0.003, study_ae[10] + 0.002], [5, 6, 7]),
               relu_row(20, [study_ae[20] - 0.002, study_ae[20] - 0.001, study_ae[20] - 0.003], [1, 2, 3]),
               summary_row("Autoencoder", {}, 50, test_mse=0.005),
               summary_row("Autoencoder", {"code_relu": True, "beta": 2}, 50, test_mse=0.1)]  # another variant
    lines = {int(line.split(" | ")[0][2:]): line.split(" | ") for line in report.study_table(summary).splitlines()[2:]}
    assert sorted(lines) == [2, 10, 20, 50], "a latent size with no run has no row"
    assert [lines[latent][4] for latent in (2, 10, 20, 50)] == ["within", "below all", "above all", "n/a"]
    assert lines[10][5] == "5, 6, 7 of 10" and lines[10][2].endswith("(3)")
    assert lines[50][6] == "0.0050" and lines[50][2] == "n/a", "the other variant is not the study's ReLU"
    assert report.study_table([summary_row("VAE", {"limit": 2048}, 2, test_mse=0.1)]) == ""


def test_summary_keeps_every_metric_of_each_seed_in_seed_order():
    def entry(seed, mse, dead):
        return {"model": "Autoencoder", "variant": "code-relu", "settings": {"code_relu": True}, "latent": 10,
                "seed": seed, "epochs": 50 + seed, "dead_units": dead, "val": {"mse": mse},
                "test": {"mse": mse, "mse_per_digit": [mse] * 10, "kl": 0.0}}
    [row] = stats.summarize([entry(2, 0.03, 7), entry(0, 0.01, 5), entry(1, 0.02, 6)])
    assert row["seeds"] == [0, 1, 2]
    assert row["by_seed"] == {"test_mse": [0.01, 0.02, 0.03], "val_mse": [0.01, 0.02, 0.03], "dead_units": [5, 6, 7]}
    assert row["epochs"] == [50, 51, 52], "each seed's epochs, in seed order"
    assert abs(row["test_mse"] - 0.02) < 1e-12 and abs(row["test_mse_std"] - 0.01) < 1e-12
