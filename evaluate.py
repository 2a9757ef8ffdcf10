"""Measure every checkpoint on the validation split and the official test set, and pick a latent size.

    python evaluate.py    # writes output/results.json, output/results.md and the plots of the numbers

Per model, variant and latent size (mean and spread over the seeds found): per-pixel MSE overall and
per digit (the VAE both with z = mu and with one sampled z, as the study measured), the VAE's KL and
active units, the Autoencoder's dead code units, a digit classifier's accuracy on the
reconstructions, and the Frechet distance of decoded samples to the test set.
"""
import argparse
import hashlib
import json
import os
from dataclasses import asdict

import torch
from tqdm import tqdm

from classifier import accuracy, features, frechet_distance, load_or_train
from common import UserError, atomic_write, check_seeds, pick_device, run_cli, save_figure
from data import N_VAL, load_splits
from metrics import active_units, dead_units, encode_means, finite_or_none, generate, log_px, measure, reconstruct
from models import MODEL_NAMES, ModelConfig
from runs import TrainConfig, group_label, load_runs, variant_flags, variant_folder, variant_label

TOLERANCE = 0.02  # "within 2% of the best": how much error we trade for a smaller code
N_GENERATED = 10000  # decoded samples per model for the Frechet distance, as many as test images
# The study's test results per latent size: Autoencoder MSE (ReLU on its code), VAE MSE with one
# sampled z, VAE KL per image (nats). Derived from the per-digit test results its authors published
# with their code (github.com/kianzohoury/VAE, output/{Autoencoder,VAE}/class_results_test.pkl),
# weighted by the test set's digit counts.
STUDY = {2: (0.0497, 0.0391, 5.14), 5: (0.0285, 0.0275, 8.49), 10: (0.0284, 0.0241, 9.76),
         20: (0.0134, 0.0235, 10.12), 50: (0.0086, 0.0242, 10.01), 100: (0.0085, 0.0256, 9.40)}


def select_latent(val_mse, tolerance=TOLERANCE):
    """From {latent: validation MSE}, the lowest and the smallest latent size within tolerance of it."""
    scored = {latent: mse for latent, mse in val_mse.items() if mse is not None}
    if not scored:
        return None, None
    lowest = min(scored, key=scored.get)
    within = min(latent for latent, mse in scored.items() if mse <= scored[lowest] * (1 + tolerance))
    return lowest, within


def defines_likelihood(run):
    """Whether the run's decoder is a normalised likelihood of its data: Bernoulli on 0/1 pixels. BCE
    on grey pixels is not (its values for a pixel do not sum to 1 over the pixel's values), and the
    squared error is a Gaussian of fixed variance 1/2, a density on pixels that are bytes."""
    return run.config.model == "vae" and run.train.recon == "bce" and run.train.binarize


def measure_run(run, splits, seed, judge=None, nll_samples=0):
    """One run's results entry; `judge` is (classifier, its test-set features) or None; the test
    NLL with nll_samples importance samples where the run defines a likelihood (0: not measured)."""
    config, train, model = run.config, run.train, run.model
    entry = {"model": MODEL_NAMES[config.model], "variant": variant_label(run.variant), "latent": config.latent,
             "seed": train.seed, "epochs": run.ckpt["epoch"], "split_seed": train.split_seed,
             "settings": dict(run.variant), "config": config.to_dict(), "train": asdict(train)}
    for split in ("test", "val"):
        entry[split] = measure(model, *splits[split], sample=False)
        if config.model == "vae":
            entry[split + "_sampled"] = measure(model, *splits[split], sample=True, seed=seed)
    test_x, test_y = splits["test"]
    if nll_samples and defines_likelihood(run):
        with tqdm(total=2 * len(test_x), desc=f"log p(x), k = {nll_samples} and 1", unit="image", leave=False) as bar:
            entry["test_nll"] = finite_or_none(-log_px(model, test_x, nll_samples, seed=seed, progress=bar).mean())
            entry["test_elbo"] = finite_or_none(log_px(model, test_x, 1, seed=seed, progress=bar).mean())
        entry["nll_samples"] = nll_samples
    codes = encode_means(model, test_x)
    if config.model == "vae":
        entry["active_units"] = active_units(codes)
    else:
        entry["dead_units"] = dead_units(codes)
    if judge is not None:
        net, test_features = judge
        reconstructions = reconstruct(model, test_x)
        entry["classifier_accuracy"] = finite_or_none(accuracy(net, reconstructions, test_y))
        try:
            samples = generate(model, splits["train"][0], N_GENERATED, seed)
            entry["frechet_distance"] = finite_or_none(frechet_distance(features(net, samples), test_features))
        except RuntimeError:  # a code distribution too degenerate to fit or factor
            entry["frechet_distance"] = None
    return entry


MEASURES_VERSION = 1  # bump when measure_run measures differently: every cached measurement is then redone


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cached(run, key, measure):
    """measure() of one run, or what was measured before under the same key, kept beside its
    checkpoint (VAE_latent_20.measured.json): adding a run to a finished study measures that run alone."""
    path = os.path.splitext(run.path)[0] + ".measured.json"
    try:
        with open(path) as f:
            saved = json.load(f)
        if saved["key"] == key:
            return saved["entry"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: measured again
    entry = measure()
    payload = json.dumps({"key": key, "entry": entry}, allow_nan=False)
    try:
        atomic_write(path, lambda f: f.write(payload), mode="w")
    except UserError:
        pass  # a folder of checkpoints that cannot be written to: measured every time instead
    return entry


METRICS = {  # summary column: how to read it from one run's entry (None where it does not apply)
    "test_mse": lambda e: e["test"]["mse"],
    "val_mse": lambda e: e["val"]["mse"],
    "test_mse_sampled": lambda e: e.get("test_sampled", {}).get("mse"),
    "test_kl": lambda e: e["test"]["kl"] if e["model"] == "VAE" else None,
    "test_nll": lambda e: e.get("test_nll"),
    "test_elbo": lambda e: e.get("test_elbo"),
    "active_units": lambda e: e.get("active_units"),
    "dead_units": lambda e: e.get("dead_units"),
    "classifier_accuracy": lambda e: e.get("classifier_accuracy"),
    "frechet_distance": lambda e: e.get("frechet_distance"),
}


def mean_std(values):
    if not values or any(v is None for v in values):
        return None, None
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


def summarize(entries):
    """Per model, variant and latent size: mean and standard deviation over seeds of every metric.
    Entries differ within a group in their seed only (runs.py), so no spread mixes two settings."""
    groups = {}
    for e in entries:
        groups.setdefault((e["model"], e["variant"] != "default", e["variant"], e["latent"]), []).append(e)
    summary = []
    for (model, _, label, latent), group in sorted(groups.items()):
        group.sort(key=lambda e: e["seed"])
        row = {"model": model, "variant": label, "settings": group[0]["settings"], "latent": latent,
               "seeds": [e["seed"] for e in group]}
        for key, pick in METRICS.items():
            row[key], row[key + "_std"] = mean_std([pick(e) for e in group])
        # each seed's own value where a range or a count per run tells more than mean and spread
        row["by_seed"] = {key: [METRICS[key](e) for e in group] for key in ("test_mse", "dead_units")
                          if METRICS[key](group[0]) is not None}
        row["epochs"] = [e.get("epochs") for e in group]  # not part of a run's identity: --resume may extend one seed
        row["nll_samples"] = group[0].get("nll_samples")  # one evaluate.py call measures every run with the same k
        per_digit = [mean_std([e["test"]["mse_per_digit"][d] for e in group]) for d in range(10)]
        row["test_mse_per_digit"], row["test_mse_per_digit_std"] = map(list, zip(*per_digit))
        summary.append(row)
    return summary


def selections(summary, tolerance=TOLERANCE):
    """The latent-size choice within each model and variant, keyed "VAE" or "VAE (beta 0.5)"."""
    chosen = {}
    for row in summary:
        key = group_label(row["model"], row["variant"])
        if key not in chosen:
            val = {r["latent"]: r["val_mse"] for r in summary if (r["model"], r["variant"]) == (row["model"], row["variant"])}
            lowest, within = select_latent(val, tolerance)
            chosen[key] = {"model": row["model"], "variant": row["variant"], "lowest_val_mse": lowest,
                           "selected": within, "val_mse": val}
    return chosen


def fmt(value, spread=None, digits=4):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread else "")


def markdown_tables(summary):
    """The headline table, then per-digit test MSE."""
    columns = [("test MSE", "test_mse", 4), ("test MSE, sampled z", "test_mse_sampled", 4), ("val MSE", "val_mse", 4),
               ("KL (nats)", "test_kl", 2), ("test NLL (nats)", "test_nll", 2), ("test ELBO (nats)", "test_elbo", 2),
               ("active units", "active_units", 1), ("dead units", "dead_units", 1),
               ("classifier acc.", "classifier_accuracy", 4), ("Frechet dist.", "frechet_distance", 2)]
    columns = [c for c in columns if any(r.get(c[1]) is not None for r in summary)]  # results.json may predate one
    # a variant column only where there is more than one variant: the study's table keeps its shape
    keys = ["model"] + (["variant"] if len({r["variant"] for r in summary}) > 1 else []) + ["latent"]
    lines = ["| " + " | ".join(keys + ["seeds"] + [name for name, _, _ in columns]) + " |",
             "|" + "---|" * (len(keys) + 1 + len(columns))]
    for r in summary:
        cells = [str(r[k]) for k in keys] + [str(len(r["seeds"]))]
        cells += [fmt(r.get(key), r.get(key + "_std"), digits) for _, key, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test MSE per digit (z = mu):", "",
              "| " + " | ".join(keys + [str(d) for d in range(10)]) + " |", "|" + "---|" * (len(keys) + 10)]
    for r in summary:
        lines.append("| " + " | ".join([str(r[k]) for k in keys] + [fmt(v) for v in r["test_mse_per_digit"]]) + " |")
    return "\n".join(lines) + "\n"


def versus(value, runs):
    """Where a number lies against a set of runs' values, in words."""
    runs = [v for v in runs if v is not None]
    if not runs:
        return "n/a"
    return "below all" if value < min(runs) else "above all" if value > max(runs) else "within"


def study_table(summary):
    """The study's published numbers beside this repository's default runs and its study-ReLU
    Autoencoder, per latent size, and where the study's Autoencoder lies against the ReLU runs."""
    def row(model, settings, latent):
        return next((r for r in summary if (r["model"], r["settings"], r["latent"]) == (model, settings, latent)), None)

    def cell(r, key, digits=4):
        return "n/a" if r is None else fmt(r[key], r[key + "_std"], digits)

    lines = ["| latent | study AE | this AE, study's ReLU code (seeds) | per seed | study AE vs these runs "
             "| dead units per seed | this AE, linear code | study VAE (sampled z) | this VAE (sampled z) "
             "| study VAE KL | this VAE KL |", "|" + "---|" * 11]
    for latent, (study_ae, study_vae, study_kl) in STUDY.items():
        relu, linear, vae = (row("Autoencoder", {"code_relu": True}, latent), row("Autoencoder", {}, latent),
                             row("VAE", {}, latent))
        if all(r is None for r in (relu, linear, vae)):
            continue
        relu_cells = ["n/a"] * 4 if relu is None else [
            f"{cell(relu, 'test_mse')} ({len(relu['seeds'])})", ", ".join(fmt(v) for v in relu["by_seed"]["test_mse"]),
            versus(study_ae, relu["by_seed"]["test_mse"]),
            ", ".join(str(v) for v in relu["by_seed"]["dead_units"]) + f" of {latent}"]
        cells = [str(latent), fmt(study_ae), *relu_cells, cell(linear, "test_mse"), fmt(study_vae),
                 cell(vae, "test_mse_sampled"), fmt(study_kl, digits=2), cell(vae, "test_kl", 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def selection_lines(chosen, tolerance=TOLERANCE):
    return [f"{name}: lowest validation MSE at latent {c['lowest_val_mse']}; smallest latent size within "
            f"{tolerance:.0%} of it: {c['selected']} (selected)" for name, c in chosen.items()]


def beta_of(row):
    return float(row["settings"].get("beta", 1.0))


def beta_sweep(summary):
    """The VAE rows that differ from one another in beta alone, with the settings they share, for
    the rate-distortion figure: the study's settings where they have two betas or more, else the
    first settings that do. ([], None) when no settings have two betas."""
    sweeps = {}
    for r in summary:
        if r["model"] == "VAE" and r["test_kl"] is not None:
            shared = {k: v for k, v in r["settings"].items() if k != "beta"}
            sweeps.setdefault(repr(shared), (shared, []))[1].append(r)
    usable = [(shared, rows) for shared, rows in sweeps.values() if len({beta_of(r) for r in rows}) > 1]
    usable.sort(key=lambda s: s[0] != {})
    return (usable[0][1], usable[0][0]) if usable else ([], None)


def rate_distortion_table(summary):
    """The beta sweep's rows (beta_sweep) as rate, distortion and active units, by beta then latent
    size; "" when there is no sweep."""
    rows, _ = beta_sweep(summary)
    lines = ["| beta | latent | seeds | test KL (nats, rate) | test MSE, z = mu (distortion) | active units |",
             "|" + "---|" * 6]
    for r in sorted(rows, key=lambda r: (beta_of(r), r["latent"])):
        lines.append(f"| {beta_of(r):g} | {r['latent']} | {len(r['seeds'])} | {fmt(r['test_kl'], r['test_kl_std'], 2)} "
                     f"| {fmt(r['test_mse'], r['test_mse_std'])} | {fmt(r['active_units'], r['active_units_std'], 1)} |")
    return "\n".join(lines) + "\n" if rows else ""


# Published test NLLs (nats per image) set beside this repository's (likelihood_table): model,
# source, data, architecture (encoder widths, the latent size last; decoders mirror them),
# training, importance samples k, NLL.
BURDA = "Burda et al. 2016, Table 1"
LITERATURE = (
    ("VAE", BURDA, "dynamic binarization", "784-200-200-50, tanh", "3,280 passes", 5000, 86.76),
    ("IWAE, K = 5", BURDA, "dynamic binarization", "784-200-200-50, tanh", "3,280 passes", 5000, 85.54),
    ("IWAE, K = 50", BURDA, "dynamic binarization", "784-200-200-50, tanh", "3,280 passes", 5000, 84.78),
    # github.com/clementchadebec/benchmark_VAE, examples/scripts/reproducibility (vae.py and its
    # README, "89.78 (0.01)", against 89.9 in Rezende and Mohamed 2015): Larochelle and Murray's
    # fixed binarization of other splits, not the dynamic protocol's data; its 500 epochs as issue
    # 16 of this project gives them (the VAE's training config is not among those scripts)
    ("VAE", "pythae's reproduction", "static binarization", "784-400-40, ReLU", "500 epochs", 200, 89.78),
)
REFERENCE_NLL = LITERATURE[0][-1]  # the one-layer VAE of Burda et al.: what a plain VAE should reach


def likelihood_table(summary):
    """The runs with a test NLL beside the published ones (LITERATURE), each with its data,
    architecture, training and k, and its distance to Burda et al.'s VAE; "" when no run has one."""
    rows = [r for r in summary if r.get("test_nll") is not None]
    lines = ["| model | source | data | architecture | training | k | test NLL (nats) | vs Burda et al.'s VAE |",
             "|" + "---|" * 8]
    for name, source, data, widths, training, k, nll in LITERATURE:
        lines.append(f"| {name} | {source} | {data} | {widths} | {training} | {k} | {nll:.2f} | {nll - REFERENCE_NLL:+.2f} |")
    for r in rows:
        settings = r["settings"]
        iw = settings.get("iw_samples", TrainConfig.iw_samples)
        widths = "-".join(map(str, [ModelConfig.input_dim, *settings.get("hidden", ModelConfig.hidden), r["latent"]]))
        epochs = "/".join(str(e) for e in sorted(set(r["epochs"])))
        seeds = f"{len(r['seeds'])} seed" + ("s" if len(r["seeds"]) > 1 else "")
        lines.append(f"| {'VAE' if iw == 1 else f'IWAE, K = {iw}'} | this repository, `{variant_flags(settings)}` "
                     f"| dynamic binarization | {widths}, ReLU "
                     f"| {epochs} epochs, batch {settings.get('batch_size', TrainConfig.batch_size)} "
                     f"| {r['nll_samples']} | {fmt(r['test_nll'], r['test_nll_std'], 2)} ({seeds}) "
                     f"| {r['test_nll'] - REFERENCE_NLL:+.2f} |")
    return "\n".join(lines) + "\n" if rows else ""


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
        ax_b.errorbar([r["latent"] for r in line], [r["test_mse"] for r in line], yerr=[r["test_mse_std"] for r in line],
                      marker="o", capsize=3, color=colours[beta], label=f"VAE, β {beta:g}")
        for r in line:
            if r["active_units"] is not None:
                ax_b.annotate(f"{r['active_units']:.0f}", (r["latent"], r["test_mse"]), fontsize=8,
                              textcoords="offset points", xytext=(0, 6), ha="center", color=colours[beta])
    latents = sorted({r["latent"] for r in rows})
    ax_b.set(xscale="log", xlabel="latent size", ylabel="test MSE per pixel (z = mu)",
             title="(b) error against latent size; numbers: active units")
    ax_b.set_xticks(latents, [str(v) for v in latents])
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


def plot_results(summary, floor, out):
    """The plots of the numbers: MSE per digit for each model and variant (all on one y-scale), and
    against latent size with a line per model and variant: active units, dead units, classifier
    accuracy, Frechet distance; and the rate-distortion figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = {name: kind for kind, name in MODEL_NAMES.items()}
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
        ax.set(xticks=range(10), ylim=ylim, xlabel="digit", ylabel="test MSE per pixel",
               title=f"{group_label(model, label)}: reconstruction error per digit" + (" (z = mu)" if model == "VAE" else ""))
        ax.grid(alpha=0.3)
        ax.legend(title="latent size", ncol=2, fontsize=8)
        settings = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rows[0]["settings"].items())
        save_figure(fig, os.path.join(variant_folder(out, kinds[model], settings), "class_results_MSE.jpg"))
        plt.close(fig)

    def against_latent(key, ylabel, title, path, only=None, extra=None):
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
        ax.set(xscale="log", xlabel="latent size", ylabel=ylabel, title=title)
        ax.set_xticks(latents, [str(v) for v in latents])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, path)
        plt.close(fig)

    all_units = lambda ax, latents: ax.plot(latents, latents, "k--", lw=1, label="all units")
    against_latent("active_units", "active units (Var of posterior mean > 0.01)", "VAE: active latent units",
                   os.path.join(out, "VAE", "active_units.jpg"), only="VAE", extra=all_units)
    against_latent("dead_units", "dead units (exactly 0 for >= 99% of test images)", "Autoencoder: dead code units",
                   os.path.join(out, "Autoencoder", "dead_units.jpg"), only="Autoencoder", extra=all_units)
    against_latent("classifier_accuracy", "accuracy on test reconstructions", "Does the code keep the digit?",
                   os.path.join(out, "classifier_accuracy.jpg"))
    against_latent("frechet_distance", "Frechet distance to test features (lower is better)",
                   "Quality of decoded samples", os.path.join(out, "frechet_distance.jpg"),
                   extra=None if floor is None else
                   lambda ax, latents: ax.axhline(floor, color="k", ls="--", lw=1, label="real validation images"))
    plot_rate_distortion(summary, os.path.join(out, "VAE", "rate_distortion.jpg"))


def report(results):
    """results.md: the tables, the selections and the extra tables, all from results.json's contents."""
    summary, info = results["summary"], results["classifier"]
    notes = selection_lines(results["selection"])
    if info:
        notes.append(f"digit classifier: {info['test_accuracy']:.2%} test accuracy; Frechet distance of the real "
                     f"validation images to the test set (the floor): {fmt(info['frechet_floor_val_vs_test'], digits=2)} "
                     f"({N_VAL:,} validation images, fewer than the {N_GENERATED:,} samples per model: a larger "
                     "finite-sample bias, so a floor set a little high)")
    text = markdown_tables(summary) + "\n" + "\n".join(f"- {line}" for line in notes) + "\n"
    for heading, table in (("Against the study's published test results (evaluate.STUDY)", study_table(summary)),
                           ("Rate and distortion of the VAE as beta changes", rate_distortion_table(summary)),
                           ("Test NLL beside published models (evaluate.LITERATURE)", likelihood_table(summary))):
        if table:
            text += f"\n{heading}:\n\n{table}"
    return text


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=None, help="folder of checkpoints to read (default: the --out folder)")
    p.add_argument("--out", default="output", help="where results and figures go (default: output)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled z and generated images (default: 0)")
    p.add_argument("--classifier", default=None,
                   help="digit classifier checkpoint, trained there on first use (default: OUT/classifier.pt)")
    p.add_argument("--nll-samples", type=int, default=5000,
                   help="importance samples per test image for the test NLL of runs whose decoder is a likelihood "
                        "of their data (--recon bce --binarize); 0 skips it (default: 5000, as in the literature)")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the classifier accuracy and Frechet distance (default: measure them)")
    args = p.parse_args(argv)
    if args.nll_samples < 0:
        p.error("--nll-samples must not be negative")
    check_seeds(seed=args.seed)
    return args


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    runs = load_runs(args.checkpoints or args.out, device)
    split_seeds = sorted({run.train.split_seed for run in runs})
    loaded = {}

    def splits(split_seed, binarize=False):  # the images runs are measured on, each set loaded once
        if (split_seed, binarize) not in loaded:
            loaded[split_seed, binarize] = load_splits(args.data_dir, split_seed, device, fetch=False, binarize=binarize)
        return loaded[split_seed, binarize]

    judge, classifier_info, floor = None, None, None
    if not args.no_classifier:
        reference = splits(split_seeds[0])
        path = args.classifier or os.path.join(args.out, "classifier.pt")
        net, test_accuracy = load_or_train(path, reference, split_seeds[0])
        test_features = features(net, reference["test"][0])
        judge = (net, test_features)
        floor = finite_or_none(frechet_distance(features(net, reference["val"][0]), test_features))
        classifier_info = {"checkpoint": path, "test_accuracy": test_accuracy,
                           "frechet_floor_val_vs_test": floor}
    classifier_sha = sha256(classifier_info["checkpoint"]) if classifier_info else None
    entries = []
    for run in tqdm(runs, desc="evaluating", unit="checkpoint", leave=False):
        key = {"measures": MEASURES_VERSION, "checkpoint_sha256": sha256(run.path), "seed": args.seed,
               "nll_samples": args.nll_samples if defines_likelihood(run) else None, "classifier_sha256": classifier_sha}
        entry = cached(run, key, lambda: measure_run(run, splits(run.train.split_seed, run.train.binarize), args.seed,
                                                     judge, args.nll_samples))
        entries.append({"checkpoint": run.path, **entry})
    summary = summarize(entries)
    chosen = selections(summary)
    rule = (f"within each model and variant, lowest validation MSE (z = mu); 'selected' is the smallest latent "
            f"size whose validation MSE is within {TOLERANCE:.0%} of that lowest")
    results = {"selection_rule": rule, "seed": args.seed, "split_seeds": split_seeds, "classifier": classifier_info,
               "selection": chosen, "summary": summary, "runs": entries}
    text = report(results)
    payload = json.dumps(results, indent=1, allow_nan=False)
    atomic_write(os.path.join(args.out, "results.json"), lambda f: f.write(payload), mode="w")
    atomic_write(os.path.join(args.out, "results.md"), lambda f: f.write(text), mode="w")
    plot_results(summary, floor, args.out)
    print(text)
    print(f"wrote {os.path.join(args.out, 'results.json')}, results.md and the plots of the numbers")


if __name__ == "__main__":
    run_cli(main)
