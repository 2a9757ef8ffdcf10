"""Train the study's Autoencoder and VAE on MNIST: one checkpoint per run (runs.py says what a run is).

    python train.py                          # the whole study: both models, latent 2 5 10 20 50 100
    python train.py --model vae --latent 20  # one run
    python train.py --model vae --beta 0.5   # a variant: its own files, under output/VAE/beta_0.5/
"""
import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

from common import (UserError, check_precision, check_seeds, load_checkpoint, pick_device, run_cli, run_lock, save_checkpoint,
                    versions, CHECKPOINT_FORMAT)
from data import load_splits
from metrics import evaluate
from models import (MODEL_NAMES, PRECISIONS, ModelConfig, build_model, iw_bound, log_weights, loss_terms,
                    matmul_precision)
from runs import Run, TrainConfig, checkpoint_path, group_label, planned_runs, variant, variant_label

# Subnormal floats (below 1.2e-38) are common late in training, as gradients of saturated sigmoids at
# MNIST's always-black border pixels and Adam moments of dead units, and take a slow path on CPUs: a
# trained Autoencoder's steps ran 2.8x faster with them read and written as zero. Done on import,
# before PyTorch starts its threads, because they inherit the setting from the thread creating them.
torch.set_flush_denormal(True)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="both", choices=["ae", "vae", "both"], help="which model to train (default: both)")
    p.add_argument("--latent", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100],
                   help="latent sizes to sweep (default: 2 5 10 20 50 100, the study's)")
    p.add_argument("--epochs", type=int, default=50, help="epochs per run (default: 50)")
    # What follows up to --split-seed decides what a run learns: any value but the default makes a
    # variant of the study, a run with files of its own (runs.py); the defaults are the study's.
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                   help="AdamW weight decay (default: %(default)s, PyTorch's)")
    p.add_argument("--beta", type=float, default=TrainConfig.beta, help="weight of the KL term, VAE only (default: %(default)s)")
    p.add_argument("--recon", default=TrainConfig.recon, choices=["mse", "bce"],
                   help="reconstruction loss summed over pixels: mse or bce (default: %(default)s, the study's)")
    p.add_argument("--binarize", action="store_true",
                   help="dynamically binarized MNIST: training pixels drawn 0/1 anew at every use, validation and "
                        "test drawn once with data.BINARIZE_SEED; needs --recon bce (default: off, grey pixels)")
    p.add_argument("--iw-samples", type=int, default=TrainConfig.iw_samples,
                   help="VAE only: train on the K-sample importance-weighted bound (IWAE); 1 is the ELBO "
                        "(default: %(default)s)")
    p.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS,
                   help="number format of the matmuls: fp32, or bf16 with float32 weights, optimizer and loss "
                        "(default: %(default)s, the study's)")
    p.add_argument("--hidden", type=int, nargs="+", default=list(ModelConfig.hidden),
                   help="encoder hidden widths, mirrored in the decoder (default: 784 784)")
    p.add_argument("--code-relu", action="store_true",
                   help="Autoencoder only: a ReLU on the code, as the study built it (default: off, a linear code)")
    p.add_argument("--seed", type=int, nargs="+", default=[TrainConfig.seed],
                   help="seeds of initialisation, batch order and sampling; several give error bars (default: 0)")
    p.add_argument("--split-seed", type=int, default=TrainConfig.split_seed,
                   help="seed of the 54k/6k train/val split (default: %(default)s)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives or is fetched to (default: data)")
    p.add_argument("--out", default="output", help="folder for checkpoints and figures (default: output)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    p.add_argument("--resume", action="store_true",
                   help="continue each run from its checkpoint; finished runs are skipped (default: off)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on N images of the training split only: the first N of its fixed random order, "
                        "for smoke runs (default: all 54,000)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch (default: PyTorch's, all cores; --launcher local shares them out)")
    # Sweeps past one machine (launch.py): every run a job of its own, through submitit
    p.add_argument("--launcher", default="none", choices=["none", "local", "slurm"],
                   help="none: the runs one after another, here; local: --jobs processes here; slurm: one job "
                        "array on a SLURM cluster (default: none)")
    p.add_argument("--jobs", type=int, default=2,
                   help="local: runs at a time, one GPU each where there are several, else a share of the "
                        "CPU cores (default: 2)")
    p.add_argument("--wait", action="store_true",
                   help="slurm: wait for the jobs to end, then report as local does (default: submit and return)")
    p.add_argument("--partition", default=None, help="slurm: partition (default: the cluster's default)")
    p.add_argument("--time-min", type=int, default=60,
                   help="time limit of a run in minutes; a run stopped by it is requeued and resumes (default: 60)")
    p.add_argument("--gpus-per-run", type=int, default=1, help="slurm: GPUs per run, 0 for CPU nodes (default: 1)")
    p.add_argument("--cpus-per-run", type=int, default=4, help="slurm: CPUs per run (default: 4)")
    p.add_argument("--max-running", type=int, default=64, help="slurm: most runs running at once (default: 64)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "lr"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if min(args.latent) < 1 or min(args.hidden) < 1:
        p.error("--latent and --hidden sizes must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    for name in ("threads", "jobs", "time_min", "cpus_per_run", "max_running"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    check_seeds(seed=args.seed, split_seed=args.split_seed)
    if args.weight_decay < 0 or args.beta < 0:
        p.error("--weight-decay and --beta must not be negative")
    # a setting that changes nothing for a model would retrain its study run under another name
    if args.beta != TrainConfig.beta and args.model != "vae":
        p.error("--beta weighs the VAE's KL term; the Autoencoder has none: add --model vae")
    if args.iw_samples < 1:
        p.error("--iw-samples must be at least 1")
    if args.iw_samples != TrainConfig.iw_samples and (args.model != "vae" or args.beta != TrainConfig.beta):
        p.error("--iw-samples bounds the VAE's log-likelihood, with beta 1: add --model vae (and no --beta)")
    # MSE on 0/1 pixels would be a Gaussian around values that are never in between: no likelihood of them
    if args.binarize and args.recon != "bce":
        p.error("--binarize is for the Bernoulli decoder: add --recon bce")
    if args.code_relu and args.model != "ae":
        p.error("--code-relu is for the Autoencoder: add --model ae")
    return args


def rng_state(generator):
    state = {"torch": torch.get_rng_state(), "batch_order": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batch_order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_epoch(model, step, x, batch_size, generator):
    """One pass over x in a random order; returns per-batch [loss, squared error sum, KL sum].

    The statistics stay on the device and are read once per epoch: reading them per batch
    would make the host wait for the accelerator at every step.
    """
    order = torch.randperm(len(x), generator=generator).to(x.device)
    n_batches = -(-len(x) // batch_size)
    stats = torch.empty(n_batches, 3, device=x.device)
    for b in range(n_batches):
        stats[b] = step(x[order[b * batch_size:(b + 1) * batch_size]])
    return stats


def make_step(model, optimizer, recon, beta, compile=False, binarize=False, iw_samples=1, precision="fp32"):
    forward = torch.compile(model) if compile else model

    def step(x):
        if binarize:  # a new 0/1 draw of each image at each use, from the global RNG that checkpoints save
            x = torch.bernoulli(x)
        with matmul_precision(precision, x.device.type):  # the model hands back float32 either way
            x_hat, mu, logvar = forward(x)
            log_w = log_weights(model, x, iw_samples, recon) if iw_samples > 1 else None
        loss, squared_error, kl = loss_terms(x, x_hat, mu, logvar, recon, beta)
        if log_w is not None:  # the IWAE's bound replaces the ELBO; the squared error and KL are still logged
            loss = -iw_bound(log_w).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return torch.stack([loss.detach(), squared_error.detach().sum(), kl.detach().sum()])

    return step


def existing_checkpoint(path, config, train, resume, device):
    """The checkpoint already at path when it holds this very run (None when there is none, or when it
    is unreadable and is not to be resumed); a different run there is refused, never overwritten."""
    if not os.path.exists(path):
        return None
    try:
        theirs = Run(path, *load_checkpoint(path, device))
    except UserError:
        if resume:
            raise
        return None  # retrained from scratch: the damaged file holds nothing to keep
    if (theirs.config, theirs.train) != (config, train):  # e.g. written before file names carried the settings
        raise UserError(f"{path} holds another run ({variant_label(theirs.variant)}, seed "
                        f"{theirs.train.seed}); move it elsewhere to keep it, then run again")
    return theirs.ckpt


def train_run(args, config, train, path, splits, device):
    """Train one run, saving its checkpoint to path after every epoch."""
    run_args = {**vars(args), "model": config.model, "latent": config.latent, "seed": train.seed}
    torch.manual_seed(train.seed)
    model = build_model(config).to(device)
    # fused: one kernel per step for all parameters instead of a dozen small ops per tensor
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True)
    generator = torch.Generator().manual_seed(train.seed)
    history = {k: [] for k in ("train_loss", "train_mse", "train_kl", "val_mse", "val_kl", "seconds")}
    start_epoch = 0
    ckpt = existing_checkpoint(path, config, train, args.resume, device)
    if args.resume and ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], generator)
        history, start_epoch = ckpt["history"], ckpt["epoch"]
        if start_epoch >= args.epochs:
            print(f"skipped {path}: already trained for {start_epoch} epochs")
            return
    elif os.path.exists(path):
        print(f"retraining {path} from scratch; it is replaced after the first epoch (--resume continues it instead)")
    model.train()
    step = make_step(model, optimizer, train.recon, train.beta, args.compile, train.binarize, train.iw_samples,
                     train.precision)
    train_x, val_x = splits["train"][0], splits["val"][0]
    pixels = train_x.shape[1]
    name = f"{group_label(MODEL_NAMES[config.model], variant_label(variant(config, train)))} latent {config.latent}"
    bar = tqdm(range(start_epoch, args.epochs), desc=name,
               initial=start_epoch, total=args.epochs, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        stats = train_epoch(model, step, train_x, train.batch_size, generator).cpu()  # one sync per epoch
        bad = (~torch.isfinite(stats[:, 0])).nonzero()
        if len(bad):
            kept = f"the last good checkpoint ({path}, epoch {epoch}) is kept" if epoch else "nothing was saved"
            raise UserError(f"{name}: the loss became non-finite at epoch "
                            f"{epoch + 1}, batch {int(bad[0]) + 1}; {kept}; try a lower --lr")
        val_se, val_kl = evaluate(model, val_x, sample=True)
        history["train_loss"].append(stats[:, 0].mean().item())
        history["train_mse"].append(stats[:, 1].sum().item() / (len(train_x) * pixels))
        history["train_kl"].append(stats[:, 2].sum().item() / len(train_x))
        history["val_mse"].append(val_se.mean().item() / pixels)
        history["val_kl"].append(val_kl.mean().item())
        history["seconds"].append(time.perf_counter() - t0)
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": config.to_dict(), "args": run_args, "epoch": epoch + 1, "history": history,
            "split_seed": train.split_seed, "rng": rng_state(generator), "versions": versions()})
        bar.set_postfix(train_mse=f"{history['train_mse'][-1]:.4f}", val_mse=f"{history['val_mse'][-1]:.4f}",
                        val_kl=f"{history['val_kl'][-1]:.2f}")
    bar.close()
    print(f"saved {path}")


def main(argv=None):
    args = get_args(argv)
    if args.launcher != "none":
        try:
            from launch import launch  # only here: submitit is needed for launching alone
        except ImportError as e:
            raise UserError(f"--launcher {args.launcher} needs {e.name or 'submitit'}: pip install -r requirements.txt")
        return launch(args, sys.argv[1:] if argv is None else argv)
    device = pick_device(args.device)
    check_precision(args.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~8x the fp32 rate, ample for this loss
        torch.backends.cudnn.allow_tf32 = True
    splits = load_splits(args.data_dir, args.split_seed, device, args.limit, binarize=args.binarize)
    threads = torch.get_num_threads()  # restored on return: a caller (a test, a notebook) keeps its own
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for config, train in planned_runs(args):
            path = checkpoint_path(args.out, config, train)
            with run_lock(path):
                train_run(args, config, train, path, splits, device)
    except KeyboardInterrupt:
        raise UserError("interrupted; every finished epoch is saved: add --resume to the same command to continue")
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run_cli(main)
