"""scripts/gpu_check.sh, the one command that checks a GPU machine: it refuses a machine without
CUDA in one line, and its steps and summary work, run small on the CPU (its own knobs for that)."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_a_gpu_it_is_one_line_and_writes_nothing(tmp_path):
    result = subprocess.run(["bash", SCRIPT, str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1 and result.stderr.strip() == "gpu_check.sh: PyTorch sees no CUDA device"
    assert not (tmp_path / "out").exists()


def test_its_steps_run_and_it_writes_its_summary(mnist_dir, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_JOBS": "0",
           "GPU_CHECK_TESTS": "cpu and classifier",
           "GPU_CHECK_BENCH_FLAGS": "--hidden 16 --latent 2 --repeats 1 --skip-dataloader --precision fp32",
           "GPU_CHECK_STUDY_FLAGS": f"--latent 2 --epochs 1 --limit 256 --hidden 16 --data-dir {mnist_dir}",
           "GPU_CHECK_EVALUATE_FLAGS": f"--no-classifier --data-dir {mnist_dir}", "GPU_CHECK_COMMIT": "abc123"}
    result = subprocess.run(["bash", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == "cpu" and summary["commit"] == "abc123" and summary["failed"] == []
    assert set(summary["seconds"]) == {"tests", "bench", "train", "evaluate", "visualize"}
    assert summary["tests"].startswith("1 passed") and summary["study"].startswith("train.py --latent 2")
    assert json.loads((tmp_path / "bench_gpu.json").read_text())["fp32"]["train_seconds"] > 0
    runs = json.loads((tmp_path / "gpu_study_results.json").read_text())["runs"]
    assert sorted(r["model"] for r in runs) == ["Autoencoder", "VAE"]
