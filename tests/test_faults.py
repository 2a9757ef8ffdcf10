"""Each fault is injected for real and the test checks that nothing already saved was lost."""
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate
import train
from vaestudy import checkpoints, step
from vaestudy.checkpoints import load_checkpoint
from vaestudy.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--limit", "512", "--batch-size", "128", "--hidden", "32", "--device", "cpu", "--model", "vae", "--latent",
         "2"]
VARIANT = "hidden_32_batch-size_128_limit_512"  # a smoke run is a variant of the study, in a folder of its own


def small_run(mnist_dir, out, *extra):
    train.main(["--data-dir", mnist_dir, "--out", str(out), *SMALL, *extra])
    return out / "VAE" / VARIANT / "VAE_latent_2.pt"


def start_cli(mnist_dir, out, *extra):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", mnist_dir,
                             "--out", str(out), *SMALL, *extra], stderr=subprocess.PIPE, text=True)


def wait_for_epoch(path, proc, timeout=120):
    """Wait until the running process has saved at least one epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            return
        time.sleep(0.05)
    pytest.fail(f"no checkpoint appeared; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.slow
def test_sigkill_leaves_a_loadable_checkpoint_and_resume_matches(mnist_dir, tmp_path):
    path = tmp_path / "killed" / "VAE" / VARIANT / "VAE_latent_2.pt"
    proc = start_cli(mnist_dir, tmp_path / "killed", "--epochs", "200", "--save-every-s", "0")
    wait_for_epoch(path, proc)
    time.sleep(0.3)  # land somewhere inside a later epoch or save
    proc.kill()
    proc.wait()
    ckpt, _ = load_checkpoint(str(path))
    assert 1 <= ckpt["epoch"] < 200
    epochs = ckpt["epoch"] + 2
    small_run(mnist_dir, tmp_path / "killed", "--epochs", str(epochs), "--resume")
    reference = small_run(mnist_dir, tmp_path / "straight", "--epochs", str(epochs))
    resumed, straight = torch.load(path, weights_only=True), torch.load(reference, weights_only=True)
    assert resumed["history"]["val_mse"] == straight["history"]["val_mse"]
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_skips_finished_runs(mnist_dir, tmp_path):
    proc = start_cli(mnist_dir, tmp_path, "--epochs", "200", "--save-every-s", "0")
    path = tmp_path / "VAE" / VARIANT / "VAE_latent_2.pt"
    wait_for_epoch(path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith("error: interrupted") and "--resume" in err
    load_checkpoint(str(path))
    small_run(mnist_dir, tmp_path, "--epochs", "1", "--resume")  # already past epoch 1: nothing to do
    before = path.read_bytes()
    small_run(mnist_dir, tmp_path, "--epochs", "1", "--resume")
    assert path.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2], ids=["ctrl-c", "sigterm", "sigusr2"])
def test_a_stop_saves_every_finished_epoch_and_evaluate_leaves_the_run_out(mnist_dir, tmp_path, stop):
    """A run that would save only every hour is stopped after a few epochs: the stop writes every
    finished epoch, --resume continues from there bit for bit, and evaluate sees an unfinished run."""
    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", mnist_dir, "--out", str(out),
                             *SMALL, "--epochs", "500", "--save-every-s", "3600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    announced = 0
    for line in proc.stdout:  # one line per epoch off a terminal
        announced = int(line.split(": epoch ")[1].split()[0]) if ": epoch " in line else announced
        if announced == 3:
            break
    path = out / "VAE" / VARIANT / "VAE_latent_2.pt"
    assert not path.exists(), "nothing saved yet: an hour has not passed"
    proc.send_signal(stop)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    how = "interrupted" if stop == signal.SIGINT else f"stopped by {signal.Signals(stop).name}"
    assert err.strip().splitlines()[-1].startswith(f"error: {how}; ") and "--resume" in err
    saved = load_checkpoint(str(path))[0]
    assert 3 <= saved["epoch"] < 500 and saved["epochs"] == 500
    with pytest.raises(UserError, match="no finished runs"):
        evaluate.main(["--out", str(out), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    epochs = str(saved["epoch"] + 2)
    small_run(mnist_dir, out, "--epochs", epochs, "--resume")
    straight = torch.load(small_run(mnist_dir, tmp_path / "straight", "--epochs", epochs), weights_only=True)
    resumed = torch.load(path, weights_only=True)
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    assert all(resumed["history"][k] == v for k, v in straight["history"].items() if k != "seconds")


def test_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "VAE" / "VAE_latent_20.pt"
    path.parent.mkdir()
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "model": Payload()}, path)
    with pytest.raises(UserError, match="VAE_latent_20.pt is not a readable checkpoint"):
        evaluate.main(["--out", str(tmp_path), "--device", "cpu"])
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.pop("history"), "lacks history"),
    (lambda c: c["model"].__setitem__("encoder.0.weight", torch.zeros(3, 3)), "does not match the model"),
    (lambda c: c["model_config"].__setitem__("model", "gan"), "does not match the model"),
    (lambda c: c.__setitem__("format", "something else"), "not written by this repository"),
])
def test_damaged_checkpoints_are_refused_by_name(mnist_dir, tmp_path, damage, message):
    path = small_run(mnist_dir, tmp_path, "--epochs", "1")
    ckpt = torch.load(path, weights_only=True)
    damage(ckpt)
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=f"VAE_latent_2.pt.*{message}"):
        load_checkpoint(str(path))


def test_non_finite_loss_stops_with_epoch_and_batch(mnist_dir, tmp_path, monkeypatch):
    path = small_run(mnist_dir, tmp_path, "--epochs", "1")
    good = path.read_bytes()
    calls = {"n": 0}
    real_loss_terms = step.loss_terms

    def poisoned(*a, **k):  # the 3rd batch of the resumed epoch blows up
        calls["n"] += 1
        loss, se, kl = real_loss_terms(*a, **k)
        return (loss * float("nan") if calls["n"] == 3 else loss), se, kl

    monkeypatch.setattr(step, "loss_terms", poisoned)
    with pytest.raises(UserError,
                       match=r"non-finite at epoch 2, batch 3; the last good checkpoint .* epoch 1\) is kept"):
        small_run(mnist_dir, tmp_path, "--epochs", "3", "--resume")
    assert path.read_bytes() == good


@pytest.mark.slow
def test_a_non_finite_loss_saves_the_finished_epochs_first(mnist_dir, tmp_path, monkeypatch):
    """Epochs 1 to 3 finish unsaved (--save-every-s 3600); the loss blows up in epoch 4: the
    checkpoint then holds epoch 3, as the message says."""
    calls = {"n": 0}
    real_loss_terms = step.loss_terms

    def poisoned(*a, **k):  # 4 batches an epoch: the 2nd of the 4th epoch blows up
        calls["n"] += 1
        loss, se, kl = real_loss_terms(*a, **k)
        return (loss * float("nan") if calls["n"] == 3 * 4 + 2 else loss), se, kl

    monkeypatch.setattr(step, "loss_terms", poisoned)
    with pytest.raises(UserError, match=r"non-finite at epoch 4, batch 2; the last good checkpoint .* epoch 3\) is "):
        small_run(mnist_dir, tmp_path, "--epochs", "10", "--save-every-s", "3600")
    ckpt = load_checkpoint(str(tmp_path / "VAE" / VARIANT / "VAE_latent_2.pt"))[0]
    assert ckpt["epoch"] == 3 and len(ckpt["history"]["val_mse"]) == 3


@pytest.mark.slow
def test_huge_learning_rate_exits_non_zero_without_traceback(mnist_dir, tmp_path):
    proc = start_cli(mnist_dir, tmp_path, "--epochs", "3", "--lr", "1e6")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert "non-finite at epoch 1" in err and "nothing was saved" in err


def test_full_disk_during_save_keeps_previous_checkpoint(mnist_dir, tmp_path, monkeypatch):
    path = small_run(mnist_dir, tmp_path, "--epochs", "1")
    good = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    with pytest.raises(UserError, match="No space left on device.*previous file is untouched"):
        small_run(mnist_dir, tmp_path, "--epochs", "2", "--resume")
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_second_writer_of_the_same_run_is_refused(mnist_dir, tmp_path):
    path = small_run(mnist_dir, tmp_path, "--epochs", "1")
    good = path.read_bytes()
    with open(path.parent / ".VAE_latent_2.pt.lock", "a") as held:  # as a first train.py holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another process is training"):
            small_run(mnist_dir, tmp_path, "--epochs", "2", "--resume")
    assert path.read_bytes() == good
    small_run(mnist_dir, tmp_path, "--epochs", "2", "--resume")  # free again once released
    assert torch.load(path, weights_only=True)["epoch"] == 2


def test_the_run_lock_is_exclusive_between_two_trainers(tmp_path):
    """Two holders of the lock, as two train.py processes would be (flock locks belong to an open
    file, so one process opening it twice stands for two): the second is refused. A shared lock
    would let both in."""
    path = str(tmp_path / "VAE_latent_2.pt")
    with checkpoints.run_lock(path):
        with pytest.raises(UserError, match="another process is training"):
            with checkpoints.run_lock(path):
                pass
    with checkpoints.run_lock(path):
        pass  # released with its holder


def test_an_unsaved_epoch_is_kept_as_it_was_when_it_ended(tmp_path, monkeypatch):
    """Saver keeps an epoch it does not write yet as a copy: the next epoch, already under way when
    a stop comes, changes the live weights and history, and the file must not show them. An epoch
    whose write a stop cuts short is written by flush() all the same."""
    path = tmp_path / "VAE_latent_2.pt"
    weights, history = torch.zeros(3), {"val_mse": [1.0]}
    saver = checkpoints.Saver(str(path), every_s=3600)
    saver.epoch_done({"model": {"w": weights}, "history": history, "epoch": 1})
    assert not path.exists(), "not due for an hour"
    weights += 1  # the next epoch's steps, in place
    history["val_mse"].append(2.0)
    saver.flush()
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.zeros(3)) and saved["history"]["val_mse"] == [1.0]
    real_save = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        saver.epoch_done({"model": {"w": weights}, "history": history, "epoch": 2}, last=True)
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    saver.flush()
    assert torch.load(path, weights_only=True)["epoch"] == 2


def test_ctrl_c_inside_a_checkpoints_write_waits_for_the_file(mnist_dir, tmp_path, monkeypatch):
    """SIGINT landing inside torch.save (in a write its C++ writer calls back) made torch.save fail
    with "unexpected pos ... vs 0" instead of the one-line stop (seen in CI): now the stop waits for
    the write, and the interrupted epoch's file is whole."""
    real_save, saves = torch.save, []

    class Interrupting:  # a file where Ctrl-C lands in the middle of the second save
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if len(saves) == 2 and not saves[-1] and self.writes == 3:
                saves[-1] = True
                os.kill(os.getpid(), signal.SIGINT)
            return self.f.write(data)

        def flush(self):
            return self.f.flush()

    def save(obj, f, *args, **kwargs):
        saves.append(False)
        return real_save(obj, Interrupting(f), *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError, match="interrupted; .* keeps every finished epoch"):
        small_run(mnist_dir, tmp_path, "--epochs", "5", "--save-every-s", "0")
    monkeypatch.setattr(torch, "save", real_save)
    (path,) = tmp_path.rglob("*.pt")
    assert saves[1] is True and load_checkpoint(str(path))[0]["epoch"] == 2, "the second epoch's write completed"
