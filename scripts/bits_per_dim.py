"""Bits per dimension of VAEs with a Gaussian decoder on MNIST's grey test images, as a density:
each byte image dequantized once, y = (x + u) / 256 with u ~ U[0, 1), and log p(y) bounded from below
by the k-sample importance-weighted estimate (vaestudy.metrics.dequantized_bits_per_dim). The bits
per dimension are an upper bound on the code length of the bytes; lower is better, 8 is what a
uniform density on [0, 1) gives. One row per checkpoint, the ELBO's (k = 1) beside the bound's, and the
same again with the decoder's variance refitted to the network on the training images (no retraining),
beside the floor that no scalar variance can go below at the network's error.

    python scripts/bits_per_dim.py CHECKPOINT [CHECKPOINT ...] --samples 1000 --json PATH
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vaestudy.cli import ArgumentParser, Progress, UserError, add_place_flags, check_seeds, run_cli  # noqa: E402


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("checkpoints", nargs="+", help="VAE checkpoints with a Gaussian decoder (--recon mse, gaussian or "
                                                   "gaussian-optimal)")
    p.add_argument("--samples", type=int, default=1000, help="importance samples k per image (default: %(default)s)")
    p.add_argument("--images", type=int, default=10000,
                   help="the first N test images (default: %(default)s, all of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dequantization and of the draws (default: 0)")
    p.add_argument("--json", default=None, help="also write the rows there (default: print only)")
    add_place_flags(p, dataset=False)  # each checkpoint names its dataset
    args = p.parse_args(argv)
    if args.samples < 1 or args.images < 1:
        p.error("--samples and --images must be at least 1")
    check_seeds(seed=args.seed)
    return args


def main(argv=None):
    args = get_args(argv)
    import torch

    from vaestudy.checkpoints import load_run
    from vaestudy.data import load_splits
    from vaestudy.device import pick_device, provenance
    from vaestudy.files import atomic_write
    from vaestudy.metrics import (
        decoder_sigma,
        dequantized,
        dequantized_bits_per_dim,
        gaussian_elbo_bits,
        per_image_errors,
        refitted_sigma2,
    )
    from vaestudy.runs import gaussian_decoder, run_name

    device = pick_device(args.device)
    runs = [load_run(path, device) for path in args.checkpoints]
    for run in runs:
        if not gaussian_decoder(run.config, run.train):
            raise UserError(f"{run.path} has no Gaussian decoder on grey pixels: bits per dimension are for VAEs "
                            "trained with --recon mse, gaussian or gaussian-optimal")
    rows = []
    for run in runs:
        splits = load_splits(args.data_dir, run.train.split_seed, device, fetch=False, dataset=run.train.dataset)
        x = splits["test"][0][:args.images]
        name = run_name(run.config, run.train, seed=True)
        row = {"checkpoint": run.path, "run": name, "latent": run.config.latent, "seed": run.train.seed,
               "recon": run.train.recon, "images": len(x), "samples": args.samples, "dequantization_seed": args.seed,
               "decoder_sigma": float(decoder_sigma(run.model, None, None)) if run.model.log_sigma2 is not None
               else 0.5 ** 0.5}
        # the same network with the variance that fits it best on the training images, and the floor of any
        # scalar variance at its error on these dequantized test images (metrics.gaussian_elbo_bits)
        refitted = refitted_sigma2(run.model, splits["train"][0], args.seed)
        row["refitted_sigma"] = float(refitted.sqrt())
        squared_error, kl = per_image_errors(run.model, dequantized(x, args.seed), sample=True, seed=args.seed)
        row["test_mse_sampled"], row["test_kl"] = float(squared_error.double().mean() / x.shape[1]), float(kl.mean())
        row["elbo_floor"] = gaussian_elbo_bits(row["test_mse_sampled"], 0.0, row["test_mse_sampled"], x.shape[1])
        for key, k, sigma2 in (("bits_per_dim", args.samples, None), ("bits_per_dim_k1", 1, None),
                               ("bits_per_dim_refitted", args.samples, refitted),
                               ("bits_per_dim_refitted_k1", 1, refitted)):
            what = f"{name}: bits per dimension, k = {k}" + (", refitted sigma" if sigma2 is not None else "")
            with Progress(len(x), what, "image") as bar, torch.no_grad():
                row[key] = float(dequantized_bits_per_dim(run.model, x, k, run.train.recon, args.seed, bar, sigma2))
        row["measured_by"] = provenance(device)
        rows.append(row)
        print(f"{name}: {row['bits_per_dim']:.4f} bits/dim (k = {args.samples}), ELBO {row['bits_per_dim_k1']:.4f}, "
              f"decoder sigma {row['decoder_sigma']:.4f}; refitted sigma {row['refitted_sigma']:.4f}: "
              f"{row['bits_per_dim_refitted']:.4f} bits/dim; the floor at its error {row['elbo_floor']:.4f}; "
              f"{len(x):,} test images", flush=True)
    if args.json:
        payload = json.dumps(rows, indent=1, allow_nan=False)
        atomic_write(args.json, lambda f: f.write(payload), mode="w")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
