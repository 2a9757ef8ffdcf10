"""scripts/gpu_check.sh, the one command that checks a GPU machine: it refuses a machine without
CUDA in one line, and its steps and summary work, run small on the CPU (its own knobs for that)."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_a_gpu_it_is_one_line_and_writes_nothing(tmp_path):
    result = subprocess.run(["bash", SCRIPT, str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1 and result.stderr.strip() == "gpu_check.sh: PyTorch sees no CUDA device"
    assert not (tmp_path / "out").exists()


def test_its_steps_run_in_a_copy_without_git_or_data_and_it_writes_its_summary(mnist_dir, tmp_path):
    """As on a machine lent for one call: the working tree without .git, MNIST as a folder of .gz files,
    the commit from an argument; everything it writes, its log too, in the folder it is given."""
    tree, out, gz = tmp_path / "tree", tmp_path / "out", tmp_path / "gz"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "data", "output", "results",
                                                              "__pycache__", ".pytest_cache"))
    gz.mkdir()
    for name in os.listdir(os.path.join(mnist_dir, "MNIST", "raw")):
        with open(os.path.join(mnist_dir, "MNIST", "raw", name), "rb") as f, gzip.open(gz / (name + ".gz"), "wb") as g:
            g.write(f.read())
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_JOBS": "0",
           "GPU_CHECK_TESTS": "cpu and classifier", "MNIST_GZ_DIR": str(gz),
           "GPU_CHECK_BENCH_FLAGS": "--hidden 16 --latent 2 --repeats 1 --skip-dataloader --precision fp32",
           "GPU_CHECK_STUDY_FLAGS": "--latent 2 --epochs 1 --limit 256 --hidden 16",
           "GPU_CHECK_EVALUATE_FLAGS": "--no-classifier"}
    env.pop("GPU_CHECK_COMMIT", None)
    result = subprocess.run(["bash", str(tree / "scripts" / "gpu_check.sh"), str(out), "abc123"], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith(f"gpu_check.sh on none; PyTorch {torch.__version__}, CUDA ")
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["device"] == "cpu" and summary["commit"] == "abc123" and summary["failed"] == []
    assert summary["skipped"] == ["train_local_launcher: GPU_CHECK_JOBS=0"]
    assert set(summary["seconds"]) == {"tests", "bench", "train", "evaluate", "visualize"}
    assert summary["tests"].startswith("1 passed") and summary["study"].startswith("train.py --latent 2")
    assert sorted(os.listdir(out)) == ["bench_gpu.json", "gpu_check.json", "gpu_check.log", "gpu_study_results.json",
                                       "gpu_study_results.md"], "five files, none in a folder"
    assert "== visualize: " in (out / "gpu_check.log").read_text()
    assert json.loads((out / "bench_gpu.json").read_text())["fp32"]["train_seconds"] > 0
    runs = json.loads((out / "gpu_study_results.json").read_text())["runs"]
    assert sorted(r["model"] for r in runs) == ["Autoencoder", "VAE"]
