"""The figures visualize.py draws from a sweep's checkpoints: loss curves, reconstructions, decoding
grids, the latent space and interpolations, per model and variant; and the choice of the latent size
they show."""
import glob
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch

from vaestudy.cli import UserError, import_torchvision
from vaestudy.datasets import MNIST
from vaestudy.files import save_figure
from vaestudy.metrics import encode_means, generate, latent_prior, measure, reconstruct
from vaestudy.plots import integer_axis, plain_log_axis
from vaestudy.stats import mean_std, select_latent

DPI = 100
GRID_SIDE = 20  # the latent-2 manifold is decoded on GRID_SIDE x GRID_SIDE points
PER_CLASS = 2  # test images of each class (digit) in comparison_1.jpg


def plot_mean_band(ax, runs, key, label):
    """The mean over the runs' seeds of history[key] per epoch, with a band from the lowest to the
    highest seed where there are several."""
    n = min(len(run.ckpt["history"][key]) for run in runs)
    values = torch.tensor([run.ckpt["history"][key][:n] for run in runs], dtype=torch.float64)
    epochs = range(1, n + 1)
    seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
    (line,) = ax.plot(epochs, values.mean(0).numpy(), label=label + seeds)
    if len(runs) > 1:
        ax.fill_between(epochs, values.min(0).values.numpy(), values.max(0).values.numpy(), color=line.get_color(),
                        alpha=0.25, lw=0)


def curve_axes(ax, ylabel, title, log=True):
    """Epochs as whole numbers; errors on a log axis labelled in plain numbers where they fall by a
    factor of 3 or more, else (a short run) on a linear one, which then has more than one label."""
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    log = log and min(values) > 0 and max(values) >= 3 * min(values)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title, yscale="log" if log else "linear")
    integer_axis(ax.xaxis)
    if log:
        plain_log_axis(ax.yaxis)
    ax.grid(alpha=0.3, which="both")


def plot_curves(by_latent, key, ylabel, title, path, log=True):
    """One curve per latent size ({latent: [runs of its seeds]})."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    for latent, runs in by_latent.items():
        plot_mean_band(ax, runs, key, str(latent))
    curve_axes(ax, ylabel, title, log)
    bands = any(len(runs) > 1 for runs in by_latent.values())
    ax.legend(title="latent size" + (" (band: seeds' range)" if bands else ""), ncol=2, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_train_val(name, runs, path):
    latent, vae = runs[0].config.latent, runs[0].config.model == "vae"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    for split in ("train", "val"):
        plot_mean_band(ax, runs, f"{split}_mse", {"train": "training", "val": "validation"}[split])
    ylabel = "MSE per pixel" + (", one sampled z" if vae else "")  # as training measures it
    curve_axes(ax, ylabel, f"{name}, latent {latent}: training vs validation")
    ax.legend(title="band: seeds' range" if len(runs) > 1 else None)
    save_figure(fig, path)
    plt.close(fig)


def show_grid(ax, images, nrow, title=None, row_labels=None):
    """Images (N, 784) in [0, 1] as a make_grid picture on ax, optionally labelling each row."""
    pad = 2
    make_grid = import_torchvision().utils.make_grid  # imported here: torchvision takes seconds to import
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


def comparison_indices(labels, per_class=PER_CLASS):
    """The first `per_class` test images of every class, in the order of the labels."""
    return torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in range(int(labels.max()) + 1)])


def plot_comparison(name, runs, x, path, dataset=MNIST):
    rows = [x] + [reconstruct(run.model, x) for run in runs]
    labels = ["original"] + [f"latent {run.config.latent}" for run in runs]
    fig, ax = plt.subplots(figsize=(10, grid_height(len(rows), len(x), 8.6)), dpi=DPI, layout="constrained")
    show_grid(ax, torch.cat(rows), nrow=len(x), row_labels=labels,
              title=f"{name}: test {dataset.noun}s and their reconstructions"
              + (" (z = mu)" if runs[0].config.model == "vae" else ""))
    save_figure(fig, path)
    plt.close(fig)


def plot_reconstruction_grid(name, model, latent, x, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), dpi=DPI, layout="constrained")
    show_grid(axes[0], x, nrow=8, title="test images")
    show_grid(axes[1], reconstruct(model, x), nrow=8, title=f"{name} reconstructions, latent {latent}")
    save_figure(fig, path)
    plt.close(fig)


def plot_decoding_grid(name, manifold_model, sample_model, train_x, seed, path):
    """Left: the latent-2 decoder over a grid of Gaussian quantiles. Right: decoded random samples."""
    panels = [m for m in (manifold_model, sample_model) if m is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 5.8), dpi=DPI, squeeze=False,
                             layout="constrained")
    axes = list(axes[0])
    source = "N(0, I)" if panels[0].config.model == "vae" else "a Gaussian fitted to the training codes"
    if manifold_model is not None:
        mean, scale = latent_prior(manifold_model, train_x)
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, GRID_SIDE))
        # rows run from high to low second coordinate, so the picture reads like a plot
        grid = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2).to(mean.device)
        images = decode(manifold_model, mean + grid @ scale.T)
        # with latent 2 selected, random samples would be drawn from the decoder the grid already shows
        alone = "" if sample_model is not None else " (the selected size: no samples panel beside it)"
        show_grid(axes.pop(0), images, nrow=GRID_SIDE,
                  title=f"latent 2: a {GRID_SIDE} x {GRID_SIDE} grid of its 5%-95% quantiles{alone}")
    if sample_model is not None:
        images = generate(sample_model, train_x, 100, seed)
        show_grid(axes.pop(0), images, nrow=10, title=f"latent {sample_model.config.latent}: 100 random samples")
    fig.suptitle(f"{name}: decoded points of {source}")
    save_figure(fig, path)
    plt.close(fig)


def plot_latent_space(name, runs, x, labels, path, dataset=MNIST):
    """Test codes in 2-D coloured by class: latent 2 as it is, larger codes by their first two
    principal components."""
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows + 0.5), dpi=DPI, squeeze=False,
                             layout="constrained")
    for ax, run in zip(axes.flat, runs):
        codes = encode_means(run.model, x).double()
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
    vae = runs[0].config.model == "vae"
    title = f"{name}: test images in latent space" + (" (posterior means)" if vae else "")
    fig.suptitle("\n".join(textwrap.wrap(title, int(9 * fig.get_figwidth()))))  # one panel is narrow
    bar = fig.colorbar(points, ax=axes, ticks=range(len(dataset.classes)), label=dataset.class_word, shrink=0.6)
    bar.ax.set_yticklabels(dataset.classes, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


INTERPOLATION_PAIRS = [(0, 6), (1, 7), (2, 5), (3, 8), (4, 9)]
STEPS = 10


def plot_interpolation(name, model, x, labels, path, dataset=MNIST):
    """Decoded straight lines in latent space between the codes of pairs of test images of two classes."""
    first = {d: x[(labels == d).nonzero()[0, 0]] for d in range(10)}
    starts = encode_means(model, torch.stack([first[a] for a, _ in INTERPOLATION_PAIRS]))
    ends = encode_means(model, torch.stack([first[b] for _, b in INTERPOLATION_PAIRS]))
    t = torch.linspace(0, 1, STEPS, device=x.device)[None, :, None]
    path_codes = (starts[:, None] * (1 - t) + ends[:, None] * t).reshape(-1, starts.shape[1])
    images = decode(model, path_codes)
    fig, ax = plt.subplots(figsize=(8, grid_height(len(INTERPOLATION_PAIRS), STEPS, 7)), dpi=DPI, layout="constrained")
    show_grid(ax, images, nrow=STEPS, row_labels=[f"{dataset.classes[a]} to {dataset.classes[b]}"
                                                  for a, b in INTERPOLATION_PAIRS],
              title=f"{name}, latent {model.config.latent}: decoded straight lines between test {dataset.noun}s")
    save_figure(fig, path)
    plt.close(fig)


def read_selection(out, checkpoints):
    """results.json's latent-size choices, or None (saying why in one line) when it is missing or
    older than a checkpoint drawn: the figures then select by evaluate.py's rule themselves."""
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        print(f"no {path}: selecting latent sizes by evaluate.py's rule here (python evaluate.py writes it)",
              file=sys.stderr)
        return None
    if os.path.getmtime(path) < max(os.path.getmtime(c) for c in checkpoints):
        print(f"{path} is older than some checkpoints: selecting latent sizes by evaluate.py's rule here "
              "(python evaluate.py brings it up to date)", file=sys.stderr)
        return None
    try:
        with open(path) as f:
            return {name: c["selected"] for name, c in json.load(f)["selection"].items()}
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is unreadable or incomplete: run python evaluate.py to regenerate it")


def selected_latent(selection, name, seeds_by_latent, val):
    """The selected latent size of one model and variant (`name` as in results.json, e.g. "VAE (beta
    0.5)"): evaluate.py's choice when results.json has it, otherwise its rule applied here (validation
    MSE with z = mu, mean over the seeds)."""
    if selection and name in selection:
        return selection[name]
    val_mse = {latent: mean_std([measure(run.model, *val)["mse"] for run in runs])[0]
               for latent, runs in seeds_by_latent.items()}
    return select_latent(val_mse)[1]


def draw(name, seeds_by_latent, folder, splits, shown, selected, seed, dataset=MNIST):
    """Every figure of one model and variant into folder: curves over all seeds, pictures of the
    lowest seed of each latent size."""
    test_x, test_y = splits["test"]
    runs = [seeds[0] for seeds in seeds_by_latent.values()]
    vae = runs[0].config.model == "vae"
    mse = "MSE per pixel" + (", one sampled z" if vae else "")
    plot_curves(seeds_by_latent, "train_mse", mse, f"{name}: training MSE", os.path.join(folder, "train_MSE.jpg"))
    plot_curves(seeds_by_latent, "val_mse", mse, f"{name}: validation MSE", os.path.join(folder, "val_MSE.jpg"))
    if vae:
        plot_curves(seeds_by_latent, "val_kl", "KL divergence per image (nats)", f"{name}: validation KL divergence",
                    os.path.join(folder, "validation_KL_Divergence.jpg"), log=False)
    plot_comparison(name, runs, shown, os.path.join(folder, "comparison_1.jpg"), dataset)
    selected = selected if selected in seeds_by_latent else max(seeds_by_latent)
    run = seeds_by_latent[selected][0]
    for stale in glob.glob(os.path.join(folder, "train_val_latent_*_MSE.jpg")):  # an earlier selection's
        os.remove(stale)
    plot_train_val(name, seeds_by_latent[selected], os.path.join(folder, f"train_val_latent_{selected}_MSE.jpg"))
    plot_reconstruction_grid(name, run.model, selected, test_x[:64], os.path.join(folder, "reconstruction_grid.jpg"))
    manifold = seeds_by_latent[2][0].model if 2 in seeds_by_latent else None
    sampled = run.model if selected != 2 or manifold is None else None
    try:
        plot_decoding_grid(name, manifold, sampled, splits["train"][0], seed, os.path.join(folder, "decoding_grid.jpg"))
    except torch.linalg.LinAlgError:  # the Autoencoder's samples come from a Gaussian fitted to its codes
        raise UserError(f"{name}: its codes are too degenerate to fit a Gaussian to (constant or not finite), "
                        f"so no decoding grid can be drawn; retrain it (the figures before it are written)")
    plot_latent_space(name, runs, test_x, test_y, os.path.join(folder, "latent_space.jpg"), dataset)
    plot_interpolation(name, run.model, test_x, test_y, os.path.join(folder, "interpolation.jpg"), dataset)
