"""Train the study's Autoencoder and VAE on MNIST, one checkpoint per (model, latent size, seed).

    python train.py                          # the whole study: both models, latent 2 5 10 20 50 100
    python train.py --model vae --latent 20  # one run
"""
import argparse
import os
import time

import torch
from tqdm import tqdm

from common import (UserError, checkpoint_path, load_checkpoint, pick_device, run_cli, run_lock,
                    save_checkpoint, versions, CHECKPOINT_FORMAT)
from data import load_splits
from evaluate import evaluate
from models import MODEL_NAMES, ModelConfig, build_model, loss_terms

# Arguments that shape the training trajectory: a resumed run must agree on all of them.
TRAJECTORY_ARGS = ("batch_size", "lr", "weight_decay", "beta", "recon", "hidden", "seed", "split_seed", "limit")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="both", choices=["ae", "vae", "both"], help="which model to train (default: both)")
    p.add_argument("--latent", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100],
                   help="latent sizes to sweep (default: 2 5 10 20 50 100, the study's)")
    p.add_argument("--epochs", type=int, default=50, help="epochs per run (default: 50)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per step (default: 1024)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: 1e-2, PyTorch's)")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term, VAE only (default: 1)")
    p.add_argument("--recon", default="mse", choices=["mse", "bce"],
                   help="reconstruction loss summed over pixels: mse or bce (default: mse, the study's)")
    p.add_argument("--hidden", type=int, nargs="+", default=[784, 784],
                   help="encoder hidden widths, mirrored in the decoder (default: 784 784)")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="seeds of initialisation, batch order and sampling; several give error bars (default: 0)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 54k/6k train/val split (default: 0)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives or is fetched to (default: data)")
    p.add_argument("--out", default="output", help="folder for checkpoints and figures (default: output)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    p.add_argument("--resume", action="store_true",
                   help="continue each run from its checkpoint; finished runs are skipped (default: off)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N training images only, for smoke runs (default: all 54,000)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "lr"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if min(args.latent) < 1 or min(args.hidden) < 1:
        p.error("--latent and --hidden sizes must be at least 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    if args.weight_decay < 0 or args.beta < 0:
        p.error("--weight-decay and --beta must not be negative")
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


def make_step(model, optimizer, recon, beta, compile=False):
    forward = torch.compile(model) if compile else model

    def step(x):
        x_hat, mu, logvar = forward(x)
        loss, squared_error, kl = loss_terms(x, x_hat, mu, logvar, recon, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return torch.stack([loss.detach(), squared_error.detach().sum(), kl.detach().sum()])

    return step


def train_run(args, path, kind, latent, seed, splits, device):
    """Train one (model, latent size, seed) run, saving a checkpoint to path after every epoch."""
    run_args = {**vars(args), "model": kind, "latent": latent, "seed": seed}
    config = ModelConfig(model=kind, latent=latent, hidden=tuple(args.hidden))
    torch.manual_seed(seed)
    model = build_model(config).to(device)
    # fused: one kernel per step for all parameters instead of a dozen small ops per tensor
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    generator = torch.Generator().manual_seed(seed)
    history = {k: [] for k in ("train_loss", "train_mse", "train_kl", "val_mse", "val_kl", "seconds")}
    start_epoch = 0
    if args.resume and os.path.exists(path):
        ckpt, _ = load_checkpoint(path, device)
        if ckpt["config"] != config.to_dict() or any(ckpt["args"].get(k) != run_args[k] for k in TRAJECTORY_ARGS):
            raise UserError(f"{path} was trained with other settings; resume with the same flags or drop --resume")
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
    step = make_step(model, optimizer, args.recon, args.beta, args.compile)
    train_x, val_x = splits["train"][0], splits["val"][0]
    pixels = train_x.shape[1]
    bar = tqdm(range(start_epoch, args.epochs), desc=f"{MODEL_NAMES[kind]} latent {latent}",
               initial=start_epoch, total=args.epochs, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        stats = train_epoch(model, step, train_x, args.batch_size, generator).cpu()  # one sync per epoch
        bad = (~torch.isfinite(stats[:, 0])).nonzero()
        if len(bad):
            kept = f"the last good checkpoint ({path}, epoch {epoch}) is kept" if epoch else "nothing was saved"
            raise UserError(f"{MODEL_NAMES[kind]} latent {latent}: the loss became non-finite at epoch "
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
            "split_seed": args.split_seed, "rng": rng_state(generator), "versions": versions()})
        bar.set_postfix(train_mse=f"{history['train_mse'][-1]:.4f}", val_mse=f"{history['val_mse'][-1]:.4f}",
                        val_kl=f"{history['val_kl'][-1]:.2f}")
    bar.close()
    print(f"saved {path}")


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~8x the fp32 rate, ample for this loss
        torch.backends.cudnn.allow_tf32 = True
    splits = load_splits(args.data_dir, args.split_seed, device, args.limit)
    kinds = ["ae", "vae"] if args.model == "both" else [args.model]
    runs = [(kind, latent, seed) for seed in args.seed for kind in kinds for latent in args.latent]
    try:
        for kind, latent, seed in runs:
            path = checkpoint_path(args.out, kind, latent, seed)
            with run_lock(path):
                train_run(args, path, kind, latent, seed, splits, device)
    except KeyboardInterrupt:
        raise UserError("interrupted; every finished epoch is saved: add --resume to the same command to continue")


if __name__ == "__main__":
    run_cli(main)
