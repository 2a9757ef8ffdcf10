"""Every table of results.md, and the README's and the docs' tables, from a results.json's summary
(stats.py makes it; published.py holds the numbers set beside it; plots.py draws them); and the
short summary evaluate.py prints."""
import textwrap

from models import ModelConfig
from vaestudy.data import N_VAL
from vaestudy.datasets import DATASETS, MNIST
from vaestudy.metrics import METRICS, N_GENERATED
from vaestudy.published import LITERATURE, REFERENCE_K, REFERENCE_NLL, STUDY
from vaestudy.runs import STUDY_EPOCHS, TrainConfig, variant_flags
from vaestudy.stats import (
    TOLERANCE,
    beta_of,
    beta_sweep,
    holm,
    prediction_interval,
    ranges_apart,
    select_latent,
    selection_shares,
    welch,
)


def fmt(value, spread=None, digits=4):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread else "")


def fmt_p(p):
    """A p-value as tables print it: two decimals, three below 0.01, and "< 0.001" below that, never 0.00."""
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def epochs_text(epochs):
    """A row's epochs: "50", or "30/50" where its seeds were trained for different lengths."""
    return "/".join(str(e) for e in sorted(set(epochs))) if epochs else "n/a"


def epochs_words(epochs):
    text = epochs_text(epochs)
    return text + (" epoch" if text == "1" else " epochs")


def short_of_study(rows):
    """The rows trained for fewer epochs than the study's 50."""
    return [r for r in rows if any(e is not None and e < STUDY_EPOCHS for e in r.get("epochs", []))]


def nll_cell(r, key, digits):
    """A test NLL with the k it was estimated at, which the number depends on (the bound rises with k)."""
    cell = fmt(r.get(key), r.get(key + "_std"), digits)
    return cell + (f" (k = {r['nll_samples']})" if key == "test_nll" and r.get(key) is not None else "")


def markdown_tables(summary, dataset=MNIST, brief=False):
    """The table of every row, then test MSE per class (digit); brief: the headline measures alone (at
    most 10 columns), and the test NLL where there is one."""
    columns = [(m.label, m.key, m.digits) for m in METRICS
               if any(r.get(m.key) is not None for r in summary)  # results.json may predate one
               and (not brief or m.headline or m.key == "test_nll")]
    # a variant column only where there is more than one variant: the study's table keeps its shape
    keys = ["model"] + (["variant"] if len({r["variant"] for r in summary}) > 1 else []) + ["latent"]
    lines = ["| " + " | ".join(keys + ["seeds"] + ([] if brief else ["epochs"]) + [name for name, _, _ in columns])
             + " |", "|" + "---|" * (len(keys) + 1 + (not brief) + len(columns))]
    for r in summary:
        cells = [str(r[k]) for k in keys] + [str(len(r["seeds"]))] + ([] if brief else [epochs_text(r.get("epochs"))])
        cells += [nll_cell(r, key, digits) for _, key, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if brief:
        return "\n".join(lines) + "\n"
    lines += ["", f"Test MSE per {dataset.class_word} (z = mu):", "",
              "| " + " | ".join(keys + list(dataset.classes)) + " |", "|" + "---|" * (len(keys) + len(dataset.classes))]
    for r in summary:
        lines.append("| " + " | ".join([str(r[k]) for k in keys] + [fmt(v) for v in r["test_mse_per_digit"]]) + " |")
    return "\n".join(lines) + "\n"


def class_ranking(summary, dataset=MNIST, model_variants=(("Autoencoder", "default"), ("VAE", "default"))):
    """Per row of the given models' variants, the class with the lowest test MSE and the three with the
    highest (z = mu, mean over the seeds): which images are easy and hard to reconstruct."""
    lines = [f"| model | latent | seeds | easiest {dataset.class_word} | hardest three, hardest first |",
             "|" + "---|" * 5]
    for r in summary:
        if (r["model"], r["variant"]) in model_variants and None not in r["test_mse_per_digit"]:
            order = sorted(range(len(dataset.classes)), key=lambda c: r["test_mse_per_digit"][c])
            name = lambda c: f"{dataset.classes[c]} ({r['test_mse_per_digit'][c]:.4f})"
            lines.append(f"| {r['model']} | {r['latent']} | {len(r['seeds'])} | {name(order[0])} | "
                         + ", ".join(name(c) for c in reversed(order[-3:])) + " |")
    return "\n".join(lines) + "\n"


HEADLINE_LABELS = {"test_mse_sampled": "MSE, sampled z"}  # shorter, so that the README's lines fit 100 columns


FASHION_LATENTS = (10, 20, 50, 100)  # where the Fashion-MNIST page sets the KL weight's arms side by side
FASHION_STEPS = ((10, 20), (20, 50), (50, 100))
FASHION_STUDY = "precision bf16"  # the variant the Fashion-MNIST study was trained as, for time (docs/fashion-mnist.md)


def headline_table(summary, variant="default"):
    """The README's table: the study's configuration (or another variant of it), a few columns, mean ±
    spread over seeds."""
    columns = [m for m in METRICS if m.headline]
    lines = ["| " + " | ".join(["model", "latent", "seeds"] + [HEADLINE_LABELS.get(m.key, m.label) for m in columns])
             + " |",
             "|" + "---|" * (3 + len(columns))]
    for r in summary:
        if r["variant"] == variant:
            cells = [r["model"], str(r["latent"]), str(len(r["seeds"]))]
            lines.append("| " + " | ".join(cells + [fmt(r.get(m.key), r.get(m.key + "_std"), m.digits)
                                                    for m in columns]) + " |")
    return "\n".join(lines) + "\n"


def versus(value, runs):
    """Where a number lies against a set of runs' values, in words."""
    runs = [v for v in runs if v is not None]
    if not runs:
        return "n/a"
    return "below all" if value < min(runs) else "above all" if value > max(runs) else "within"


def study_table(summary):
    """The study's published numbers beside this repository's default runs and its study-ReLU
    Autoencoder, per latent size, and where the study's Autoencoder lies against the ReLU runs.
    Only runs trained as the study was, for its 50 epochs, are compared."""
    def row(model, settings, latent):
        return next((r for r in summary if (r["model"], r["settings"], r["latent"]) == (model, settings, latent)
                     and not short_of_study([r])), None)

    def cell(r, key, digits=4):
        return "n/a" if r is None else fmt(r[key], r[key + "_std"], digits)

    def against(published, r, key):  # the study's single run against where one more seed here would land
        interval = None if r is None else prediction_interval(r["by_seed"].get(key, []))
        if interval is None:
            return "n/a"
        low, high = interval
        where = "above" if published > high else "below" if published < low else "within"
        return f"{where} ({low:.{2 if key == 'test_kl' else 4}f} to {high:.{2 if key == 'test_kl' else 4}f})"

    lines = ["| latent | study AE | this AE, study's ReLU code (seeds) | per seed | study AE vs these runs "
             "| dead units per seed | this AE, linear code | study VAE (sampled z) | this VAE (sampled z) "
             "| study VAE vs one more seed here (95%) | study VAE KL | this VAE KL | study KL vs one more seed "
             "(95%) |", "|" + "---|" * 13]
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
                 cell(vae, "test_mse_sampled"), against(study_vae, vae, "test_mse_sampled"), fmt(study_kl, digits=2),
                 cell(vae, "test_kl", 2), against(study_kl, vae, "test_kl")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def selection_lines(chosen, summary, tolerance=TOLERANCE):
    """One line per model and variant; it says so when the runs chosen among are shorter than the study's."""
    lines = []
    for name, c in chosen.items():
        rows = [r for r in summary if (r["model"], r["variant"]) == (c["model"], c["variant"])]
        short = short_of_study(rows)
        note = (f"; among runs of {epochs_words(sorted({e for r in short for e in r['epochs'] if e}))}, the study "
                f"trained for {STUDY_EPOCHS}") if short else ""
        if len(rows) == 1:  # the rule has nothing to choose among
            lines.append(f"{name}: one latent size trained ({rows[0]['latent']}): nothing to select")
            continue
        counts, n = c.get("combination_counts", []), c.get("combinations", 0)
        seeds = ("; over the " + f"{n:,} combinations of one seed per size: "
                 + ", ".join(f"{latent} in {count / n:.0%}" for latent, count in counts)) if n > 1 else ""
        lines.append(f"{name}: lowest validation MSE at latent {c['lowest_val_mse']}; smallest latent size within "
                     f"{tolerance:.0%} of it: {c['selected']} (selected{note}){seeds}")
    return lines


def rate_distortion_table(summary):
    """The beta sweep's rows (beta_sweep) as rate, distortion and active units, by beta then latent
    size; "" when there is no sweep."""
    rows, _ = beta_sweep(summary)
    lines = ["| beta | latent | seeds | test KL (nats, rate) | test MSE, z = mu (distortion) | active units |",
             "|" + "---|" * 6]
    for r in sorted(rows, key=lambda r: (beta_of(r), r["latent"])):
        lines.append(f"| {beta_of(r):g} | {r['latent']} | {len(r['seeds'])} | {fmt(r['test_kl'], r['test_kl_std'], 2)} "
                     f"| {fmt(r['test_mse'], r['test_mse_std'])} "
                     f"| {fmt(r['active_units'], r['active_units_std'], 1)} |")
    return "\n".join(lines) + "\n" if rows else ""


def likelihood_table(summary):
    """The runs with a test NLL beside the published ones (LITERATURE), each with its data,
    architecture, training and k, and its distance to Burda et al.'s VAE; "" when no run has one."""
    rows = [r for r in summary if r.get("test_nll") is not None]
    lines = ["| model | source | data | architecture | training | k | test NLL (nats) | vs Burda et al.'s VAE |",
             "|" + "---|" * 8]
    def versus(nll, k):  # an estimate at a smaller k is a looser bound: only the same k compares
        return f"{nll - REFERENCE_NLL:+.2f}" if k == REFERENCE_K else f"n/a: k = {k}, theirs {REFERENCE_K}"

    for name, source, data, widths, training, k, nll in LITERATURE:
        lines.append(f"| {name} | {source} | {data} | {widths} | {training} | {k} | {nll:.2f} | {versus(nll, k)} |")
    for r in rows:
        settings = r["settings"]
        iw = settings.get("iw_samples", TrainConfig.iw_samples)
        widths = "-".join(map(str, [ModelConfig.input_dim, *settings.get("hidden", ModelConfig.hidden), r["latent"]]))
        seeds = f"{len(r['seeds'])} seed" + ("s" if len(r["seeds"]) > 1 else "")
        lines.append(f"| {'VAE' if iw == 1 else f'IWAE, K = {iw}'} | this repository, `{variant_flags(settings)}` "
                     f"| dynamic binarization | {widths}, ReLU "
                     f"| {epochs_text(r['epochs'])} epochs, batch {settings.get('batch_size', TrainConfig.batch_size)} "
                     f"| {r['nll_samples']}{' (bf16)' if r.get('nll_precision') == 'bf16' else ''} "
                     f"| {fmt(r['test_nll'], r['test_nll_std'], 2)} ({seeds}) "
                     f"| {versus(r['test_nll'], r['nll_samples'])} |")
    return "\n".join(lines) + "\n" if rows else ""


STUDY_METRICS = (("test MSE, z = mu", "test_mse", 4), ("test MSE, sampled z", "test_mse_sampled", 4),
                 ("KL (nats)", "test_kl", 2), ("active units", "active_units", 1))
EVERY_METRIC = (("test NLL (nats)", "test_nll", 2), ("test ELBO (nats)", "test_elbo", 2)) + STUDY_METRICS


def setting_table(reference, summary, setting, value, labels, metrics=STUDY_METRICS):
    """Each row of summary whose `setting` is `value` beside the row of reference with the same
    settings less that one (its default), metric by metric, as comparison_table sets them."""
    pairs = []
    for r in summary:
        settings = {k: v for k, v in r["settings"].items() if k != setting}
        default = next((f for f in reference if (f["model"], f["latent"], f["settings"]) == (r["model"], r["latent"],
                                                                                             settings)), None)
        if r["settings"].get(setting) == value and default is not None:
            pairs.append((default, r))
    return comparison_table(pairs, metrics, labels)


def precision_table(reference, summary, metrics=STUDY_METRICS):
    """Each bf16 row of summary beside the float32 row of the same settings in reference."""
    return setting_table(reference, summary, "precision", "bf16", ("fp32", "bf16"), metrics)


CALIBRATED_METRICS = STUDY_METRICS + (("KL-active units", "kl_active_units", 1),
                                      ("Frechet dist.", "frechet_distance", 2))


def calibration_table(reference, summary, metrics=CALIBRATED_METRICS):
    """Each run of the optimal-sigma decoder (--recon gaussian-optimal) beside the study's fixed variance 1/2."""
    return setting_table(reference, summary, "recon", "gaussian-optimal", ("sigma² = 1/2", "optimal sigma"), metrics)


def split_table(reference, summary):
    """Runs on the study's own validation split (--split-seed study) beside this repository's split."""
    return setting_table(reference, summary, "split_seed", "study", ("split seed 0", "the study's split"),
                         (("val MSE", "val_mse", 4), ("test MSE, z = mu", "test_mse", 4)))


def machine_table(here, there, labels, metrics=STUDY_METRICS, model="VAE", latent=20):
    """The same configuration, the study's, trained on two machines (two results.json's summaries)."""
    pick = [next((r for r in rows if (r["model"], r["latent"], r["settings"]) == (model, latent, {})), None)
            for rows in (here, there)]
    return comparison_table([tuple(pick)] if None not in pick else [], metrics, labels)


def comparison_table(pairs, metrics, labels):
    """Rows (a, b) of two summaries side by side, metric by metric, with Welch's t-test of b - a over
    their seeds (tested_table)."""
    items = [([b["model"], str(b["latent"]), name], a, b, key, digits)
             for a, b in pairs for name, key, digits in metrics if a.get(key) is not None and b.get(key) is not None]
    return tested_table(["model", "latent", "measure"], items, labels)


def tested_table(head, items, labels):
    """A table of tested differences, one per item (cells, a, b, key, digits): the leading cells under
    `head`, the two rows' values of key (mean ± std over their seeds, the number of seeds in brackets),
    b - a, Welch's test of it (stats.welch): its 95% interval and two-sided p, that p adjusted by
    Holm's method for the number of tests in the table (stats.holm), and whether the seeds' ranges lie
    apart. A side with a single seed can say nothing of the difference."""
    a_label, b_label = labels
    lines = ["| " + " | ".join(head) + f" | {a_label} | {b_label} | {b_label} - {a_label} | 95% interval | Welch p "
             "| Holm p | seed ranges |", "|" + "---|" * (len(head) + 7)]
    tests = []
    for _, a, b, key, _ in items:
        seeds_a, seeds_b = a.get("by_seed", {}).get(key, []), b.get("by_seed", {}).get(key, [])
        tests.append((welch(seeds_a, seeds_b), ranges_apart(seeds_a, seeds_b)))
    adjusted = holm([test["p"] if test else None for test, _ in tests])
    for (cells, a, b, key, digits), (test, apart), p_holm in zip(items, tests, adjusted):
        if test:
            interval, p = f"{test['low']:+.{digits + 1}f} to {test['high']:+.{digits + 1}f}", fmt_p(test["p"])
        elif min(len(a["seeds"]), len(b["seeds"])) < 2:
            interval = p = "one seed"
        else:
            interval, p = "no spread", "n/a"
        ranges = "n/a" if apart is None else "apart" if apart else "overlap"
        sides = [f"{fmt(r[key], r[key + '_std'], digits)} ({len(r['seeds'])})" for r in (a, b)]
        lines.append("| " + " | ".join(cells + sides) + f" | {b[key] - a[key]:+.{digits + 1}f} | {interval} | {p} "
                     f"| {fmt_p(p_holm)} | {ranges} |")
    if not items:
        return ""
    n = sum(p is not None for p in adjusted)
    counted = f"\n\nHolm's adjustment is over the {n} Welch test{'s' * (n != 1)} of this table.\n"
    return "\n".join(lines) + (counted if n else "\n")


def rows_of(summary, model="VAE", **settings):
    """A summary's rows of one model whose settings are exactly `settings`, by latent size."""
    return {r["latent"]: r for r in summary if r["model"] == model and r["settings"] == settings}


def arms_table(arms, latents, metrics=STUDY_METRICS):
    """Several configurations ("arms": (label, {latent: row})) at the same latent sizes, one row per arm
    and size: mean ± std over the seeds, their number beside."""
    lines = ["| arm | latent | seeds | " + " | ".join(name for name, _, _ in metrics) + " |",
             "|" + "---|" * (3 + len(metrics))]
    for label, rows in arms:
        for latent in latents:
            r = rows.get(latent)
            if r is not None:
                lines.append(f"| {label} | {latent} | {len(r['seeds'])} | "
                             + " | ".join(fmt(r.get(key), r.get(key + "_std"), digits) for _, key, digits in metrics)
                             + " |")
    return "\n".join(lines) + "\n"


def arms_comparison(a_rows, b_rows, latents, metrics, labels):
    """Two arms ({latent: row} each) compared size by size (comparison_table)."""
    return comparison_table([(a_rows[n], b_rows[n]) for n in latents if n in a_rows and n in b_rows], metrics, labels)


CONTROL_LATENTS = (20, 50, 100)  # where the study's VAE plateaus, and the KL weight's control was trained
CONTROL_BETAS = (0.1, 0.033, 0.011)  # 0.011: what the optimal sigma implies at its end (2 sigma^2 at latent 20)


def kl_weight_arms(study, calibrated, control):
    """The arms of the KL weight's control, each {latent: row}: the study's loss (sigma² = 1/2, that is
    beta 1; results/study), the same loss at each constant beta of CONTROL_BETAS (results/control), and
    the optimal sigma, whose weight on the KL falls as training goes (results/calibrated)."""
    return ([("beta 1 (the study's)", rows_of(study))]
            + [(f"beta {beta:g}", rows_of(control, beta=beta)) for beta in CONTROL_BETAS]
            + [("optimal sigma", rows_of(calibrated, recon="gaussian-optimal"))])


def samples_arms(summary, base=None):
    """The VAE's arms of one results.json, from the largest KL weight to the smallest: the study's loss
    at each beta trained there (its settings `base` besides the beta; results/control has none), then
    the optimal sigma."""
    base = base or {}
    def on_base(settings):  # the base's settings, and at most a beta besides
        return set(settings) - set(base) <= {"beta"} and all(settings.get(k) == v for k, v in base.items())
    betas = sorted({float(r["settings"].get("beta", 1.0)) for r in summary
                    if r["model"] == "VAE" and on_base(r["settings"])}, reverse=True)
    return ([(f"beta {beta:g}" + (" (the study's)" if beta == 1 else ""),
              rows_of(summary, **base, **({} if beta == 1 else {"beta": beta}))) for beta in betas]
            + [("optimal sigma", rows_of(summary, **base, recon="gaussian-optimal"))])


def selection_table(arms, latents):
    """Each arm's selection among the same latent sizes: its validation MSE at each (mean over seeds),
    the rule's pick on the means, and its picks over every combination of one seed per size."""
    lines = ["| arm | " + " | ".join(f"val MSE, latent {n}" for n in latents)
             + " | selected | over the combinations of one seed per size |", "|" + "---|" * (len(latents) + 3)]
    for label, rows in arms:
        chosen = [rows[n] for n in latents if n in rows]
        if len(chosen) != len(latents):
            continue
        selected = select_latent({r["latent"]: r["val_mse"] for r in chosen})[1]
        shares, n = selection_shares(chosen)
        spread = ", ".join(f"{latent} in {count / n:.0%}" for latent, count in shares) + f" (of {n})"
        lines.append(f"| {label} | " + " | ".join(fmt(r["val_mse"], r["val_mse_std"]) for r in chosen)
                     + f" | {selected} | {spread} |")
    return "\n".join(lines) + "\n"


SAMPLES_METRICS = (("test MSE, z = mu", "test_mse", 4), ("KL (nats)", "test_kl", 2),
                   ("I(x; z) (nats)", "mutual_information", 2), ("KL(q(z) || p(z)) (nats)", "marginal_kl", 2),
                   ("Frechet dist., prior", "frechet_distance", 2),
                   ("Frechet dist., q(z) fit", "frechet_aggregate", 2))


def samples_table(arms, latent=20, metrics=SAMPLES_METRICS):
    """Rate against sample quality at one latent size, arm by arm: the error, the KL and its two parts
    (metrics.kl_split), and the Frechet distance of samples from the prior and from a Gaussian fitted
    to the aggregate posterior."""
    return arms_table([(label, {latent: rows[latent]}) for label, rows in arms if latent in rows], [latent], metrics)


def plateau_table(arms, steps, metric=("test MSE, z = mu", "test_mse", 4)):
    """Within each arm ((label, {latent: row})), the change of one metric from one latent size to a
    larger one (steps: ((20, 50), ...)), tested as tested_table does: does the error still fall, or rise?"""
    name, key, digits = metric
    items = [([label, f"{small} to {large}"], rows[small], rows[large], key, digits)
             for label, rows in arms for small, large in steps if small in rows and large in rows]
    return tested_table(["arm", "latent"], items, ("smaller", "larger"))


def terms(summary):
    """What each column of results.md's first table is, from its declaration."""
    shown = [m for m in METRICS if any(r.get(m.key) is not None for r in summary)]
    better = {True: " (lower is better)", False: " (higher is better)", None: ""}
    return "\nTerms:\n\n" + "".join(f"- **{m.label}**: {m.glossary}{better[m.lower_is_better]}\n" for m in shown)


def short_runs_note(summary, dataset=MNIST):
    """What runs of the study's configuration shorter than the study's can show, or "" when none is."""
    short = short_of_study([r for r in summary if r["variant"] in ("default", "code-relu")])
    if not short:
        return ""
    return (f"Short runs: the study's configuration trained for "
            f"{epochs_words(sorted({e for r in short for e in r['epochs'] if e}))} here, the study's for "
            f"{STUDY_EPOCHS}. Such runs check that every step works; their errors, reconstructions and selected "
            "latent sizes are not the study's "
            f"({'results/study' if dataset is MNIST else 'results/' + dataset.name}/results.md has 50-epoch runs of "
            "every size).")


# the columns evaluate.py prints, with short headings so that a row fits a terminal's 100 columns
PRINTED = {"test_mse": "test MSE", "test_mse_sampled": "sampled z", "test_kl": "KL", "active_units": "active",
           "test_nll": "NLL", "classifier_accuracy": "classifier"}


def printed_summary(results, width=100):
    """What evaluate.py prints: per model and variant its selection and a narrow table of means (the
    number of seeds beside them); results.md has every column and spread, and its terms say what
    each is."""
    summary = results["summary"]
    columns = [m for m in METRICS if m.key in PRINTED and any(r.get(m.key) is not None for r in summary)]
    lines = []
    for name, chosen in results["selection"].items():
        rows = [r for r in summary if (r["model"], r["variant"]) == (chosen["model"], chosen["variant"])]
        lines.append("")
        lines += textwrap.wrap(selection_lines({name: chosen}, summary)[0], width, subsequent_indent="  ")
        head = ["latent", "seeds", "epochs"] + [PRINTED[m.key] for m in columns]
        cells = [[str(r["latent"]), str(len(r["seeds"])), epochs_text(r.get("epochs"))]
                 + [fmt(r.get(m.key), digits=m.digits) for m in columns] for r in rows]
        widths = [max(len(c[i]) for c in [head] + cells) for i in range(len(head))]
        for row in [head] + cells:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    note = short_runs_note(summary)
    if note:
        lines += [""] + textwrap.wrap(note, width)
    return "\n".join(lines).lstrip("\n")


def report(results):
    """results.md: the tables, the selections and the extra tables, all from results.json's contents."""
    summary, info = results["summary"], results["classifier"]
    dataset = DATASETS[results.get("dataset", MNIST.name)]  # a results.json from before there were others: MNIST
    notes = selection_lines(results["selection"], summary)
    if info:
        notes.append(f"{dataset.title} classifier: {info['test_accuracy']:.2%} test accuracy; Frechet distance of "
                     "the real validation images to the test set (the floor): "
                     f"{fmt(info['frechet_floor_val_vs_test'], digits=2)} "
                     f"({N_VAL:,} validation images, fewer than the {N_GENERATED:,} samples per model: a larger "
                     "finite-sample bias, so a floor set a little high)")
    note = short_runs_note(summary, dataset)
    text = (f"{note}\n\n" if note else "") + markdown_tables(summary, dataset, brief=True) + "\n"
    text += "\n".join(f"- {line}" for line in notes) + "\n" + terms(summary)
    text += "\nEvery measurement, mean ± standard deviation over the seeds:\n\n" + markdown_tables(summary, dataset)
    comparison = study_table(summary) if dataset is MNIST else ""  # the study and the literature measured MNIST
    short = short_of_study([r for r in summary if r["variant"] in ("default", "code-relu")])
    if not comparison and short and dataset is MNIST:
        comparison = (f"left out: the runs of the study's configuration here were trained for "
                      f"{epochs_words(sorted({e for r in short for e in r['epochs'] if e}))}, the study's for "
                      f"{STUDY_EPOCHS}; train with --epochs {STUDY_EPOCHS} to compare them.\n")
    for heading, table in (("Against the study's published test results (vaestudy.published.STUDY)", comparison),
                           ("Rate and distortion of the VAE as beta changes", rate_distortion_table(summary)),
                           ("Test NLL beside published models (vaestudy.published.LITERATURE)",
                            likelihood_table(summary) if dataset is MNIST else "")):
        if table:
            text += f"\n{heading}:\n\n{table}"
    return text


def bits_per_dim_table(rows):
    """scripts/bits_per_dim.py's rows: each Gaussian-decoder VAE's bits per dimension of the dequantized
    test bytes, the k-sample bound's and the ELBO's, with its decoder's sigma and with the sigma refitted
    on the training images, beside the scalar-variance floor at its error (metrics.gaussian_elbo_bits)."""
    lines = ["| decoder | latent | seed | k | decoder sigma | bits/dim, k-sample bound | bits/dim, ELBO "
             "| refitted sigma | bits/dim, refitted, k-sample | bits/dim, refitted, ELBO | ELBO floor at its MSE |",
             "|" + "---|" * 11]
    names = {"mse": "fixed sigma² = 1/2 (the study's)", "gaussian": "learned sigma",
             "gaussian-optimal": "optimal sigma"}
    for r in sorted(rows, key=lambda r: (r["recon"] != "mse", r["recon"], r["latent"], r["seed"])):
        lines.append(f"| {names[r['recon']]} | {r['latent']} | {r['seed']} | {r['samples']} "
                     f"| {r['decoder_sigma']:.4f} | {r['bits_per_dim']:.3f} | {r['bits_per_dim_k1']:.3f} "
                     f"| {fmt(r.get('refitted_sigma'))} | {fmt(r.get('bits_per_dim_refitted'), digits=3)} "
                     f"| {fmt(r.get('bits_per_dim_refitted_k1'), digits=3)} | {fmt(r.get('elbo_floor'), digits=3)} |")
    return "\n".join(lines) + "\n" if rows else ""
