"""Measuring the runs that evaluate.py finds: each run's results entry (its measurements on the
validation and test images), cached beside its checkpoint, and the classifier that judges them."""
import hashlib
import json
import os
import sys
from dataclasses import asdict

import torch

from models import MODEL_NAMES
from vaestudy.checkpoints import load_runs
from vaestudy.classifier import accuracy, features, frechet_distance, load_or_train
from vaestudy.cli import Progress, UserError
from vaestudy.data import load_splits
from vaestudy.datasets import dataset_folder
from vaestudy.device import check_precision, device_name, pick_device, provenance
from vaestudy.files import atomic_write
from vaestudy.metrics import (
    METRICS,
    N_GENERATED,
    active_units,
    dead_units,
    encode_means,
    finite_or_none,
    generate,
    kl_split_of,
    log_px,
    measure,
    reconstruct,
)
from vaestudy.runs import defines_likelihood, run_name, variant_label


def measure_run(run, splits, seed, judge=None, nll_samples=0, nll_precision="fp32"):
    """One run's results entry; `judge` is (classifier, its test-set features) or None; the test
    NLL with nll_samples importance samples where the run defines a likelihood (0: not measured),
    its matmuls in nll_precision."""
    config, train, model = run.config, run.train, run.model
    entry = {"model": MODEL_NAMES[config.model], "variant": variant_label(run.variant), "latent": config.latent,
             "seed": train.seed, "epochs": run.ckpt["epoch"], "split_seed": train.split_seed,
             "settings": dict(run.variant), "config": config.to_dict(), "train": asdict(train),
             # where it was trained (a process per resume) and measured; checkpoints older than the record say so
             "trained_by": run.ckpt.get("trained_by", "unknown"), "measured_by": provenance(splits["test"][0].device)}
    # the per-epoch curves, compact, so that a page can cite them without the checkpoint
    entry["history"] = {k: [float(f"{v:.6g}") for v in values] for k, values in run.ckpt["history"].items()
                        if k != "seconds"}
    for split in ("test", "val"):
        entry[split] = measure(model, *splits[split], sample=False)
        if config.model == "vae":
            entry[split + "_sampled"] = measure(model, *splits[split], sample=True, seed=seed)
    test_x, test_y = splits["test"]
    if nll_samples and defines_likelihood(run.config, run.train):
        bounds = {}
        for k in (nll_samples, 1):  # 1: the ELBO, for how much the k samples tighten the bound
            hint = f"--nll-samples {max(1, k // 10)} would take about a tenth of it" if k > 1 else None
            with Progress(len(test_x), f"log p(x), k = {k}", "image", hint=hint) as bar:
                bounds[k] = finite_or_none(log_px(model, test_x, k, seed=seed, progress=bar,
                                                  precision=nll_precision).mean())
        entry["test_nll"] = None if bounds[nll_samples] is None else -bounds[nll_samples]
        entry["test_elbo"], entry["nll_samples"] = bounds[1], nll_samples
        if nll_precision != "fp32":  # said only where it is not the default, so older entries read the same
            entry["nll_precision"] = nll_precision
    codes = encode_means(model, test_x)
    if config.model == "vae":
        entry["active_units"] = active_units(codes)
        entry["mutual_information"], entry["marginal_kl"] = map(finite_or_none, kl_split_of(model, test_x, seed))
    else:
        entry["dead_units"] = dead_units(codes)
    for m in METRICS:  # the metrics that measure themselves from the model (metrics.Metric)
        if m.measure is not None and m.applies(config, train):
            entry[m.key] = finite_or_none(m.measure(model, splits, seed))
    if judge is not None:
        net, test_features = judge
        reconstructions = reconstruct(model, test_x)
        entry["classifier_accuracy"] = finite_or_none(accuracy(net, reconstructions, test_y))
        # the VAE's samples twice: from its prior, and from a Gaussian fitted to its training codes as the
        # Autoencoder's are, which tells whether prior draws fall where no image was encoded
        for key, aggregate in [("frechet_distance", False)] + [("frechet_aggregate", True)] * (config.model == "vae"):
            try:
                samples = generate(model, splits["train"][0], N_GENERATED, seed, aggregate)
                entry[key] = finite_or_none(frechet_distance(features(net, samples), test_features))
            except RuntimeError:  # a code distribution too degenerate to fit or factor
                entry[key] = None
    return entry


MEASURES_VERSION = 2  # bump when measure_run measures differently: every cached measurement is then redone


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
    checkpoint, the seed, the NLL's settings, the classifier, PyTorch's version and the device (its
    name: a GPU draws other z than the CPU from the same seed, and another CPU's kernels round
    differently). The NLL's precision at its first value (float32) is left out."""
    likelihood = defines_likelihood(run.config, run.train)
    key = {"measures": MEASURES_VERSION, "checkpoint_sha256": sha256(run.path), "seed": args.seed,
           "nll_samples": args.nll_samples if likelihood else None, "classifier_sha256": classifier_sha,
           "torch": str(torch.__version__), "device": device_name(device)}
    if likelihood and args.nll_samples and args.nll_precision != "fp32":
        key["nll_precision"] = args.nll_precision
    extra = [m.key for m in METRICS if m.measure is not None]  # a metric declared later is measured anew
    if extra:
        key["metrics"] = extra
    return key


def measure_all(args):
    """Every finished run's entry, and the classifier's figures (None with --no-classifier)."""
    device = pick_device(args.device)
    check_precision(args.nll_precision, device)
    out = dataset_folder(args.out, args.dataset)
    runs = load_runs(dataset_folder(args.checkpoints or args.out, args.dataset), device, args.dataset)
    loaded = {}

    def splits(split_seed, binarize=False):  # the images runs are measured on, each set loaded once
        if (split_seed, binarize) not in loaded:
            loaded[split_seed, binarize] = load_splits(args.data_dir, split_seed, device, fetch=False,
                                                       binarize=binarize, dataset=args.dataset)
        return loaded[split_seed, binarize]

    judge, classifier_info = None, None
    if not args.no_classifier:
        split_seed = min((run.train.split_seed for run in runs), key=lambda s: (isinstance(s, str), s))
        reference = splits(split_seed)
        path = args.classifier or os.path.join(out, "classifier.pt")
        net, test_accuracy = load_or_train(path, reference, split_seed, args.dataset)
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
