"""A run a user trained is never replaced unasked: an existing checkpoint refuses the sweep before
anything trains, with the three ways on (--resume, --out, --overwrite), each of which works."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

import train
from vaestudy.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "vae", "--limit", "256", "--batch-size", "128", "--hidden", "16", "--device", "cpu"]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_shorter_run_over_a_finished_one_is_refused_in_one_line_and_the_file_kept(mnist_dir, tmp_path):
    flags = [*TINY, "--latent", "2", "--data-dir", mnist_dir, "--out", str(tmp_path)]
    train.main([*flags, "--epochs", "2"])
    (path,) = tmp_path.rglob("*.pt")
    before = sha256(path)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags, "--epochs", "1"],
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0] == (f"error: {path} exists, trained for 2 epochs, and is kept: --resume continues it to "
                        "--epochs 1, --out DIR trains elsewhere, --overwrite retrains it from scratch")
    assert sha256(path) == before, "byte for byte"


def test_each_way_on_works(mnist_dir, tmp_path):
    flags = [*TINY, "--latent", "2", "--data-dir", mnist_dir]
    train.main([*flags, "--epochs", "1", "--out", str(tmp_path / "a")])
    (path,) = (tmp_path / "a").rglob("*.pt")
    train.main([*flags, "--epochs", "2", "--out", str(tmp_path / "a"), "--resume"])
    assert torch.load(path, weights_only=True)["epoch"] == 2, "--resume continued it"
    train.main([*flags, "--epochs", "1", "--out", str(tmp_path / "b")])
    assert torch.load(path, weights_only=True)["epoch"] == 2, "--out trained elsewhere"
    assert len(list((tmp_path / "b").rglob("*.pt"))) == 1
    train.main([*flags, "--epochs", "1", "--out", str(tmp_path / "a"), "--overwrite"])
    retrained = torch.load(path, weights_only=True)
    assert retrained["epoch"] == 1 and len(retrained["history"]["val_mse"]) == 1, "--overwrite retrained it"
    elsewhere = torch.load(next((tmp_path / "b").rglob("*.pt")), weights_only=True)
    assert all(torch.equal(retrained["model"][k], elsewhere["model"][k]) for k in elsewhere["model"]), "from scratch"


def test_a_sweep_with_one_existing_run_trains_none(mnist_dir, tmp_path):
    flags = [*TINY, "--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1"]
    train.main([*flags, "--latent", "3"])
    with pytest.raises(UserError, match=r"VAE_latent_3.pt exists, trained for 1 epoch, and is kept"):
        train.main([*flags, "--latent", "2", "3", "4"])
    assert [p.name for p in tmp_path.rglob("*.pt")] == ["VAE_latent_3.pt"], "checked before any run trained"


def test_resume_and_overwrite_exclude_each_other_and_a_launcher_only_resumes(capsys):
    for extra in (["--resume"], ["--launcher", "local"]):
        with pytest.raises(SystemExit):
            train.get_args(["--overwrite", *extra])
    assert "a requeued job must resume" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_reported_unless_overwritten(mnist_dir, tmp_path):
    flags = [*TINY, "--latent", "2", "--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1"]
    train.main(flags)
    (path,) = tmp_path.rglob("*.pt")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a readable checkpoint of this repository"):
        train.main(flags)
    assert path.read_bytes() == b"not a checkpoint"
    train.main([*flags, "--overwrite"])
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_extending_a_short_run_with_resume_is_bit_for_bit_the_long_run(mnist_dir, tmp_path):
    """The README's whole study after its first look: the first look's short runs continued to the
    study's length give what training them that long at once gives (weights and curves)."""
    flags = [*TINY, "--latent", "2", "--data-dir", mnist_dir]
    train.main([*flags, "--epochs", "1", "--out", str(tmp_path / "short")])
    train.main([*flags, "--epochs", "3", "--out", str(tmp_path / "short"), "--resume"])
    train.main([*flags, "--epochs", "3", "--out", str(tmp_path / "long")])
    extended, long = (torch.load(next((tmp_path / d).rglob("*.pt")), weights_only=True) for d in ("short", "long"))
    assert all(torch.equal(extended["model"][k], long["model"][k]) for k in long["model"])
    assert all(extended["history"][k] == v for k, v in long["history"].items() if k != "seconds")
