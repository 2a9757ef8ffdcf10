"""A dataset is a declaration (vaestudy/datasets.py): its checksums hold for the real files, its files
are found where they are installed, it is part of a run's identity (a folder of its own that MNIST's
runs never share), and its class names reach the figures and the tables."""
import dataclasses
import gzip
import hashlib
import os

import pytest
import torch
from conftest import require

import evaluate
import train
from models import ModelConfig
from vaestudy import data, plots, report
from vaestudy.checkpoints import load_runs
from vaestudy.cli import UserError
from vaestudy.datasets import DATASETS, FASHION_MNIST, FILES, MNIST, dataset_folder
from vaestudy.runs import TrainConfig, checkpoint_path

TINY = ["--model", "vae", "--latent", "2", "--limit", "256", "--batch-size", "128", "--hidden", "16",
        "--device", "cpu", "--epochs", "1"]


def test_mnists_declaration_is_the_official_files(mnist_dir):
    for name, expected in zip(FILES, MNIST.md5):
        with open(os.path.join(mnist_dir, "MNIST", "raw", name), "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == expected


def test_fashion_mnists_declaration_holds_for_the_debian_package_decompressed():
    """Debian recompressed the four files (other .gz md5s than the project's); their content is what
    the declaration checks, and the labels are 6,000 of each class in training and 1,000 in test."""
    folder = FASHION_MNIST.local[0]
    if not os.path.isdir(folder):
        require(f"no {folder}: apt-get install dataset-fashion-mnist")
    for name, expected in zip(FILES, FASHION_MNIST.md5):
        with gzip.open(os.path.join(folder, name + ".gz")) as f:
            content = f.read()
        assert hashlib.md5(content).hexdigest() == expected, name
        if "labels" in name:
            counts = torch.bincount(torch.frombuffer(bytearray(content[8:]), dtype=torch.uint8).long())
            assert counts.tolist() == [6000 if name.startswith("train") else 1000] * 10


def test_the_debian_folder_is_found_and_a_missing_dataset_is_one_line(fashion_dir, tmp_path, monkeypatch):
    data.ensure_dataset(str(tmp_path), FASHION_MNIST)  # from the package's folder, decompressed
    assert sorted(os.listdir(tmp_path / "FashionMNIST" / "raw")) == sorted(FILES)
    train_x, train_y, test_x, test_y = data.load_dataset(str(tmp_path), "fashion-mnist")
    assert train_x.shape == (60000, 28, 28) and test_y.shape == (10000,)
    # offline, and the package not installed: the sources here fail, and the error says where to get the files
    monkeypatch.setattr(data, "FETCHERS", (data._placed_by_hand, data._installed_package))
    uninstalled = dataclasses.replace(FASHION_MNIST, local=(str(tmp_path / "nowhere"),))
    with pytest.raises(UserError) as e:
        data.ensure_dataset(str(tmp_path / "empty"), uninstalled)
    message = str(e.value)
    assert "\n" not in message and "could not fetch Fashion-MNIST" in message
    assert "apt-get install dataset-fashion-mnist" in message and "FashionMNIST/raw" in message


@pytest.mark.slow
def test_gz_files_placed_by_hand_are_used(fashion_dir, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        with open(os.path.join(fashion_dir, "FashionMNIST", "raw", name), "rb") as f, gzip.open(raw / (name + ".gz"),
                                                                                                "wb") as g:
            g.write(f.read())
    data.ensure_dataset(str(tmp_path), FASHION_MNIST, fetch=True)
    data.verify(str(tmp_path), FASHION_MNIST)


def test_the_dataset_is_part_of_a_runs_identity(fashion_dir, tmp_path):
    config = ModelConfig(latent=2)
    paths = {name: checkpoint_path("out", config, TrainConfig(dataset=name)) for name in DATASETS}
    assert paths == {"mnist": "out/VAE/VAE_latent_2.pt", "fashion-mnist": "out/fashion-mnist/VAE/VAE_latent_2.pt"}
    out = ["--data-dir", fashion_dir, "--out", str(tmp_path)]
    train.main([*TINY, *out])
    train.main([*TINY, *out, "--dataset", "fashion-mnist"])
    mnist, fashion = load_runs(str(tmp_path)), load_runs(dataset_folder(str(tmp_path), "fashion-mnist"), "cpu",
                                                         "fashion-mnist")
    assert [r.train.dataset for r in mnist] == ["mnist"] and [r.train.dataset for r in fashion] == ["fashion-mnist"]
    assert mnist[0].path != fashion[0].path and mnist[0].variant == fashion[0].variant, "the same settings"
    assert not torch.equal(mnist[0].model.decoder[0].weight, fashion[0].model.decoder[0].weight), "other images"


@pytest.mark.slow
def test_fashion_results_and_figures_carry_its_class_names(fashion_dir, tmp_path, monkeypatch):
    out = ["--data-dir", fashion_dir, "--out", str(tmp_path), "--dataset", "fashion-mnist"]
    train.main([*TINY, *out])
    import matplotlib.axes
    ticks = []
    set_xticks = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda ax, t, labels=None, **k: ticks.append(labels) or set_xticks(ax, t, labels, **k))
    evaluate.main([*out, "--no-classifier", "--device", "cpu"])
    assert list(FASHION_MNIST.classes) in [list(t) for t in ticks if t is not None], "the per-class figure"
    text = (tmp_path / "fashion-mnist" / "results.md").read_text()
    assert "Test MSE per class (z = mu):" in text and "| T-shirt/top | Trouser |" in text
    assert "Against the study's published" not in text, "the study measured MNIST, not clothes"
    assert not (tmp_path / "results.md").exists(), "nothing written where MNIST's results go"


def test_plots_and_tables_of_mnist_keep_their_digits():
    rows = [{"model": "VAE", "variant": "default", "settings": {}, "latent": 2, "seeds": [0],
             "test_mse_per_digit": [0.01] * 10, "test_mse_per_digit_std": [0.0] * 10}]
    assert "| model | latent | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |" in report.markdown_tables(rows)
    assert plots.plot_results.__defaults__[-1] is MNIST
