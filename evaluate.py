"""Measure every checkpoint on the validation split and the official test set, and pick a latent size.

    python evaluate.py    # writes output/results.json, output/results.md, output/*/class_results_MSE.jpg
"""
import argparse
import json
import math
import os

import torch
from tqdm import tqdm

from common import UserError, atomic_write, load_all_checkpoints, pick_device, run_cli, save_figure
from data import load_splits
from models import MODEL_NAMES, loss_terms

TOLERANCE = 0.02  # "within 2% of the best": how much error we trade for a smaller code


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


def finite_or_none(value):
    """JSON and tables get None for a non-finite number, never a NaN that looks like a result."""
    value = float(value)
    return value if math.isfinite(value) else None


def measure(model, x, labels, sample=False, seed=0):
    """Per-pixel MSE overall and for each digit 0-9, and the mean KL per image."""
    squared_error, kl = evaluate(model, x, sample=sample, seed=seed)
    mse = squared_error / x.shape[1]
    counts = torch.bincount(labels, minlength=10)
    per_digit = torch.zeros(10, device=x.device).index_add_(0, labels, mse) / counts
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


def measure_runs(runs, data_dir, device, seed):
    """One results entry per checkpoint: test and validation, z = mu and (VAE) one sampled z."""
    splits_by_seed = {seed: load_splits(data_dir, seed, device, fetch=False)
                      for seed in sorted({ckpt["split_seed"] for _, ckpt, _ in runs})}
    entries = []
    for path, ckpt, model in tqdm(runs, desc="evaluating", unit="checkpoint", leave=False):
        split_seed = ckpt["split_seed"]
        splits = splits_by_seed[split_seed]
        config = ckpt["config"]
        entry = {"model": MODEL_NAMES[config["model"]], "latent": config["latent"], "seed": ckpt["args"]["seed"],
                 "checkpoint": path, "epochs": ckpt["epoch"], "split_seed": split_seed, "config": config}
        for split in ("test", "val"):
            entry[split] = measure(model, *splits[split], sample=False)
            if config["model"] == "vae":
                entry[split + "_sampled"] = measure(model, *splits[split], sample=True, seed=seed)
        entries.append(entry)
    return entries


def summarize(entries):
    """Per model and latent size: mean and standard deviation over seeds of the headline numbers."""
    groups = {}
    for e in entries:
        groups.setdefault((e["model"], e["latent"]), []).append(e)
    summary = []
    for (model, latent), group in groups.items():
        row = {"model": model, "latent": latent, "seeds": sorted(e["seed"] for e in group)}
        for key, pick in [("test_mse", lambda e: e["test"]["mse"]), ("val_mse", lambda e: e["val"]["mse"]),
                          ("test_mse_sampled", lambda e: e.get("test_sampled", {}).get("mse")),
                          ("test_kl", lambda e: e["test"]["kl"] if e["model"] == "VAE" else None)]:
            values = [pick(e) for e in group]
            if any(v is None for v in values):
                row[key] = row[key + "_std"] = None
                continue
            t = torch.tensor(values, dtype=torch.float64)
            row[key], row[key + "_std"] = t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)
        digits = torch.tensor([e["test"]["mse_per_digit"] for e in group if None not in e["test"]["mse_per_digit"]],
                              dtype=torch.float64)
        row["test_mse_per_digit"] = digits.mean(0).tolist() if len(digits) else [None] * 10
        row["test_mse_per_digit_std"] = digits.std(0).tolist() if len(digits) > 1 else [0.0] * 10
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


def markdown_table(summary):
    head = ("| model | latent | seeds | test MSE | test MSE, sampled z | val MSE | KL (nats) | "
            + " | ".join(f"digit {d}" for d in range(10)) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary:
        cells = [r["model"], str(r["latent"]), str(len(r["seeds"])), fmt(r["test_mse"], r["test_mse_std"]),
                 fmt(r["test_mse_sampled"], r["test_mse_sampled_std"]), fmt(r["val_mse"], r["val_mse_std"]),
                 fmt(r["test_kl"], r["test_kl_std"], 2)] + [fmt(v) for v in r["test_mse_per_digit"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_lines(chosen, tolerance=TOLERANCE):
    return [f"{model}: lowest validation MSE at latent {c['lowest_val_mse']}; smallest latent size within "
            f"{tolerance:.0%} of it: {c['selected']} (selected)" for model, c in chosen.items()]


def plot_class_results(summary, out):
    """MSE per digit, one series per latent size; both models on the same y-axis for comparison."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = [v for r in summary for v in r["test_mse_per_digit"] if v is not None]
    if not values:
        return []
    ylim = (0, max(values) * 1.08)
    written = []
    for model in sorted({r["model"] for r in summary}):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for r in (r for r in summary if r["model"] == model):
            means = [float("nan") if v is None else v for v in r["test_mse_per_digit"]]
            ax.errorbar(range(10), means, yerr=r["test_mse_per_digit_std"] if len(r["seeds"]) > 1 else None,
                        marker="o", capsize=3, label=str(r['latent']))
        ax.set(xticks=range(10), ylim=ylim, xlabel="digit", ylabel="test MSE per pixel",
               title=f"{model}: reconstruction error per digit" + (" (z = mu)" if model == "VAE" else ""))
        ax.grid(alpha=0.3)
        ax.legend(title="latent size", ncol=2, fontsize=8)
        path = os.path.join(out, model, "class_results_MSE.jpg")
        save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default=None, help="folder of checkpoints to read (default: the --out folder)")
    p.add_argument("--out", default="output", help="where results and figures go (default: output)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the VAE's sampled z (default: 0)")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    runs = load_all_checkpoints(args.checkpoints or args.out, device)
    entries = measure_runs(runs, args.data_dir, device, args.seed)
    summary = summarize(entries)
    chosen = selections(summary)
    rule = (f"lowest validation MSE (z = mu); 'selected' is the smallest latent size whose validation MSE "
            f"is within {TOLERANCE:.0%} of that lowest")
    results = {"selection_rule": rule, "sample_seed": args.seed,
               "split_seeds": sorted({e["split_seed"] for e in entries}),
               "selection": chosen, "summary": summary, "runs": entries}
    table = markdown_table(summary)
    text = table + "\n" + "\n".join(f"- {line}" for line in selection_lines(chosen)) + "\n"
    payload = json.dumps(results, indent=1, allow_nan=False)
    atomic_write(os.path.join(args.out, "results.json"), lambda f: f.write(payload), mode="w")
    atomic_write(os.path.join(args.out, "results.md"), lambda f: f.write(text), mode="w")
    plot_class_results(summary, args.out)
    print(table)
    print("\n".join(selection_lines(chosen)))
    print(f"wrote {os.path.join(args.out, 'results.json')}, results.md and class_results_MSE.jpg per model")


if __name__ == "__main__":
    run_cli(main)
