"""The pipeline on every device PyTorch sees here (the `device` fixture: the CPU, and CUDA where
there is a GPU): training in both precisions, a kill and a bit-exact resume, evaluate, the
likelihood estimate, the classifier, visualize with the explorer's page, and the benchmark."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import bench
import evaluate
import train
import visualize
from vaestudy.checkpoints import load_checkpoint, load_run
from vaestudy.classifier import accuracy, features, train_classifier
from vaestudy.data import load_splits
from vaestudy.device import check_precision, pick_device
from vaestudy.metrics import log_px, measure

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "512", "--batch-size", "128", "--hidden", "32", "--latent", "2"]


def needs_bf16(device, precision):
    if precision == "bf16" and device == "cuda":
        try:
            check_precision("bf16", pick_device("cuda"))
        except Exception as e:
            pytest.skip(str(e))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_in_each_precision(mnist_dir, tmp_path, device, precision):
    needs_bf16(device, precision)
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "vae", *TINY, "--epochs", "3",
                "--device", device, "--precision", precision])
    (path,) = tmp_path.rglob("*.pt")
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    history = ckpt["history"]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0] and history["val_mse"][-1] < history["val_mse"][0]
    assert {t.dtype for t in ckpt["model"].values()} == {torch.float32}
    assert ("cuda" in ckpt["rng"]) == (device == "cuda"), "a GPU run keeps its GPU's random stream too"


def test_a_killed_run_resumes_bit_exact_on_its_device(mnist_dir, tmp_path, device):
    """SIGKILL at some moment of a run that saves every 0.2 s, --resume, and the weights and history
    equal an uninterrupted run's. Between runs of one GPU model and one PyTorch build, as here."""
    flags = ["--data-dir", mnist_dir, *TINY, "--model", "vae", "--device", device]
    path = tmp_path / "killed" / "VAE" / "hidden_32_batch-size_128_limit_512" / "VAE_latent_2.pt"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *flags, "--out", str(tmp_path / "killed"),
                             "--epochs", "500", "--save-every-s", "0.2"], stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    saved = load_checkpoint(str(path))[0]["epoch"]
    assert 1 <= saved < 500, "killed mid-run"
    train.main([*flags, "--out", str(tmp_path / "killed"), "--epochs", str(saved + 2), "--resume"])
    train.main([*flags, "--out", str(tmp_path / "straight"), "--epochs", str(saved + 2)])
    resumed, straight = (torch.load(tmp_path / where / path.relative_to(tmp_path / "killed"), weights_only=True,
                                    map_location="cpu") for where in ("killed", "straight"))
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    assert all(resumed["history"][k] == v for k, v in straight["history"].items() if k != "seconds")


def test_evaluate_visualize_and_the_explorer_page(mnist_dir, tmp_path, device):
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), *TINY, "--epochs", "2", "--device", device])
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", device, "--no-classifier"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["model"] for r in results["runs"]) == ["Autoencoder", "VAE"]
    test_x, test_y = load_splits(mnist_dir, 0, "cpu", fetch=False)["test"]
    for entry in results["runs"]:  # the device's figures are the CPU's, measured from the same checkpoint
        on_cpu = measure(load_run(entry["checkpoint"]).model, test_x, test_y)
        assert entry["test"]["mse"] == pytest.approx(on_cpu["mse"], rel=1e-4)
        assert entry["test"]["mse_per_digit"] == pytest.approx(on_cpu["mse_per_digit"], rel=1e-4)
    visualize.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", device])
    assert (tmp_path / "explorer.html").stat().st_size > 10_000
    assert len(list(tmp_path.rglob("*.jpg"))) >= 10


def test_log_px_on_the_device_agrees_with_the_cpu(mnist_dir, tmp_path, device):
    """The k = 2000 estimate on the device is within a tenth of a nat of the CPU's on average: the
    draws differ (each device has its own random stream), the quantity estimated does not."""
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), *TINY, "--model", "vae", "--recon", "bce",
                "--binarize", "--epochs", "1", "--device", "cpu"])
    (path,) = tmp_path.rglob("*.pt")
    x = load_splits(mnist_dir, 0, "cpu", fetch=False, binarize=True)["test"][0][:20]
    on_cpu = log_px(load_run(str(path)).model, x, 2000)
    here = log_px(load_run(str(path), pick_device(device)).model, x.to(device), 2000).cpu()
    assert torch.allclose(here, on_cpu, atol=0.5)
    assert here.mean().item() == pytest.approx(on_cpu.mean().item(), abs=0.1)


def test_the_classifier_learns_on_the_device(mnist_dir, device):
    splits = load_splits(mnist_dir, 0, pick_device(device), fetch=False)
    (x, y), (test_x, test_y) = splits["train"], splits["test"]
    net = train_classifier(x[:4096], y[:4096], epochs=1)
    assert accuracy(net, test_x[:2000], test_y[:2000]) > 0.7
    assert features(net, test_x[:10]).shape == (10, 128)


def test_the_benchmark_runs(mnist_dir, tmp_path, device):
    precisions = ["fp32", "bf16"]
    try:
        check_precision("bf16", pick_device(device))
    except Exception:
        precisions = ["fp32"]
    bench.main(["--hidden", "16", "--latent", "2", "--repeats", "1", "--skip-dataloader", "--device", device,
                "--precision", *precisions, "--data-dir", mnist_dir, "--json", str(tmp_path / "bench.json")])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["device"].startswith(device)
    assert all(result[p]["train_seconds"] > 0 and result[p]["roofline_seconds"] > 0 for p in precisions)
