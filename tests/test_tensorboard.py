"""train.py --tensorboard, read back with TensorBoard's own event reader: every epoch's figures as
the checkpoint's history has them, once each, across a resume and across a run killed between two
saves; the reconstruction grids; and nothing written without the flag."""
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from vaestudy.sweep import tensorboard_folder

TINY = ["--model", "vae", "--latent", "2", "--limit", "512", "--batch-size", "128", "--hidden", "16", "--device", "cpu"]
SCALARS = {"train/loss": "train_loss", "train/mse": "train_mse", "train/kl": "train_kl", "val/mse": "val_mse",
           "val/kl": "val_kl", "seconds": "seconds"}


def run(mnist_dir, out, *extra):
    train.main([*TINY, "--data-dir", mnist_dir, "--out", str(out), "--tensorboard", *extra])
    (path,) = out.rglob("*.pt")
    return path


def read(path):
    events = EventAccumulator(tensorboard_folder(str(path)), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def assert_matches_history(path, epochs):
    events, history = read(path), torch.load(path, weights_only=True)["history"]
    for tag, key in SCALARS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == list(range(1, epochs + 1)), f"{tag}: each epoch once, in order"
        assert [s.value for s in scalars] == pytest.approx(history[key], rel=1e-6), tag  # stored as float32
    return events


def test_the_curves_are_the_history_and_a_resume_continues_them(mnist_dir, tmp_path):
    path = run(mnist_dir, tmp_path, "--epochs", "3")
    assert_matches_history(path, 3)
    run(mnist_dir, tmp_path, "--epochs", "5", "--resume")
    events = assert_matches_history(path, 5)
    assert [image.step for image in events.Images("reconstructions")] == [3, 5], "every 5 epochs, and the last"
    assert "tensorboard" in str(tensorboard_folder(str(path))) and path.stem in tensorboard_folder(str(path))


@pytest.mark.slow
def test_a_run_killed_between_two_saves_writes_no_epoch_twice(mnist_dir, tmp_path):
    """The events of epochs 3 and 4 were written, the checkpoint was last saved at epoch 2 (as a kill
    between two saves leaves it): the resumed run's epochs 3 to 5 replace them."""
    out = tmp_path / "out"
    path = run(mnist_dir, out, "--epochs", "2")
    saved_at_2 = tmp_path / "at_2.pt"
    shutil.copy(path, saved_at_2)
    run(mnist_dir, out, "--epochs", "4", "--resume")
    shutil.copy(saved_at_2, path)
    run(mnist_dir, out, "--epochs", "5", "--resume")
    assert_matches_history(path, 5)


def test_without_the_flag_nothing_is_written(mnist_dir, tmp_path):
    train.main([*TINY, "--data-dir", mnist_dir, "--out", str(tmp_path), "--epochs", "1"])
    assert not list(tmp_path.rglob("events.out.tfevents*"))
