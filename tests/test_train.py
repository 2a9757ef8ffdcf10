import os
import subprocess
import sys

import pytest
import torch

import train
from common import UserError, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


VARIANT = "hidden_64_batch-size_128_limit_512"  # the smoke runs' settings name their folder


def run_train(mnist_dir, out, *extra):
    argv = ["--data-dir", mnist_dir, "--out", str(out), "--limit", "512", "--batch-size", "128",
            "--hidden", "64", "--device", "cpu", *extra]
    train.main(argv)


def test_smoke_run_writes_a_self_describing_checkpoint(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--model", "vae", "--latent", "3", "--epochs", "2")
    path = tmp_path / "VAE" / VARIANT / "VAE_latent_3.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 2
    assert ckpt["config"] == {"model": "vae", "latent": 3, "hidden": [64], "input_dim": 784, "code_relu": False}
    assert ckpt["args"]["lr"] == 1e-3 and ckpt["args"]["batch_size"] == 128 and ckpt["split_seed"] == 0
    assert set(ckpt["versions"]) == {"torch", "torchvision"}
    for key in ("train_mse", "train_kl", "val_mse", "val_kl"):
        assert len(ckpt["history"][key]) == 2
    assert ckpt["history"]["train_mse"][1] < ckpt["history"]["train_mse"][0]
    _, model = load_checkpoint(str(path))  # rebuilt from the checkpoint alone
    assert model.decode(torch.zeros(1, 3)).shape == (1, 784)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*")), "no temporary file left behind"


def test_sweep_writes_one_file_per_run(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--latent", "2", "4", "--epochs", "1")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pt")) == [
        f"Autoencoder/{VARIANT}/Autoencoder_latent_2.pt", f"Autoencoder/{VARIANT}/Autoencoder_latent_4.pt",
        f"VAE/{VARIANT}/VAE_latent_2.pt", f"VAE/{VARIANT}/VAE_latent_4.pt"]


def test_resume_equals_uninterrupted_run(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path / "a", "--model", "vae", "--latent", "2", "--epochs", "3")
    run_train(mnist_dir, tmp_path / "b", "--model", "vae", "--latent", "2", "--epochs", "1")
    run_train(mnist_dir, tmp_path / "b", "--model", "vae", "--latent", "2", "--epochs", "3", "--resume")
    a = torch.load(tmp_path / "a" / "VAE" / VARIANT / "VAE_latent_2.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "VAE" / VARIANT / "VAE_latent_2.pt", weights_only=True)
    for key in ("train_mse", "train_kl", "val_mse", "val_kl", "train_loss"):
        assert a["history"][key] == b["history"][key]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name])


def test_resume_with_other_settings_is_another_run(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1")
    first = (tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt").read_bytes()
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "2", "--resume", "--lr", "0.01")
    other = torch.load(tmp_path / "Autoencoder" / f"hidden_64_batch-size_128_lr_0.01_limit_512" / "Autoencoder_latent_2.pt",
                       weights_only=True)
    assert other["epoch"] == 2 and other["args"]["lr"] == 0.01  # trained from scratch, not resumed from the first
    assert (tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt").read_bytes() == first


@pytest.mark.parametrize("argv, message", [
    (["--model", "gan"], "invalid choice"),
    (["--latent", "0"], "at least 1"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--epochs", "two"], "invalid int value"),
    (["--beta", "4"], "the Autoencoder has none: add --model vae"),
    (["--model", "ae", "--beta", "0.5"], "add --model vae"),
    (["--code-relu"], "--code-relu is for the Autoencoder: add --model ae"),
    (["--model", "vae", "--code-relu"], "add --model ae"),
])
def test_bad_flags_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.get_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(mnist_dir, tmp_path):
    with pytest.raises(UserError, match="no CUDA"):
        run_train(mnist_dir, tmp_path, "--device", "cuda")


def test_unwritable_output_folder(mnist_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        run_train(mnist_dir, blocker / "out", "--model", "ae", "--latent", "2", "--epochs", "1")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    bad_data = tmp_path / "data" / "MNIST" / "raw"
    bad_data.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad_data / name).write_bytes(b"garbage")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", str(tmp_path / "data"),
                             "--out", str(tmp_path / "out"), "--epochs", "1"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {bad_data / 'train-images-idx3-ubyte'} is corrupted (md5 mismatch): delete {bad_data} "
        "and run again to re-fetch MNIST"]
    assert not (tmp_path / "out").exists()


def test_importing_train_flushes_subnormals(tmp_path):
    """train.py turns on flush-to-zero on import, before PyTorch starts its threads: subnormals read as 0."""
    code = ("import sys, torch, train; "
            "x = torch.full((4096,), 1e-30); print(float((x * 1e-9).sum()), float((x * 1e-6).sum()) > 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0", "True"], "1e-39 is subnormal and flushed; 1e-36 is not"
    plain = subprocess.run([sys.executable, "-c", "import torch; print(float((torch.full((4096,), 1e-30) * 1e-9).sum()) > 0)"],
                           capture_output=True, text=True)
    assert plain.stdout.strip() == "True", "without it, the same product is kept"
