"""A metric declared once (vaestudy.metrics.METRICS) is measured, summarised and shown with nothing
else changed: the top-dimension KL, added as a declaration and its measuring function alone."""
import json

import pytest
import torch

import evaluate
import train
from vaestudy.checkpoints import load_run
from vaestudy.data import load_splits
from vaestudy.metrics import METRICS

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs


def test_a_declared_metric_reaches_results_json_and_results_md(mnist_dir, tmp_path):
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--latent", "2", "3", "--epochs", "1",
                "--limit", "512", "--batch-size", "128", "--hidden", "16", "--device", "cpu"])
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    results = json.loads((tmp_path / "results.json").read_text())
    metric = next(m for m in METRICS if m.key == "top_dim_kl")
    test_x = load_splits(mnist_dir, 0, "cpu", fetch=False)["test"][0]
    for entry in results["runs"]:
        if entry["model"] == "Autoencoder":
            assert "top_dim_kl" not in entry, "declared for the VAE's runs only"
            continue
        model = load_run(entry["checkpoint"]).model
        with torch.no_grad():  # the same quantity, computed here without the repository's helpers
            mu, logvar = model.encoder(test_x).double().chunk(2, dim=1)
            by_dimension = (0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)).mean(0)
        assert abs(entry["top_dim_kl"] - by_dimension.max().item()) < 1e-9
        assert by_dimension.max() <= entry["test"]["kl"] + 1e-6, "one dimension's share of the total"
    table = (tmp_path / "results.md").read_text()
    header = table.split("Every measurement, mean ± standard deviation over the seeds:\n\n")[1].splitlines()[0]
    assert f"| {metric.label} |" in header, "its column in results.md's table of every measurement"
    assert f"- **{metric.label}**: {metric.glossary}" in table, "its line among the terms"
    assert all(r["top_dim_kl"] is None for r in results["summary"] if r["model"] == "Autoencoder")
