"""Measure every checkpoint under output/ on the validation split and the official test set."""
import torch

from models import loss_terms


@torch.no_grad()
def evaluate(model, x, sample=False, seed=0, batch_size=10000):
    """Per-image squared error (summed over pixels) and KL of `model` on images x, in eval mode.

    With sample=True the VAE decodes one z ~ q(z|x) per image, drawn from its own seeded stream so
    that evaluating never moves the training's random state; otherwise it decodes z = mu.
    """
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        parts = [loss_terms(xb, *model(xb, sample=sample))[1:] for xb in x.split(batch_size)]
    model.train(was_training)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
