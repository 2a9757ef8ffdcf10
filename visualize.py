"""Draw the study's figures from the saved checkpoints, into output/Autoencoder/ and output/VAE/.

    python visualize.py   # loss curves, reconstructions and decoded samples for every model
"""
import argparse
import glob
import json
import os

import matplotlib
matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid
from tqdm import tqdm

from common import UserError, load_all_checkpoints, pick_device, run_cli, save_figure
from data import load_splits
from evaluate import encode_means, generate, latent_prior, reconstruct, select_latent
from models import MODEL_NAMES

DPI = 100
GRID_SIDE = 20  # the latent-2 manifold is decoded on GRID_SIDE x GRID_SIDE points
PER_DIGIT = 2  # test images of each digit in comparison_1.jpg


def plot_curves(runs, key, ylabel, title, path, log=True):
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    for ckpt in runs:
        values = ckpt["history"][key]
        ax.plot(range(1, len(values) + 1), values, label=str(ckpt["config"]["latent"]))
    ax.set(xlabel="epoch", ylabel=ylabel, title=title, yscale="log" if log else "linear")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="latent size", ncol=2, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_train_val(ckpt, path):
    name, latent = MODEL_NAMES[ckpt["config"]["model"]], ckpt["config"]["latent"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    for split in ("train", "val"):
        values = ckpt["history"][f"{split}_mse"]
        ax.plot(range(1, len(values) + 1), values, label={"train": "training", "val": "validation"}[split])
    ylabel = "MSE per pixel" + (", one sampled z" if name == "VAE" else "")  # as training measures it
    ax.set(xlabel="epoch", ylabel=ylabel, yscale="log", title=f"{name}, latent {latent}: training vs validation")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def show_grid(ax, images, nrow, title=None, row_labels=None):
    """Images (N, 784) in [0, 1] as a make_grid picture on ax, optionally labelling each row."""
    pad = 2
    grid = make_grid(images.reshape(-1, 1, 28, 28).cpu(), nrow=nrow, padding=pad, pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([pad + (28 + pad) * i + 14 for i in range(len(row_labels))], row_labels)
        ax.tick_params(length=0)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def grid_height(rows, cols, width):
    """Inches of figure height that show a rows x cols image grid `width` inches wide, plus a title."""
    return round(0.5 + width * (rows * 30 + 2) / (cols * 30 + 2), 1)


@torch.no_grad()
def decode(model, z):
    return model.eval().decode(z)


def comparison_indices(labels, per_digit=PER_DIGIT):
    """The first `per_digit` test images of every digit, in digit order."""
    return torch.cat([(labels == d).nonzero().flatten()[:per_digit] for d in range(10)])


def plot_comparison(runs, x, path):
    name = MODEL_NAMES[runs[0][1]["config"]["model"]]
    rows = [x] + [reconstruct(model, x) for _, _, model in runs]
    labels = ["original"] + [f"latent {ckpt['config']['latent']}" for _, ckpt, _ in runs]
    fig, ax = plt.subplots(figsize=(10, grid_height(len(rows), len(x), 8.6)), dpi=DPI, layout="constrained")
    show_grid(ax, torch.cat(rows), nrow=len(x), row_labels=labels,
              title=f"{name}: test digits and their reconstructions (z = mu)" if name == "VAE" else
              f"{name}: test digits and their reconstructions")
    save_figure(fig, path)
    plt.close(fig)


def plot_reconstruction_grid(model, latent, x, path):
    name = MODEL_NAMES[model.config.model]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), dpi=DPI, layout="constrained")
    show_grid(axes[0], x, nrow=8, title="test images")
    show_grid(axes[1], reconstruct(model, x), nrow=8, title=f"{name} reconstructions, latent {latent}")
    save_figure(fig, path)
    plt.close(fig)


def plot_decoding_grid(manifold_model, sample_model, train_x, seed, path):
    """Left: the latent-2 decoder over a grid of Gaussian quantiles. Right: decoded random samples."""
    panels = [m for m in (manifold_model, sample_model) if m is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 5.8), dpi=DPI, squeeze=False,
                             layout="constrained")
    axes = list(axes[0])
    name = MODEL_NAMES[panels[0].config.model]
    source = "N(0, I)" if panels[0].config.model == "vae" else "a Gaussian fitted to the training codes"
    if manifold_model is not None:
        mean, scale = latent_prior(manifold_model, train_x)
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, GRID_SIDE))
        # rows run from high to low second coordinate, so the picture reads like a plot
        grid = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2).to(mean.device)
        images = decode(manifold_model, mean + grid @ scale.T)
        show_grid(axes.pop(0), images, nrow=GRID_SIDE, title=f"latent 2: a {GRID_SIDE} x {GRID_SIDE} grid of its 5%-95% quantiles")
    if sample_model is not None:
        images = generate(sample_model, train_x, 100, seed)
        show_grid(axes.pop(0), images, nrow=10, title=f"latent {sample_model.config.latent}: 100 random samples")
    fig.suptitle(f"{name}: decoded points of {source}")
    save_figure(fig, path)
    plt.close(fig)


def plot_latent_space(runs, x, labels, path):
    """Test codes in 2-D coloured by digit: latent 2 as it is, larger codes by their first two
    principal components."""
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows + 0.5), dpi=DPI, squeeze=False,
                             layout="constrained")
    for ax, (_, ckpt, model) in zip(axes.flat, runs):
        codes = encode_means(model, x).double()
        latent = codes.shape[1]
        if latent > 2:
            centred = codes - codes.mean(0)
            codes = centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T
        points = ax.scatter(*codes.T.cpu().numpy(), c=labels.cpu().numpy(), cmap="tab10", s=1, alpha=0.5,
                            vmin=-0.5, vmax=9.5, rasterized=True)
        ax.set(title=f"latent {latent}" + (" (first 2 principal components)" if latent > 2 else ""),
               xlabel="PC 1" if latent > 2 else "z 1", ylabel="PC 2" if latent > 2 else "z 2")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    name = MODEL_NAMES[runs[0][1]["config"]["model"]]
    fig.suptitle(f"{name}: test images in latent space" + (" (posterior means)" if name == "VAE" else ""))
    fig.colorbar(points, ax=axes, ticks=range(10), label="digit", shrink=0.6)
    save_figure(fig, path)
    plt.close(fig)


INTERPOLATION_PAIRS = [(0, 6), (1, 7), (2, 5), (3, 8), (4, 9)]
STEPS = 10


def plot_interpolation(model, x, labels, path):
    """Decoded straight lines in latent space between the codes of pairs of test digits."""
    first = {d: x[(labels == d).nonzero()[0, 0]] for d in range(10)}
    starts = encode_means(model, torch.stack([first[a] for a, _ in INTERPOLATION_PAIRS]))
    ends = encode_means(model, torch.stack([first[b] for _, b in INTERPOLATION_PAIRS]))
    t = torch.linspace(0, 1, STEPS, device=x.device)[None, :, None]
    path_codes = (starts[:, None] * (1 - t) + ends[:, None] * t).reshape(-1, starts.shape[1])
    images = decode(model, path_codes)
    fig, ax = plt.subplots(figsize=(8, grid_height(len(INTERPOLATION_PAIRS), STEPS, 7)), dpi=DPI, layout="constrained")
    name = MODEL_NAMES[model.config.model]
    show_grid(ax, images, nrow=STEPS, row_labels=[f"{a} to {b}" for a, b in INTERPOLATION_PAIRS],
              title=f"{name}, latent {model.config.latent}: decoded straight lines between test digits")
    save_figure(fig, path)
    plt.close(fig)


def selected_latents(out, runs):
    """The selected latent size per model: from results.json when evaluate.py wrote one, otherwise
    by the same rule on each checkpoint's final validation MSE."""
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                return {model: c["selected"] for model, c in json.load(f)["selection"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path} is unreadable or incomplete: run python evaluate.py to regenerate it")
    chosen = {}
    for name in MODEL_NAMES.values():
        val = {c["config"]["latent"]: c["history"]["val_mse"][-1] for _, c, _ in runs
               if MODEL_NAMES[c["config"]["model"]] == name}
        chosen[name] = select_latent(val)[1] if val else None
    return chosen


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=None, help="folder of checkpoints to read (default: the --out folder)")
    p.add_argument("--out", default="output", help="where figures go (default: output)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the decoded random samples (default: 0)")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    runs = load_all_checkpoints(args.checkpoints or args.out, device)
    seed0 = {}  # curves and pictures show one seed per (model, latent): the lowest
    for run in runs:
        seed0.setdefault((run[1]["config"]["model"], run[1]["config"]["latent"]), run)
    runs = list(seed0.values())
    chosen = selected_latents(args.out, runs)
    splits = load_splits(args.data_dir, runs[0][1]["split_seed"], device, fetch=False)
    test_x, test_y = splits["test"]
    shown = test_x[comparison_indices(test_y)]
    for kind, name in tqdm(MODEL_NAMES.items(), desc="drawing", unit="model", leave=False):
        mine = [r for r in runs if r[1]["config"]["model"] == kind]
        if not mine:
            continue
        folder = os.path.join(args.out, name)
        ckpts = [c for _, c, _ in mine]
        mse = "MSE per pixel" + (", one sampled z" if kind == "vae" else "")
        plot_curves(ckpts, "train_mse", mse, f"{name}: training loss", os.path.join(folder, "train_MSE.jpg"))
        plot_curves(ckpts, "val_mse", mse, f"{name}: validation loss", os.path.join(folder, "val_MSE.jpg"))
        if kind == "vae":
            plot_curves(ckpts, "val_kl", "KL divergence per image (nats)", "VAE: validation KL divergence",
                        os.path.join(folder, "validation_KL_Divergence.jpg"), log=False)
        plot_comparison(mine, shown, os.path.join(folder, "comparison_1.jpg"))
        by_latent = {c["config"]["latent"]: (c, m) for _, c, m in mine}
        selected = chosen.get(name) if chosen.get(name) in by_latent else max(by_latent)
        ckpt, model = by_latent[selected]
        for stale in glob.glob(os.path.join(folder, "train_val_latent_*_MSE.jpg")):  # an earlier selection's
            os.remove(stale)
        plot_train_val(ckpt, os.path.join(folder, f"train_val_latent_{selected}_MSE.jpg"))
        plot_reconstruction_grid(model, selected, test_x[:64], os.path.join(folder, "reconstruction_grid.jpg"))
        manifold = by_latent[2][1] if 2 in by_latent else None
        sampled = model if selected != 2 or manifold is None else None
        plot_decoding_grid(manifold, sampled, splits["train"][0], args.seed, os.path.join(folder, "decoding_grid.jpg"))
        plot_latent_space(mine, test_x, test_y, os.path.join(folder, "latent_space.jpg"))
        plot_interpolation(model, test_x, test_y, os.path.join(folder, "interpolation.jpg"))
    print(f"wrote figures under {args.out}/Autoencoder and {args.out}/VAE")


if __name__ == "__main__":
    run_cli(main)
