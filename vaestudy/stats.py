"""From a results.json's runs to its summary: mean and spread over seeds per model, variant and latent
size, the latent-size selection rule, the tests that compare configurations, and the rows of a beta
sweep."""
import itertools
import math

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
        # every seed's own value of every metric, so that a comparison can test them (welch) and
        # a selection can be made seed by seed
        row["by_seed"] = {m.key: [m.value(e) for e in group] for m in METRICS if m.value(group[0]) is not None}
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


def selection_shares(rows, tolerance=TOLERANCE):
    """How stable the selection is over the seeds: the latent size the rule picks for every combination
    of one seed per latent size (3 seeds at 6 sizes: 3^6 = 729 combinations), as ([[latent, count], ...]
    most chosen first, the number of combinations). Seeds are independent runs, so no seed of one size
    belongs with a seed of the same number at another; every pairing is counted alike."""
    values = [[v for v in r.get("by_seed", {}).get("val_mse", []) if v is not None] for r in rows]
    if not rows or any(not v for v in values):  # a results.json written before every metric was kept per seed
        return [], 0
    latents, counts = [r["latent"] for r in rows], {}
    for combination in itertools.product(*values):
        chosen = select_latent(dict(zip(latents, combination)), tolerance)[1]
        counts[chosen] = counts.get(chosen, 0) + 1
    shares = sorted([[latent, n] for latent, n in counts.items()], key=lambda c: (-c[1], c[0]))
    return shares, math.prod(map(len, values))


def selections(summary, tolerance=TOLERANCE):
    """The latent-size choice within each model and variant, keyed "VAE" or "VAE (beta 0.5)": on the
    seeds' mean validation MSE (the headline), and its share over every combination of one seed per
    size (selection_shares)."""
    chosen = {}
    for row in summary:
        key = group_label(row["model"], row["variant"])
        if key not in chosen:
            rows = [r for r in summary if (r["model"], r["variant"]) == (row["model"], row["variant"])]
            lowest, within = select_latent({r["latent"]: r["val_mse"] for r in rows}, tolerance)
            shares, combinations = selection_shares(rows, tolerance)
            chosen[key] = {"model": row["model"], "variant": row["variant"], "lowest_val_mse": lowest,
                           "selected": within, "val_mse": {r["latent"]: r["val_mse"] for r in rows},
                           # [[latent, combinations choosing it], ...]: lists survive JSON as they are
                           "combination_counts": shares, "combinations": combinations}
    return chosen


def student_t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom (df > 0, not necessarily whole), from the
    regularized incomplete beta function: P(|T| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2, 0.5)
    return 1 - tail if t > 0 else tail


def incomplete_beta(x, a, b):
    """I_x(a, b) by its continued fraction (modified Lentz), on the side where it converges fast."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1 - incomplete_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1 + numerator * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1 - c * d) < 1e-15:
            break
    return front * (f - 1)


def student_t_quantile(p, df):
    """The t with P(T <= t) = p, by bisection of student_t_cdf."""
    low, high = -1e3, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def welch(a, b, level=0.95):
    """Welch's unequal-variance t-test of mean(b) - mean(a): {difference, t, df, p (two-sided),
    low, high (the difference's `level` interval), n_a, n_b}; None where a side has fewer than two
    values or both have no spread."""
    a, b = [float(v) for v in a if v is not None], [float(v) for v in b if v is not None]
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((v - mean_a) ** 2 for v in a) / (len(a) - 1)
    var_b = sum((v - mean_b) ** 2 for v in b) / (len(b) - 1)
    se2 = var_a / len(a) + var_b / len(b)
    if se2 == 0:
        return None
    df = se2 ** 2 / ((var_a / len(a)) ** 2 / (len(a) - 1) + (var_b / len(b)) ** 2 / (len(b) - 1))
    difference, se = mean_b - mean_a, math.sqrt(se2)
    t = difference / se
    half = student_t_quantile(0.5 + level / 2, df) * se
    return {"difference": difference, "t": t, "df": df, "p": 2 * (1 - student_t_cdf(abs(t), df)),
            "low": difference - half, "high": difference + half, "n_a": len(a), "n_b": len(b)}


def prediction_interval(values, level=0.95):
    """(low, high): where one more draw of the same configuration (one more seed) lands with
    probability `level`, for normal values: mean ± t(n - 1) s sqrt(1 + 1/n). None with fewer than
    two values. It is the test for a single published run set against n seeds."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t_quantile(0.5 + level / 2, n - 1) * s * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def holm(pvalues):
    """Holm's step-down adjustment of p-values for the number of tests made together (Holm 1979): the
    i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j)). It keeps the chance of
    any false finding among the m at the level without assuming the tests independent. None (no test)
    stays None and is not counted."""
    ranked = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted, running = [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[i] = running
    return adjusted


def ranges_apart(a, b):
    """Whether two sets of seeds' values do not overlap: every value of one above every value of the
    other. With 3 seeds against 3 this is what an exact permutation test can see at its smallest p,
    2 / 20 = 0.10 two-sided; None where a side has fewer than two values."""
    a, b = [v for v in a if v is not None], [v for v in b if v is not None]
    if len(a) < 2 or len(b) < 2:
        return None
    return max(a) < min(b) or max(b) < min(a)


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
