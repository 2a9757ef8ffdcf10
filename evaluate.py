"""Measure every checkpoint on the validation split and the official test set, and pick a latent size.

    python evaluate.py      # writes output/results.json, output/results.md and the plots of the numbers
    python evaluate.py --out results/study --report-only   # re-render results.md and the plots from results.json alone
    python evaluate.py --dataset fashion-mnist             # the Fashion-MNIST runs: output/fashion-mnist/results.md

Per model, variant and latent size (mean and spread over the seeds found): per-pixel MSE overall and
per digit (the VAE both with z = mu and with one sampled z, as the study measured), the VAE's KL and
active units, the Autoencoder's dead code units, a digit classifier's accuracy on the
reconstructions, and the Frechet distance of decoded samples to the test set. Everything is measured
in float32, whatever precision a run trained in (the test NLL too, unless --nll-precision bf16).
"""
import json
import os
import textwrap

from vaestudy.cli import ArgumentParser, UserError, add_place_flags, check_seeds, next_steps, out_flag, run_cli
from vaestudy.runs import PRECISIONS


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    add_place_flags(p, "where results.json, results.md and the plots of the numbers go", checkpoints=True)
    p.add_argument("--seed", type=int, default=0, help="seed of sampled z and generated images (default: 0)")
    p.add_argument("--classifier", default=None,
                   help="the dataset's classifier checkpoint, trained there on first use (default: classifier.pt "
                        "beside results.json)")
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


def main(argv=None):
    args = get_args(argv)  # before PyTorch is imported (2 s here): --help and a mistyped flag answer at once
    from vaestudy.datasets import DATASETS, DEFAULT, dataset_folder
    from vaestudy.device import cuda_tf32, deterministic_cudnn
    from vaestudy.evaluation import measure_all
    from vaestudy.files import atomic_write
    from vaestudy.plots import plot_results
    from vaestudy.report import printed_summary, report
    from vaestudy.stats import TOLERANCE, selections, summarize

    out = dataset_folder(args.out, args.dataset)  # MNIST's at the top; another dataset's in a folder of its own
    path, dataset = os.path.join(out, "results.json"), args.dataset
    if args.report_only:
        try:
            with open(path) as f:
                previous = json.load(f)
            entries, classifier_info, seed = previous["runs"], previous["classifier"], previous["seed"]
            dataset = previous.get("dataset", DEFAULT)  # written before there were others: MNIST
            # entries from before the record of where a run was made say so, rather than guess
            entries = [{**e, **{k: "unknown" for k in ("trained_by", "measured_by") if k not in e}} for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--report-only needs a readable {path} ({getattr(e, 'strerror', None) or e})")
    else:
        # measured in float32, as the docs say, even on a GPU and after training, and the same on every run
        with cuda_tf32(False), deterministic_cudnn():
            (entries, classifier_info), seed = measure_all(args), args.seed
    summary = summarize(entries)
    rule = (f"within each model and variant, lowest validation MSE (z = mu); 'selected' is the smallest latent "
            f"size whose validation MSE is within {TOLERANCE:.0%} of that lowest")
    results = {"dataset": dataset, "selection_rule": rule, "seed": seed,
               "split_seeds": sorted({e["split_seed"] for e in entries}, key=str),
               "classifier": classifier_info, "selection": selections(summary), "summary": summary, "runs": entries}
    text = report(results)
    payload = json.dumps(results, indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(payload), mode="w")
    atomic_write(os.path.join(out, "results.md"), lambda f: f.write(text), mode="w")
    floor = classifier_info and classifier_info["frechet_floor_val_vs_test"]
    figures = plot_results(summary, floor, out, DATASETS[dataset])
    print(printed_summary(results))
    print("\n".join(textwrap.wrap(f"wrote {os.path.join(out, 'results.md')} (every table and what each "
                                 f"column means: open it first), {path} and {len(figures)} plots of the numbers "
                                 f"under {out}", 100, subsequent_indent="  ")))
    next_steps(f"python visualize.py{out_flag(args.out, args.dataset)}   draws reconstructions, decodings, curves, "
               "the explorer")


if __name__ == "__main__":
    run_cli(main)
