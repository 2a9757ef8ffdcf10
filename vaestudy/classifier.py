"""A small classifier of a dataset's classes (MNIST's digits, Fashion-MNIST's articles), the measuring
instrument for what reconstructions and samples keep.

Trained once per dataset on its 54k training split and cached beside results.json (output/classifier.pt,
output/fashion-mnist/classifier.pt); evaluate.py uses its accuracy on reconstructions and its
penultimate features for a Frechet distance (the in-domain analogue of FID).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaestudy.cli import Progress, UserError
from vaestudy.datasets import DATASETS, DEFAULT
from vaestudy.device import deterministic_cudnn
from vaestudy.files import atomic_write, versions

CLASSIFIER_FORMAT = "mnist-vae-study/classifier/1"


class DigitCNN(nn.Module):
    def __init__(self, features=128):
        super().__init__()
        # small on purpose: it runs over 20,000 images per checkpoint evaluated
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 26 -> 13
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # 13 -> 11 -> 5
            nn.Flatten(), nn.Linear(32 * 5 * 5, features), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def features(self, x):
        """Penultimate-layer features of flat (N, 784) images in [0, 1]."""
        return self.body(x.reshape(-1, 1, 28, 28))

    def forward(self, x):
        return self.head(self.features(x))


@torch.no_grad()
def features(model, x, batch_size=5000):
    model.eval()
    return torch.cat([model.features(xb) for xb in x.split(batch_size)])


def accuracy(model, x, labels, x_features=None):
    """Fraction of x classified as labels (pass x_features when they are at hand already)."""
    with torch.no_grad():
        logits = model.eval().head(features(model, x) if x_features is None else x_features)
    return (logits.argmax(1) == labels).float().mean().item()


@deterministic_cudnn()
def train_classifier(x, labels, epochs=6, batch_size=128, lr=3e-3, seed=0):
    """Adam on shuffled mini-batches, the learning rate decaying by 0.6 per epoch; on a GPU with
    cuDNN's deterministic algorithms, so that the instrument is the same on every run."""
    torch.manual_seed(seed)
    model = DigitCNN().to(x.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.6)
    generator = torch.Generator().manual_seed(seed)
    n_batches = -(-len(x) // batch_size)
    with Progress(epochs * n_batches, f"training the classifier, {epochs} epochs", "batch",
                  estimate_after_s=5) as bar:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for idx in order.split(batch_size):
                loss = F.cross_entropy(model(x[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(1)
            schedule.step()
    return model.eval()


def load_or_train(path, splits, split_seed, dataset=DEFAULT, epochs=6):
    """The cached classifier of a dataset at path, or a new one trained on the training split and saved there."""
    if os.path.exists(path):
        try:  # plain data only: a file carrying pickled code is refused, not run
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict copies to the device
            if ckpt["format"] != CLASSIFIER_FORMAT or not {"split_seed", "test_accuracy"} <= ckpt.keys():
                raise ValueError("another program's file, or an incomplete one")
            model = DigitCNN().to(splits["test"][0].device)
            model.load_state_dict(ckpt["model"])
        except Exception:
            raise UserError(f"{path} is not a readable classifier checkpoint: delete it and it will be retrained")
        if ckpt["split_seed"] != split_seed:
            raise UserError(f"{path} was trained on split seed {ckpt['split_seed']}, not {split_seed}: delete it")
        if ckpt.get("dataset", DEFAULT) != dataset:  # one written before there were others: MNIST's
            raise UserError(f"{path} classifies {ckpt.get('dataset', DEFAULT)}, not {dataset}: give --classifier "
                            "another path, or delete it")
        return model.eval(), ckpt["test_accuracy"]
    print(f"no {DATASETS[dataset].title} classifier at {path}: training one, once (it reads every run's "
          "reconstructions and samples)", file=sys.stderr, flush=True)
    model = train_classifier(*splits["train"], epochs=epochs)
    test_accuracy = accuracy(model, *splits["test"])
    weights = {k: v.cpu() for k, v in model.state_dict().items()}  # loads anywhere, as the runs' checkpoints do
    checkpoint = {"format": CLASSIFIER_FORMAT, "model": weights, "split_seed": split_seed,
                  "dataset": dataset,
                  "epochs": epochs, "test_accuracy": test_accuracy, "versions": versions()}
    atomic_write(path, lambda f: torch.save(checkpoint, f))
    return model, test_accuracy


def frechet_distance(features_a, features_b):
    """Frechet distance between Gaussians fitted to two feature sets (N, D):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)."""
    stats = [(f.double().mean(0), torch.cov(f.double().T)) for f in (features_a, features_b)]
    return frechet_from_moments(*stats[0], *stats[1])


def frechet_from_moments(mu_a, cov_a, mu_b, cov_b):
    def sqrt_psd(m):
        values, vectors = torch.linalg.eigh(m)
        return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T

    root_a = sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()
