"""The training loop never waits for the device inside an epoch: host reads happen once per epoch."""
import pytest
import torch

import train
from vaestudy import training

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

# Every way a tensor's value reaches Python, each of which makes the host wait for an accelerator:
# item/tolist/numpy, float()/int()/bool() (and so `if t:`), and copies to the CPU.
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__index__", "__bool__", "cpu")


def count_host_reads(monkeypatch, mnist_dir, out, batch_size):
    calls = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            calls["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    original_to = torch.Tensor.to

    def to(self, *a, **k):  # a copy to the CPU; on the CPU itself it costs nothing, on CUDA it waits
        target = k.get("device", a[0] if a else None)
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
            calls["n"] += 1
        return original_to(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", to)
    train.main(["--data-dir", mnist_dir, "--out", str(out), "--model", "vae", "--latent", "2", "--epochs", "1",
                "--limit", "512", "--batch-size", str(batch_size), "--hidden", "16", "--device", "cpu"])
    monkeypatch.undo()
    return calls["n"]


def test_host_reads_do_not_grow_with_batches(monkeypatch, mnist_dir, tmp_path):
    one_batch = count_host_reads(monkeypatch, mnist_dir, tmp_path / "a", batch_size=512)
    many_batches = count_host_reads(monkeypatch, mnist_dir, tmp_path / "b", batch_size=16)  # 32 batches
    assert one_batch > 0, "the counter must see the once-per-epoch read"
    assert many_batches <= one_batch


@pytest.mark.parametrize("read", [lambda loss: loss.item(), float, bool, lambda loss: loss.numpy(),
                                  lambda loss: loss.to("cpu")], ids=["item", "float", "bool", "numpy", "to-cpu"])
def test_the_count_catches_a_loop_that_reads_its_loss_per_batch(monkeypatch, mnist_dir, tmp_path, read):
    make_step = training.make_step

    def reading_step(*a, **k):
        step = make_step(*a, **k)

        def stepped(x):
            stats = step(x)
            read(stats[0].detach())  # what a loop logging its loss per batch would do
            return stats
        return stepped

    monkeypatch.setattr(training, "make_step", reading_step)
    one_batch = count_host_reads(monkeypatch, mnist_dir, tmp_path / "a", batch_size=512)
    monkeypatch.setattr(training, "make_step", reading_step)
    many_batches = count_host_reads(monkeypatch, mnist_dir, tmp_path / "b", batch_size=16)
    assert many_batches > one_batch
