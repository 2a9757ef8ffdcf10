"""The study's own Autoencoder as a variant, dead code units, the rate-distortion figure, and the
README's main table as results.json has it."""
import json
import os

import torch
from PIL import Image

import evaluate
import train
from common import load_checkpoint
from data import load_splits

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
    assert ckpt["config"]["code_relu"] is True
    test_x = load_splits(mnist_dir, 0, "cpu")["test"][0]
    with torch.no_grad():
        codes = model.encode(test_x)[0]
    assert (codes >= 0).all()
    results = evaluated(mnist_dir, tmp_path)
    dead = {e["variant"]: e["dead_units"] for e in results["runs"]}
    assert dead["limit 2048"] == 0, "a linear code is never exactly zero"
    expected = int(((codes == 0).double().mean(0) >= 0.99).sum())  # computed here, without the helper
    assert dead["code-relu, limit 2048"] == expected
    assert "| dead units |" in (tmp_path / "results.md").read_text()


def test_beta_sweep_prefers_the_studys_settings():
    row = lambda settings, latent=20: {"model": "VAE", "settings": settings, "latent": latent, "test_kl": 5.0}
    summary = [row({"hidden": [64]}), row({"hidden": [64], "beta": 0.5}), row({}), row({"beta": 0.1}),
               row({"beta": 0.1}, latent=2), row({"limit": 10})]
    rows, shared = evaluate.beta_sweep(summary)
    assert shared == {} and [r["settings"] for r in rows] == [{}, {"beta": 0.1}, {"beta": 0.1}]
    rows, shared = evaluate.beta_sweep(summary[:2] + summary[5:])
    assert shared == {"hidden": [64]} and len(rows) == 2
    assert evaluate.beta_sweep([row({}), row({"limit": 10})]) == ([], None)


def test_rate_distortion_figure_from_two_betas(mnist_dir, tmp_path):
    tiny(mnist_dir, tmp_path, "--model", "vae", "--latent", "2", "3")
    figure = tmp_path / "VAE" / "rate_distortion.jpg"
    evaluated(mnist_dir, tmp_path)
    assert not figure.exists(), "one beta: nothing to compare"
    tiny(mnist_dir, tmp_path, "--model", "vae", "--latent", "2", "3", "--beta", "0.25")
    tiny(mnist_dir, tmp_path, "--model", "ae", "--latent", "20")
    results = evaluated(mnist_dir, tmp_path)
    rows, shared = evaluate.beta_sweep(results["summary"])
    assert shared == {"limit": 2048} and sorted((evaluate.beta_of(r), r["latent"]) for r in rows) == [
        (0.25, 2), (0.25, 3), (1.0, 2), (1.0, 3)]
    low, high = (min((r for r in rows if r["latent"] == 3), key=evaluate.beta_of),
                 max((r for r in rows if r["latent"] == 3), key=evaluate.beta_of))
    assert low["test_kl"] > high["test_kl"], "a lower beta buys a higher rate"
    with Image.open(figure) as image:
        assert image.format == "JPEG" and image.size == (1300, 500)


def test_readme_main_table_is_the_committed_results_json():
    """The README's main table, the study's configuration, is results.json's, digit for digit."""
    with open(os.path.join(ROOT, "output", "results.json")) as f:
        summary = [r for r in json.load(f)["summary"] if r["variant"] == "default"]
    assert summary, "output/results.json has no run of the study's configuration"
    table = evaluate.markdown_tables(summary).split("\n\n")[0]
    with open(os.path.join(ROOT, "README.md")) as f:
        assert table in f.read(), "regenerate the README's table from output/results.md"
