"""The plots of the numbers in a results.json (stats.py computes them), and the axis styles that
every figure shares, visualize.py's included."""
import math
import os

from vaestudy.datasets import MNIST
from vaestudy.files import save_figure
from vaestudy.metrics import METRICS
from vaestudy.runs import group_label, variant_folder, variant_label
from vaestudy.stats import beta_of, beta_sweep


def latent_axis(ax, latents):
    """A log latent-size axis ticked at the sizes trained, and nowhere else."""
    from matplotlib.ticker import NullLocator
    ax.set_xscale("log")
    ax.set_xticks(latents, [str(v) for v in latents])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("latent size")


def integer_axis(axis):
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True))


def plain_log_axis(axis):
    """A log axis labelled 0.02, 0.05, 0.1 rather than 2x10^-2."""
    from matplotlib.ticker import FuncFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    first_digit = lambda v: round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if first_digit(v) in (2, 5) else ""))


def settings_tuple(settings):
    """A row's settings (read back from JSON) as the ((name, value), ...) of runs.variant."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items())


def plot_rate_distortion(summary, path):
    """(a) distortion against rate, one point per VAE configuration of a beta sweep (beta_sweep);
    (b) test MSE against latent size for each of its betas with several sizes, each point annotated
    with its active units. Drawn when there are at least two betas to compare."""
    import matplotlib.pyplot as plt
    rows, shared = beta_sweep(summary)
    if not rows:
        return
    betas = sorted({beta_of(r) for r in rows})
    colours = dict(zip(betas, plt.cm.viridis([i / max(1, len(betas) - 1) for i in range(len(betas))])))
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(13, 5), dpi=100, layout="constrained")
    for r in rows:
        beta = beta_of(r)
        ax_a.errorbar(r["test_kl"], r["test_mse"], xerr=r["test_kl_std"] or None, yerr=r["test_mse_std"] or None,
                      marker="o", color=colours[beta], capsize=2)
        ax_a.annotate(f"β {beta:g}, latent {r['latent']}", (r["test_kl"], r["test_mse"]), fontsize=7,
                      textcoords="offset points", xytext=(4, 3))
    for beta in betas:
        ax_a.plot([], [], "o", color=colours[beta], label=f"VAE, β {beta:g}")
    ae = [r for r in summary if r["model"] == "Autoencoder" and r["settings"] == shared and r["latent"] == 20]
    if ae:
        ax_a.axhline(ae[0]["test_mse"], color="k", ls="--", lw=1, label="Autoencoder, latent 20 (no KL term)")
    ax_a.set(xlabel="rate: test KL per image (nats)", ylabel="distortion: test MSE per pixel (z = mu)",
             title="(a) rate against distortion, one point per configuration")
    ax_a.legend(fontsize=8)
    lines = [sorted((r for r in rows if beta_of(r) == beta), key=lambda r: r["latent"]) for beta in betas]
    for beta, line in zip(betas, lines):
        if len(line) < 2:
            continue
        ax_b.errorbar([r["latent"] for r in line], [r["test_mse"] for r in line],
                      yerr=[r["test_mse_std"] for r in line],
                      marker="o", capsize=3, color=colours[beta], label=f"VAE, β {beta:g}")
        for r in line:
            if r["active_units"] is not None:
                ax_b.annotate(f"{r['active_units']:.0f}", (r["latent"], r["test_mse"]), fontsize=8,
                              textcoords="offset points", xytext=(0, 6), ha="center", color=colours[beta])
    latent_axis(ax_b, sorted({r["latent"] for r in rows}))
    ax_b.set(ylabel="test MSE per pixel (z = mu)", title="(b) error against latent size; numbers: active units")
    if any(len(line) > 1 for line in lines):
        ax_b.legend(fontsize=8)
    else:
        ax_b.text(0.5, 0.5, "no β has runs at several latent sizes yet", transform=ax_b.transAxes, ha="center")
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
    others = f", all with {variant_label(tuple(shared.items()))}" if shared else ""
    fig.suptitle(f"VAE: how the KL weight β trades rate for distortion (variants compared{others})")
    save_figure(fig, path)
    plt.close(fig)


def plot_results(summary, floor, out, dataset=MNIST):
    """The plots of the numbers: MSE per class (digit) for each model and variant (all on one y-scale), and
    against latent size with a line per model and variant: active units, dead units, classifier
    accuracy, Frechet distance; and the rate-distortion figure. Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    groups = {}
    for r in summary:
        groups.setdefault((r["model"], r["variant"]), []).append(r)
    values = [v for r in summary for v in r["test_mse_per_digit"] if v is not None]
    ylim = (0, max(values, default=1.0) * 1.08)
    for (model, label), rows in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100, layout="constrained")
        for r in rows:
            means = [float("nan") if v is None else v for v in r["test_mse_per_digit"]]
            spread = r["test_mse_per_digit_std"] if len(r["seeds"]) > 1 and None not in means else None
            ax.errorbar(range(10), means, yerr=spread, marker="o", capsize=3,
                        label=f"{r['latent']}" + (f" ({len(r['seeds'])} seeds)" if spread else ""))
        ax.set(ylim=ylim, xlabel=dataset.class_word, ylabel="test MSE per pixel",
               title=f"{group_label(model, label)}: reconstruction error per {dataset.class_word}"
               + (" (z = mu)" if model == "VAE" else ""))
        long_names = max(map(len, dataset.classes)) > 2
        ax.set_xticks(range(len(dataset.classes)), dataset.classes, rotation=30 if long_names else 0,
                      ha="right" if long_names else "center", fontsize=8 if long_names else None)
        ax.grid(alpha=0.3)
        ax.legend(title="latent size", ncol=2, fontsize=8)
        written.append(os.path.join(variant_folder(out, model, settings_tuple(rows[0]["settings"])),
                                    "class_results_MSE.jpg"))
        save_figure(fig, written[-1])
        plt.close(fig)

    def against_latent(key, ylabel, title, path, only=None, extra=None, integer=False):
        lines = {g: [r for r in rows if r[key] is not None] for g, rows in groups.items() if only in (None, g[0])}
        lines = {g: rows for g, rows in lines.items() if rows}
        if not lines:
            return
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100, layout="constrained")
        for (model, label), rows in lines.items():
            ax.errorbar([r["latent"] for r in rows], [r[key] for r in rows], yerr=[r[key + "_std"] for r in rows],
                        marker="o", capsize=3, label=group_label(model, label))
        latents = sorted({r["latent"] for rows in lines.values() for r in rows})
        if extra:
            extra(ax, latents)
        latent_axis(ax, latents)
        if integer:
            integer_axis(ax.yaxis)
        ax.set(ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, path)
        written.append(path)
        plt.close(fig)

    all_units = lambda ax, latents: ax.plot(latents, latents, "k--", lw=1, label="all units")
    references = {"active_units": all_units, "dead_units": all_units,  # what a reader compares the line with
                  "frechet_distance": None if floor is None else
                  lambda ax, latents: ax.axhline(floor, color="k", ls="--", lw=1, label="real validation images")}
    for m in METRICS:
        if m.plot:  # a metric of one model's runs goes in that model's folder, the others at the top
            only = {"vae": "VAE", "ae": "Autoencoder"}.get(m.runs)
            path = os.path.join(out, only, f"{m.key}.jpg") if only else os.path.join(out, f"{m.key}.jpg")
            against_latent(m.key, *m.plot, path, only=only, extra=references.get(m.key), integer=m.integer)
    if beta_sweep(summary)[0]:
        plot_rate_distortion(summary, os.path.join(out, "VAE", "rate_distortion.jpg"))
        written.append(os.path.join(out, "VAE", "rate_distortion.jpg"))
    return written
