"""Measure every checkpoint on the validation split and the official test set, and pick a latent size.

    python evaluate.py      # writes output/results.json, output/results.md and the plots of the numbers
    python evaluate.py --out results/study --report-only   # re-render results.md and the plots from results.json alone

Per model, variant and latent size (mean and spread over the seeds found): per-pixel MSE overall and
per digit (the VAE both with z = mu and with one sampled z, as the study measured), the VAE's KL and
active units, the Autoencoder's dead code units, a digit classifier's accuracy on the
reconstructions, and the Frechet distance of decoded samples to the test set. Everything is measured
in float32, whatever precision a run trained in (the test NLL too, unless --nll-precision bf16).
"""
import hashlib
import json
import os
import sys
from dataclasses import asdict

import torch

from models import MODEL_NAMES, PRECISIONS, cuda_tf32
from vaestudy.checkpoints import load_runs
from vaestudy.classifier import accuracy, features, frechet_distance, load_or_train
from vaestudy.cli import ArgumentParser, UserError, add_place_flags, check_seeds, progress, run_cli
from vaestudy.data import load_splits
from vaestudy.device import check_precision, pick_device
from vaestudy.files import atomic_write
from vaestudy.metrics import (
    METRICS,
    N_GENERATED,
    active_units,
    dead_units,
    encode_means,
    finite_or_none,
    generate,
    log_px,
    measure,
    reconstruct,
)
from vaestudy.plots import plot_results
from vaestudy.report import report
from vaestudy.runs import defines_likelihood, run_name, variant_label
from vaestudy.stats import TOLERANCE, selections, summarize


def measure_run(run, splits, seed, judge=None, nll_samples=0, nll_precision="fp32"):
    """One run's results entry; `judge` is (classifier, its test-set features) or None; the test
    NLL with nll_samples importance samples where the run defines a likelihood (0: not measured),
    its matmuls in nll_precision."""
    config, train, model = run.config, run.train, run.model
    entry = {"model": MODEL_NAMES[config.model], "variant": variant_label(run.variant), "latent": config.latent,
             "seed": train.seed, "epochs": run.ckpt["epoch"], "split_seed": train.split_seed,
             "settings": dict(run.variant), "config": config.to_dict(), "train": asdict(train)}
    for split in ("test", "val"):
        entry[split] = measure(model, *splits[split], sample=False)
        if config.model == "vae":
            entry[split + "_sampled"] = measure(model, *splits[split], sample=True, seed=seed)
    test_x, test_y = splits["test"]
    if nll_samples and defines_likelihood(run.config, run.train):
        bounds = {}
        for k in (nll_samples, 1):  # 1: the ELBO, for how much the k samples tighten the bound
            with progress(total=len(test_x), desc=f"log p(x), k = {k}", unit="image", leave=False) as bar:
                bounds[k] = finite_or_none(log_px(model, test_x, k, seed=seed, progress=bar,
                                                  precision=nll_precision).mean())
        entry["test_nll"] = None if bounds[nll_samples] is None else -bounds[nll_samples]
        entry["test_elbo"], entry["nll_samples"] = bounds[1], nll_samples
        if nll_precision != "fp32":  # said only where it is not the default, so older entries read the same
            entry["nll_precision"] = nll_precision
    codes = encode_means(model, test_x)
    if config.model == "vae":
        entry["active_units"] = active_units(codes)
    else:
        entry["dead_units"] = dead_units(codes)
    for m in METRICS:  # the metrics that measure themselves from the model (metrics.Metric)
        if m.measure is not None and m.applies(config, train):
            entry[m.key] = finite_or_none(m.measure(model, splits, seed))
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


def cached(run, key, compute):
    """compute() of one run, or what was measured before under the same key, kept beside its
    checkpoint (VAE_latent_20.measured.json): adding a run to a finished study measures that run alone."""
    path = os.path.splitext(run.path)[0] + ".measured.json"
    try:
        with open(path) as f:
            saved = json.load(f)
        if saved["key"] == key:
            return saved["entry"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: measured again
    entry = compute()
    payload = json.dumps({"key": key, "entry": entry}, allow_nan=False)
    try:
        atomic_write(path, lambda f: f.write(payload), mode="w")
    except UserError:
        pass  # a folder of checkpoints that cannot be written to: measured every time instead
    return entry


def measurement_key(run, args, device, classifier_sha):
    """What a cached measurement of a run depends on besides its code (MEASURES_VERSION): the
    checkpoint, the seed, the NLL's settings, the classifier and the device, whose random streams
    differ (a GPU draws other z than the CPU from the same seed). Settings at their first value
    (float32 NLL, the CPU) are left out, so that keys written before they existed still match."""
    likelihood = defines_likelihood(run.config, run.train)
    key = {"measures": MEASURES_VERSION, "checkpoint_sha256": sha256(run.path), "seed": args.seed,
           "nll_samples": args.nll_samples if likelihood else None, "classifier_sha256": classifier_sha}
    if likelihood and args.nll_samples and args.nll_precision != "fp32":
        key["nll_precision"] = args.nll_precision
    if device.type != "cpu":
        key["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    extra = [m.key for m in METRICS if m.measure is not None]  # a metric declared later is measured anew
    if extra:
        key["metrics"] = extra
    return key


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    add_place_flags(p, "where results.json, results.md and the plots of the numbers go", checkpoints=True)
    p.add_argument("--seed", type=int, default=0, help="seed of sampled z and generated images (default: 0)")
    p.add_argument("--classifier", default=None,
                   help="digit classifier checkpoint, trained there on first use (default: OUT/classifier.pt)")
    p.add_argument("--nll-samples", type=int, default=5000,
                   help="importance samples per test image for the test NLL of runs whose decoder is a likelihood "
                        "of their data (--recon bce --binarize); 0 skips it (default: 5000, as in the literature)")
    p.add_argument("--nll-precision", default="fp32", choices=PRECISIONS,
                   help="matmuls of the test NLL; bf16 is faster and moved the k = 5000 estimate by a few thousandths "
                        "of a nat on average here (docs/speed.md) (default: fp32)")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the classifier accuracy and Frechet distance (default: measure them)")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: re-render results.md and the plots from OUT/results.json (default: off)")
    args = p.parse_args(argv)
    if args.nll_samples < 0:
        p.error("--nll-samples must not be negative")
    check_seeds(seed=args.seed)
    return args


def measure_all(args):
    """Every finished run's entry, and the classifier's figures (None with --no-classifier)."""
    device = pick_device(args.device)
    check_precision(args.nll_precision, device)
    runs = load_runs(args.checkpoints or args.out, device)
    loaded = {}

    def splits(split_seed, binarize=False):  # the images runs are measured on, each set loaded once
        if (split_seed, binarize) not in loaded:
            loaded[split_seed, binarize] = load_splits(args.data_dir, split_seed, device, fetch=False,
                                                       binarize=binarize)
        return loaded[split_seed, binarize]

    judge, classifier_info = None, None
    if not args.no_classifier:
        split_seed = min(run.train.split_seed for run in runs)
        reference = splits(split_seed)
        path = args.classifier or os.path.join(args.out, "classifier.pt")
        net, test_accuracy = load_or_train(path, reference, split_seed)
        test_features = features(net, reference["test"][0])
        judge = (net, test_features)
        floor = finite_or_none(frechet_distance(features(net, reference["val"][0]), test_features))
        classifier_info = {"checkpoint": path, "test_accuracy": test_accuracy, "frechet_floor_val_vs_test": floor}
    classifier_sha = sha256(classifier_info["checkpoint"]) if classifier_info else None
    entries = []
    for i, run in enumerate(runs):
        key = measurement_key(run, args, device, classifier_sha)

        def compute():
            print(f"measuring {i + 1} of {len(runs)}: {run_name(run.config, run.train, seed=True)}", file=sys.stderr)
            return measure_run(run, splits(run.train.split_seed, run.train.binarize), args.seed, judge,
                               args.nll_samples,
                               args.nll_precision)
        entries.append({"checkpoint": run.path, **cached(run, key, compute)})
    return entries, classifier_info


def main(argv=None):
    args = get_args(argv)
    path = os.path.join(args.out, "results.json")
    if args.report_only:
        try:
            with open(path) as f:
                previous = json.load(f)
            entries, classifier_info, seed = previous["runs"], previous["classifier"], previous["seed"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--report-only needs a readable {path} ({getattr(e, 'strerror', None) or e})")
    else:
        with cuda_tf32(False):  # measured in float32, as the docs say, even on a GPU and after training
            (entries, classifier_info), seed = measure_all(args), args.seed
    summary = summarize(entries)
    rule = (f"within each model and variant, lowest validation MSE (z = mu); 'selected' is the smallest latent "
            f"size whose validation MSE is within {TOLERANCE:.0%} of that lowest")
    results = {"selection_rule": rule, "seed": seed, "split_seeds": sorted({e["split_seed"] for e in entries}),
               "classifier": classifier_info, "selection": selections(summary), "summary": summary, "runs": entries}
    text = report(results)
    payload = json.dumps(results, indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(payload), mode="w")
    atomic_write(os.path.join(args.out, "results.md"), lambda f: f.write(text), mode="w")
    floor = classifier_info and classifier_info["frechet_floor_val_vs_test"]
    figures = plot_results(summary, floor, args.out)
    print(text)
    print(f"wrote {path}, {os.path.join(args.out, 'results.md')} and {len(figures)} plots of the numbers "
          f"under {args.out}")


if __name__ == "__main__":
    run_cli(main)
