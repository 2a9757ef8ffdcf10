"""What GPUs and clusters meet, tested as far as this machine can: --compile across a sweep, checkpoints
that load anywhere, locks on file systems without them, the TF32 switch beside PyTorch's other API,
validation and evaluation in full float32 and the same on every run, the NLL's clock."""
import errno
import fcntl
import json
import os

import pytest
import torch

import evaluate
import train
from models import ModelConfig, build_model
from vaestudy import checkpoints, classifier, metrics, training
from vaestudy.checkpoints import run_lock, save_checkpoint
from vaestudy.cli import UserError
from vaestudy.data import load_splits
from vaestudy.device import cuda_tf32, tf32_enabled

TINY = ["--limit", "256", "--batch-size", "128", "--hidden", "16", "--device", "cpu"]


@pytest.mark.slow
def test_compile_compiles_each_run_of_a_sweep_once_and_none_falls_back_to_eager(mnist_dir, tmp_path, monkeypatch):
    """12 runs (both models, six latent sizes) with a short last batch (2100 = 2 x 1024 + 52): Dynamo's
    cache, keyed on forward_logits's code, reached its recompile limit (8) at run 8 and the rest of the
    sweep ran eager, silently. The eager backend stands in for Inductor (the same graphs, no C++)."""
    from torch._dynamo.utils import counters
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", **kw))
    graphs, train_run = [], training.train_run

    def counted(*args, **kwargs):
        before = counters["stats"]["unique_graphs"]
        train_run(*args, **kwargs)
        graphs.append(counters["stats"]["unique_graphs"] - before)
    monkeypatch.setattr(training, "train_run", counted)
    counters.clear()
    train.main(["--latent", "2", "5", "10", "20", "50", "100", "--epochs", "1", "--limit", "2100", "--hidden", "16",
                "--device", "cpu", "--compile", "--data-dir", mnist_dir, "--out", str(tmp_path)])
    assert graphs == [1] * 12, "one graph per run: the short last batch is no recompile either"
    assert not any("recompile" in reason for reason in counters["unimplemented"]), "no fallback to eager"


def test_a_checkpoint_holds_cpu_tensors_whatever_device_trained_it(tmp_path):
    """torch.save keeps each tensor's device: a GPU's checkpoint loaded with a plain torch.load only
    where there is a GPU. A storage tagged as CUDA's here stands in for a GPU tensor: saved as it
    is, a plain load fails as it would on a CPU-only machine; through save_checkpoint it loads."""
    weights = {"w": torch.ones(3)}
    on_gpu = {weights["w"].untyped_storage().data_ptr()}
    torch.serialization.register_package(
        0, lambda storage: "cuda:0" if storage.data_ptr() in on_gpu else None,
        lambda storage, location: None)
    torch.save({"model": weights}, tmp_path / "as_is.pt")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "as_is.pt", weights_only=True)
    save_checkpoint(str(tmp_path / "run.pt"), {"model": weights, "rng": [torch.zeros(2, dtype=torch.uint8)]})
    loaded = torch.load(tmp_path / "run.pt", weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.ones(3)) and loaded["model"]["w"].device.type == "cpu"
    assert weights["w"].untyped_storage().data_ptr() in on_gpu, "the live weights stay where they are"
    on_gpu.clear()


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_is_one_line_naming_the_way_out(tmp_path, monkeypatch, code):
    def no_locks(fd, operation):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UserError, match=r"its file system has no file locks .*--out on a local disk") as e:
        with run_lock(str(tmp_path / "VAE_latent_2.pt")):
            pass
    assert "\n" not in str(e.value)
    assert code in checkpoints.NO_LOCKS


def test_the_legacy_tf32_api_reads_inside_the_switch_and_the_callers_setting_comes_back():
    """Inside cuda_tf32, PyTorch 2.9+'s "mix of the legacy and new APIs" error met every legacy read
    (Inductor's max-autotune calls torch.get_float32_matmul_precision())."""
    backends = torch.backends
    before = (backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision, tf32_enabled())
    for enabled, precision in ((True, "high"), (False, "highest")):
        with cuda_tf32(enabled):
            assert torch.get_float32_matmul_precision() == precision
            assert backends.cuda.matmul.allow_tf32 is enabled and backends.cudnn.allow_tf32 is enabled
            assert tf32_enabled() is enabled
    assert (backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision, tf32_enabled()) == before
    backends.cuda.matmul.allow_tf32 = True  # a caller who set it the legacy way keeps reading it that way
    try:
        with cuda_tf32(False):
            pass
        assert backends.cuda.matmul.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
    finally:
        backends.cuda.matmul.fp32_precision = before[0]


def test_each_epochs_validation_runs_in_full_float32(mnist_dir, tmp_path, monkeypatch):
    seen, loss_terms = [], metrics.loss_terms
    monkeypatch.setattr(metrics, "loss_terms", lambda *a, **k: seen.append(tf32_enabled()) or loss_terms(*a, **k))
    train.main(["--model", "vae", "--latent", "2", "--epochs", "2", *TINY, "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    assert seen and not any(seen), "training's TF32 is off while it validates"


def test_the_nll_estimates_clock_sees_the_work_done(mnist_dir, monkeypatch):
    """log_px's progress (and its time estimate) read the clock after each batch was queued; on a GPU
    that is long before it has run. Each update now follows a wait for the device."""
    events = []
    monkeypatch.setattr(metrics, "sync", lambda device: events.append("sync"))

    class Bar:
        def update(self, n):
            events.append("update")
    model = build_model(ModelConfig(latent=2, hidden=(16,)), "bce")
    x = load_splits(mnist_dir, 0, "cpu", binarize=True)["test"][0][:30]
    metrics.log_px(model, x, k=4, batch_size=10, progress=Bar())
    assert events == ["sync", "update"] * 3


@pytest.mark.slow
def test_two_evaluations_give_the_same_results(mnist_dir, tmp_path, device):
    """On every device here (CUDA too, where there is one): the per-class sums have no atomics, the
    classifier trains with cuDNN's deterministic algorithms, so two evaluations agree to the bit."""
    flags = ["--data-dir", mnist_dir, "--device", device]
    train.main(["--latent", "2", "--epochs", "1", *TINY[:-2], *flags, "--out", str(tmp_path)])
    splits = load_splits(mnist_dir, 0, device, limit=512)
    nets = [classifier.train_classifier(*splits["train"], epochs=1) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    measured = []
    for _ in range(2):
        for cache in tmp_path.rglob("*.measured.json"):  # measured afresh, not read back
            cache.unlink()
        evaluate.main(["--out", str(tmp_path), *flags, "--no-classifier"])
        measured.append([{k: v for k, v in e.items() if k != "measured_by"}
                         for e in json.loads((tmp_path / "results.json").read_text())["runs"]])
    assert measured[0] == measured[1]
