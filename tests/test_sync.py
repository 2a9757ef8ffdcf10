"""The training loop never waits for the device inside an epoch: host reads happen once per epoch."""
import torch

import train


def count_host_reads(monkeypatch, mnist_dir, out, batch_size):
    calls = {"n": 0}
    for name in ("item", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            calls["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train.main(["--data-dir", mnist_dir, "--out", str(out), "--model", "vae", "--latent", "2", "--epochs", "1",
                "--limit", "512", "--batch-size", str(batch_size), "--hidden", "16", "--device", "cpu"])
    monkeypatch.undo()
    return calls["n"]


def test_host_reads_do_not_grow_with_batches(monkeypatch, mnist_dir, tmp_path):
    one_batch = count_host_reads(monkeypatch, mnist_dir, tmp_path / "a", batch_size=512)
    many_batches = count_host_reads(monkeypatch, mnist_dir, tmp_path / "b", batch_size=16)  # 32 batches
    assert one_batch > 0, "the counter must see the once-per-epoch read"
    assert many_batches <= one_batch
