"""Measure every checkpoint on the validation split and the official test set, and pick a latent size.

    python evaluate.py    # writes output/results.json, output/results.md and the plots of the numbers

Per model and latent size: per-pixel MSE overall and per digit (the VAE both with z = mu and with
one sampled z, as the study measured), the VAE's KL and active units, a digit classifier's accuracy
on the reconstructions, and the Frechet distance of decoded samples to the test set.
"""
import argparse
import json
import math
import os

import torch
from tqdm import tqdm

from classifier import accuracy, features, frechet_distance, load_or_train
from common import UserError, atomic_write, load_all_checkpoints, pick_device, run_cli, save_figure
from data import load_splits
from models import MODEL_NAMES, loss_terms

TOLERANCE = 0.02  # "within 2% of the best": how much error we trade for a smaller code
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active when Var_x(E[z|x]) exceeds this
N_GENERATED = 10000  # decoded samples per model for the Frechet distance, as many as test images


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


@torch.no_grad()
def encode_means(model, x, batch_size=10000):
    """The code of every image: the Autoencoder's code, or the mean of the VAE's q(z|x)."""
    return torch.cat([model.eval().encode(xb)[0] for xb in x.split(batch_size)])


@torch.no_grad()
def reconstruct(model, x, batch_size=10000):
    return torch.cat([model.eval()(xb, sample=False)[0] for xb in x.split(batch_size)])


def latent_prior(model, train_x):
    """(mean, scale) of the Gaussian that decoded samples come from: N(0, I) for the VAE, whose KL
    term pulls its codes there; for the Autoencoder a Gaussian fitted to its training codes, so
    that the two models are compared on equal terms. z = mean + scale @ eps, eps ~ N(0, I)."""
    latent, device = model.config.latent, train_x.device
    if model.config.model == "vae":
        return torch.zeros(latent, device=device), torch.eye(latent, device=device)
    codes = encode_means(model, train_x).double()
    mean, cov = codes.mean(0), torch.cov(codes.T).reshape(latent, latent)
    jitter = 1e-6 * cov.diagonal().mean() * torch.eye(latent, device=device, dtype=cov.dtype)
    return mean.float(), torch.linalg.cholesky(cov + jitter).float()


@torch.no_grad()
def generate(model, train_x, n, seed):
    mean, scale = latent_prior(model, train_x)
    eps = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed)).to(mean.device)
    return torch.cat([model.eval().decode(mean + zb @ scale.T) for zb in eps.split(10000)])


def active_units(means, threshold=ACTIVE_THRESHOLD):
    """How many latent dimensions' posterior means vary across images by more than the threshold."""
    return int((means.double().var(dim=0) > threshold).sum())


def finite_or_none(value):
    """JSON and tables get None for a non-finite number, never a NaN that looks like a result."""
    value = float(value)
    return value if math.isfinite(value) else None


def measure(model, x, labels, sample=False, seed=0):
    """Per-pixel MSE overall and for each digit 0-9, and the mean KL per image."""
    squared_error, kl = evaluate(model, x, sample=sample, seed=seed)
    mse = squared_error / x.shape[1]
    counts = torch.bincount(labels, minlength=10)
    per_digit = torch.zeros(10, device=x.device, dtype=mse.dtype).index_add_(0, labels, mse) / counts
    return {"mse": finite_or_none(mse.mean()), "mse_per_digit": [finite_or_none(v) for v in per_digit.tolist()],
            "kl": finite_or_none(kl.mean())}


def select_latent(val_mse, tolerance=TOLERANCE):
    """From {latent: validation MSE}, the lowest and the smallest latent size within tolerance of it."""
    scored = {latent: mse for latent, mse in val_mse.items() if mse is not None}
    if not scored:
        return None, None
    lowest = min(scored, key=scored.get)
    within = min(latent for latent, mse in scored.items() if mse <= scored[lowest] * (1 + tolerance))
    return lowest, within


def measure_run(ckpt, model, splits, seed, judge=None):
    """One checkpoint's results entry; `judge` is (classifier, its test-set features) or None."""
    config = ckpt["config"]
    entry = {"model": MODEL_NAMES[config["model"]], "latent": config["latent"], "seed": ckpt["args"]["seed"],
             "epochs": ckpt["epoch"], "split_seed": ckpt["split_seed"], "config": config}
    for split in ("test", "val"):
        entry[split] = measure(model, *splits[split], sample=False)
        if config["model"] == "vae":
            entry[split + "_sampled"] = measure(model, *splits[split], sample=True, seed=seed)
    test_x, test_y = splits["test"]
    if config["model"] == "vae":
        entry["active_units"] = active_units(encode_means(model, test_x))
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


METRICS = {  # summary column: how to read it from one run's entry (None where it does not apply)
    "test_mse": lambda e: e["test"]["mse"],
    "val_mse": lambda e: e["val"]["mse"],
    "test_mse_sampled": lambda e: e.get("test_sampled", {}).get("mse"),
    "test_kl": lambda e: e["test"]["kl"] if e["model"] == "VAE" else None,
    "active_units": lambda e: e.get("active_units"),
    "classifier_accuracy": lambda e: e.get("classifier_accuracy"),
    "frechet_distance": lambda e: e.get("frechet_distance"),
}


def mean_std(values):
    if not values or any(v is None for v in values):
        return None, None
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


def summarize(entries):
    """Per model and latent size: mean and standard deviation over seeds of every metric."""
    groups = {}
    for e in entries:
        groups.setdefault((e["model"], e["latent"]), []).append(e)
    summary = []
    for (model, latent), group in sorted(groups.items()):
        row = {"model": model, "latent": latent, "seeds": sorted(e["seed"] for e in group)}
        for key, pick in METRICS.items():
            row[key], row[key + "_std"] = mean_std([pick(e) for e in group])
        per_digit = [mean_std([e["test"]["mse_per_digit"][d] for e in group]) for d in range(10)]
        row["test_mse_per_digit"], row["test_mse_per_digit_std"] = map(list, zip(*per_digit))
        summary.append(row)
    return summary


def selections(summary, tolerance=TOLERANCE):
    chosen = {}
    for model in sorted({row["model"] for row in summary}):
        val = {row["latent"]: row["val_mse"] for row in summary if row["model"] == model}
        lowest, within = select_latent(val, tolerance)
        chosen[model] = {"lowest_val_mse": lowest, "selected": within, "val_mse": val}
    return chosen


def fmt(value, spread=None, digits=4):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread else "")


def markdown_tables(summary):
    """The headline table, then per-digit test MSE."""
    columns = [("test MSE", "test_mse", 4), ("test MSE, sampled z", "test_mse_sampled", 4), ("val MSE", "val_mse", 4),
               ("KL (nats)", "test_kl", 2), ("active units", "active_units", 1),
               ("classifier acc.", "classifier_accuracy", 4), ("Frechet dist.", "frechet_distance", 2)]
    columns = [c for c in columns if any(r[c[1]] is not None for r in summary)]
    head = "| model | latent | seeds | " + " | ".join(name for name, _, _ in columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for r in summary:
        cells = [r["model"], str(r["latent"]), str(len(r["seeds"]))]
        cells += [fmt(r[key], r[key + "_std"], digits) for _, key, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test MSE per digit (z = mu):", "",
              "| model | latent | " + " | ".join(str(d) for d in range(10)) + " |", "|" + "---|" * 12]
    for r in summary:
        lines.append(f"| {r['model']} | {r['latent']} | " + " | ".join(fmt(v) for v in r["test_mse_per_digit"]) + " |")
    return "\n".join(lines) + "\n"


def selection_lines(chosen, tolerance=TOLERANCE):
    return [f"{model}: lowest validation MSE at latent {c['lowest_val_mse']}; smallest latent size within "
            f"{tolerance:.0%} of it: {c['selected']} (selected)" for model, c in chosen.items()]


def plot_results(summary, floor, out):
    """The plots of the numbers: MSE per digit (both models on one y-scale), active units,
    classifier accuracy and Frechet distance against latent size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({r["model"] for r in summary})
    values = [v for r in summary for v in r["test_mse_per_digit"] if v is not None]
    ylim = (0, max(values, default=1.0) * 1.08)
    for model in models:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100, layout="constrained")
        for r in (r for r in summary if r["model"] == model):
            means = [float("nan") if v is None else v for v in r["test_mse_per_digit"]]
            spread = r["test_mse_per_digit_std"] if len(r["seeds"]) > 1 and None not in means else None
            ax.errorbar(range(10), means, yerr=spread, marker="o", capsize=3,
                        label=f"{r['latent']}" + (f" ({len(r['seeds'])} seeds)" if spread else ""))
        ax.set(xticks=range(10), ylim=ylim, xlabel="digit", ylabel="test MSE per pixel",
               title=f"{model}: reconstruction error per digit" + (" (z = mu)" if model == "VAE" else ""))
        ax.grid(alpha=0.3)
        ax.legend(title="latent size", ncol=2, fontsize=8)
        save_figure(fig, os.path.join(out, model, "class_results_MSE.jpg"))
        plt.close(fig)

    def against_latent(key, ylabel, title, path, only=None, extra=None):
        rows = [r for r in summary if r[key] is not None and (only is None or r["model"] == only)]
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100, layout="constrained")
        for model in sorted({r["model"] for r in rows}):
            mine = [r for r in rows if r["model"] == model]
            ax.errorbar([r["latent"] for r in mine], [r[key] for r in mine], yerr=[r[key + "_std"] for r in mine],
                        marker="o", capsize=3, label=model)
        if extra:
            extra(ax, rows)
        ax.set(xscale="log", xlabel="latent size", ylabel=ylabel, title=title)
        ax.set_xticks(sorted({r["latent"] for r in rows}), [str(v) for v in sorted({r["latent"] for r in rows})])
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, path)
        plt.close(fig)

    against_latent("active_units", "active units (Var of posterior mean > 0.01)", "VAE: active latent units",
                   os.path.join(out, "VAE", "active_units.jpg"), only="VAE",
                   extra=lambda ax, rows: ax.plot(*[[r["latent"] for r in rows]] * 2, "k--", lw=1, label="all units"))
    against_latent("classifier_accuracy", "accuracy on test reconstructions", "Does the code keep the digit?",
                   os.path.join(out, "classifier_accuracy.jpg"))
    against_latent("frechet_distance", "Frechet distance to test features (lower is better)",
                   "Quality of decoded samples", os.path.join(out, "frechet_distance.jpg"),
                   extra=None if floor is None else
                   lambda ax, rows: ax.axhline(floor, color="k", ls="--", lw=1, label="real validation images"))


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=None, help="folder of checkpoints to read (default: the --out folder)")
    p.add_argument("--out", default="output", help="where results and figures go (default: output)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled z and generated images (default: 0)")
    p.add_argument("--classifier", default=None,
                   help="digit classifier checkpoint, trained there on first use (default: OUT/classifier.pt)")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the classifier accuracy and Frechet distance (default: measure them)")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    runs = load_all_checkpoints(args.checkpoints or args.out, device)
    split_seeds = sorted({ckpt["split_seed"] for _, ckpt, _ in runs})
    splits_by_seed = {s: load_splits(args.data_dir, s, device, fetch=False) for s in split_seeds}
    judge, classifier_info, floor = None, None, None
    if not args.no_classifier:
        reference = splits_by_seed[split_seeds[0]]
        path = args.classifier or os.path.join(args.out, "classifier.pt")
        net, test_accuracy = load_or_train(path, reference, split_seeds[0])
        test_features = features(net, reference["test"][0])
        judge = (net, test_features)
        floor = finite_or_none(frechet_distance(features(net, reference["val"][0]), test_features))
        classifier_info = {"checkpoint": path, "test_accuracy": test_accuracy,
                           "frechet_floor_val_vs_test": floor}
    entries = []
    for path, ckpt, model in tqdm(runs, desc="evaluating", unit="checkpoint", leave=False):
        entries.append({"checkpoint": path, **measure_run(ckpt, model, splits_by_seed[ckpt["split_seed"]],
                                                          args.seed, judge)})
    summary = summarize(entries)
    chosen = selections(summary)
    rule = (f"lowest validation MSE (z = mu); 'selected' is the smallest latent size whose validation MSE "
            f"is within {TOLERANCE:.0%} of that lowest")
    results = {"selection_rule": rule, "seed": args.seed, "split_seeds": split_seeds, "classifier": classifier_info,
               "selection": chosen, "summary": summary, "runs": entries}
    tables = markdown_tables(summary)
    notes = selection_lines(chosen)
    if classifier_info:
        notes.append(f"digit classifier: {classifier_info['test_accuracy']:.2%} test accuracy; Frechet distance "
                     f"of the real validation images to the test set (the floor): {fmt(floor, digits=2)}")
    text = tables + "\n" + "\n".join(f"- {line}" for line in notes) + "\n"
    payload = json.dumps(results, indent=1, allow_nan=False)
    atomic_write(os.path.join(args.out, "results.json"), lambda f: f.write(payload), mode="w")
    atomic_write(os.path.join(args.out, "results.md"), lambda f: f.write(text), mode="w")
    plot_results(summary, floor, args.out)
    print(text)
    print(f"wrote {os.path.join(args.out, 'results.json')}, results.md and the plots of the numbers")


if __name__ == "__main__":
    run_cli(main)
