"""From a results.json's runs to its summary: mean and spread over seeds per model, variant and latent
size, the latent-size selection rule, and the rows of a beta sweep."""
import torch

from vaestudy.metrics import METRICS
from vaestudy.runs import group_label

TOLERANCE = 0.02  # "within 2% of the best": how much error we trade for a smaller code
BY_KEY = {m.key: m for m in METRICS}  # each metric's declaration (metrics.METRICS), by its results.json name


def mean_std(values):
    if not values or any(v is None for v in values):
        return None, None
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


def summarize(entries):
    """Per model, variant and latent size: mean and standard deviation over seeds of every metric.
    Entries differ within a group in their seed only (runs.py, checkpoints.py), so no spread mixes two settings."""
    groups = {}
    for e in entries:
        groups.setdefault((e["model"], e["variant"] != "default", e["variant"], e["latent"]), []).append(e)
    summary = []
    for (model, _, label, latent), group in sorted(groups.items()):
        group.sort(key=lambda e: e["seed"])
        row = {"model": model, "variant": label, "settings": group[0]["settings"], "latent": latent,
               "seeds": [e["seed"] for e in group]}
        for m in METRICS:
            row[m.key], row[m.key + "_std"] = mean_std([m.value(e) for e in group])
        # each seed's own value where a range or a count per run tells more than mean and spread
        row["by_seed"] = {key: [BY_KEY[key].value(e) for e in group] for key in ("test_mse", "dead_units")
                          if BY_KEY[key].value(group[0]) is not None}
        row["epochs"] = [e.get("epochs") for e in group]  # not part of a run's identity: --resume may extend one seed
        row["nll_samples"] = group[0].get("nll_samples")  # one evaluate.py call measures every run with the same k
        if "nll_precision" in group[0]:  # bf16: said where it was used, absent (fp32) elsewhere
            row["nll_precision"] = group[0]["nll_precision"]
        per_digit = [mean_std([e["test"]["mse_per_digit"][d] for e in group]) for d in range(10)]
        row["test_mse_per_digit"], row["test_mse_per_digit_std"] = map(list, zip(*per_digit))
        summary.append(row)
    return summary


def select_latent(val_mse, tolerance=TOLERANCE):
    """From {latent: validation MSE}, the lowest and the smallest latent size within tolerance of it."""
    scored = {latent: mse for latent, mse in val_mse.items() if mse is not None}
    if not scored:
        return None, None
    lowest = min(scored, key=scored.get)
    within = min(latent for latent, mse in scored.items() if mse <= scored[lowest] * (1 + tolerance))
    return lowest, within


def selections(summary, tolerance=TOLERANCE):
    """The latent-size choice within each model and variant, keyed "VAE" or "VAE (beta 0.5)"."""
    chosen = {}
    for row in summary:
        key = group_label(row["model"], row["variant"])
        if key not in chosen:
            rows = [r for r in summary if (r["model"], r["variant"]) == (row["model"], row["variant"])]
            lowest, within = select_latent({r["latent"]: r["val_mse"] for r in rows}, tolerance)
            chosen[key] = {"model": row["model"], "variant": row["variant"], "lowest_val_mse": lowest,
                           "selected": within, "val_mse": {r["latent"]: r["val_mse"] for r in rows}}
    return chosen


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
