"""bench.py is a benchmark, not a test; these check only its FLOP accounting and that it runs."""
import json

import bench
from models import ModelConfig, build_model


def test_matmul_flops_by_hand():
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    shapes = bench.linear_shapes(model)
    assert shapes == [(784, 16), (16, 4), (2, 16), (16, 784)]
    batch = 10
    forward = 2 * batch * (784 * 16 + 16 * 4 + 2 * 16 + 16 * 784)
    # backward: a weight gradient for every layer, an input gradient for all but the first
    backward = forward + 2 * batch * (16 * 4 + 2 * 16 + 16 * 784)
    assert bench.matmul_flops(shapes, batch) == forward + backward


def test_bench_runs_and_writes_its_figures(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--hidden", "16", "--latent", "2", "--repeats", "1", "--skip-dataloader", "--device", "cpu",
                "--data-dir", mnist_dir, "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["epoch_seconds"] > 0 and result["roofline_seconds"] > 0
    assert result["fraction_of_roofline"] == result["roofline_seconds"] / result["epoch_seconds"]
