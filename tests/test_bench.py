"""bench.py is a benchmark, not a test; these check only its FLOP accounting and that it runs."""
import json

import pytest
import torch

import bench
from models import ModelConfig, build_model
from vaestudy import speed

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs


def test_matmul_flops_by_hand():
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    shapes = speed.linear_shapes(model)
    assert shapes == [(784, 16), (16, 4), (2, 16), (16, 784)]
    batch = 10
    forward = 2 * batch * (784 * 16 + 16 * 4 + 2 * 16 + 16 * 784)
    # backward: a weight gradient for every layer, an input gradient for all but the first
    backward = forward + 2 * batch * (16 * 4 + 2 * 16 + 16 * 784)
    assert speed.matmul_flops(shapes, batch) == forward + backward


# The VAE 784-16-(2x2), decoder 2-16-784, counted by hand per image: forward 2 * (784*16 + 16*4 +
# 2*16 + 16*784) = 50,368 FLOPs, the weight gradients as many again, the input gradients of every
# layer but the first 2 * (16*4 + 2*16 + 16*784) = 25,280.
FLOPS_PER_IMAGE = 50_368 + 50_368 + 25_280


def test_one_epochs_flops_against_a_hand_count():
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    _, flops = speed.roofline(model, n_images=1000, batch=300, repeats=1,
                              device=torch.device("cpu"))  # batches 300, 300, 300, 100
    assert flops == 1000 * FLOPS_PER_IMAGE


def test_bench_runs_and_writes_its_figures(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--hidden", "16", "--latent", "2", "--repeats", "1", "--skip-dataloader", "--device", "cpu",
                "--data-dir", mnist_dir, "--json", str(out), "--profile"])
    result = json.loads(out.read_text())
    assert result["images_per_epoch"] == 54_000 and result["bf16_speedup"] > 0
    assert 0 < result["bf16_profile"]["matmul_share"] < 1 and "aten::addmm" in result["fp32_profile"]["top_ops"]
    for precision in ("fp32", "bf16"):
        times = result[precision]
        assert times["epoch_seconds"] >= times["train_seconds"] > 0 and times["roofline_seconds"] > 0
        assert times["matmul_gflop_per_epoch"] == pytest.approx(54_000 * FLOPS_PER_IMAGE / 1e9, rel=1e-12)


def test_bench_measures_the_nll_in_both_precisions(mnist_dir, tmp_path):
    import train
    train.main(["--model", "vae", "--latent", "2", "--recon", "bce", "--binarize", "--epochs", "1", "--limit", "256",
                "--hidden", "16", "--device", "cpu", "--data-dir", mnist_dir, "--out", str(tmp_path)])
    (checkpoint,) = tmp_path.rglob("*.pt")
    out = tmp_path / "nll.json"
    bench.main(["--nll-checkpoint", str(checkpoint), "--nll-images", "20", "--nll-samples", "50", "--device", "cpu",
                "--data-dir", mnist_dir, "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["images"] == 20 and result["k"] == 50
    assert result["difference_mean"] == pytest.approx(result["nll_bf16"] - result["nll_fp32"], abs=1e-9)
    assert 0 < result["difference_max_abs"] < 5, "bf16 moves the estimate, by a little"
    for precision in ("fp32", "bf16"):
        r = result[precision]
        assert r["seconds_per_1000_images"] == pytest.approx(r["seconds"] * 50, rel=1e-12)
        assert r["times_roofline"] > 0 and 0 < r["profile_matmul_share"] < 1 and len(r["nll_per_image"]) == 20
    assert "| fp32 |" in speed.nll_table(result) and "| bf16 |" in speed.nll_table(result)


def test_the_nll_estimates_matmuls_against_a_hand_count():
    """250 images in batches of 100, k = 7 in chunks of 3 draws: the encoder 784-16-4 once per image,
    the decoder 2-16-784 seven times, whatever the batches and chunks."""
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    calls = speed.nll_shapes(model, n_images=250, k=7, batch_size=100, draws=3)
    flops = sum(2 * rows * n_in * n_out * n for (rows, n_in, n_out), n in calls.items())
    assert flops == 2 * 250 * (784 * 16 + 16 * 4) + 2 * 250 * 7 * (2 * 16 + 16 * 784)
    assert calls[300, 16, 784] == 2 * 2 and calls[100, 16, 784] == 2 and calls[150, 2, 16] == 2


def test_the_advice_packs_short_runs_into_jobs_and_keeps_one_gpu_to_one_process():
    """A study run of 20 s on a GPU: about 10 minutes of runs per SLURM task, and no second process on
    one GPU (local jobs there only time-slice it); 200 s on a CPU: 3 runs per task."""
    gpu = bench.launch_advice(20, torch.device("cuda"))
    assert "--runs-per-job 30 makes each array task about 10 min" in gpu and "(--launcher none)" in gpu
    assert "--runs-per-job 3 makes each array task about 10 min" in bench.launch_advice(200, torch.device("cpu"))
