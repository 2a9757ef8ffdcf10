"""Train the study's Autoencoder and VAE on MNIST: one checkpoint per run (vaestudy/runs.py says what a run is).

    python train.py                          # the whole study: both models, latent 2 5 10 20 50 100
    python train.py --model vae --latent 20  # one run
    python train.py --model vae --beta 0.5   # a variant: its own files, under output/VAE/beta_0.5/
"""
import argparse
import contextlib
import os
import signal
import sys
import threading
import time

import torch

from models import PRECISIONS, ModelConfig, build_model, cuda_tf32
from vaestudy.checkpoints import Saver, checkpoint, load_run, restore_rng_state, rng_state, run_lock
from vaestudy.cli import ArgumentParser, UserError, add_place_flags, check_seeds, on_terminal, progress, run_cli
from vaestudy.data import load_splits
from vaestudy.device import check_precision, flush_subnormals, pick_device
from vaestudy.metrics import per_image_errors
from vaestudy.runs import STUDY_EPOCHS, TrainConfig, checkpoint_path, planned_runs, run_name
from vaestudy.step import make_optimizer, make_step, train_epoch

flush_subnormals()  # on import, before PyTorch starts its threads


def model_kind(text):
    """--model: ae, vae or both, also as tables write them (Autoencoder, VAE), in any case."""
    kinds = {"ae": "ae", "autoencoder": "ae", "vae": "vae", "both": "both"}
    if text.lower() not in kinds:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from ae, vae, both)")
    return kinds[text.lower()]


def add_sweep_flags(p):
    """Which runs: the models, latent sizes, seeds and epochs."""
    p.add_argument("--model", default="both", type=model_kind, help="ae, vae or both (default: both)")
    p.add_argument("--latent", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100],
                   help="latent sizes to sweep (default: 2 5 10 20 50 100, the study's)")
    p.add_argument("--seed", type=int, nargs="+", default=[TrainConfig.seed],
                   help="seeds of initialisation, batch order and sampling; several give error bars (default: 0)")
    p.add_argument("--epochs", type=int, default=STUDY_EPOCHS,
                   help="epochs per run (default: %(default)s, the study's)")
    p.add_argument("--resume", action="store_true",
                   help="continue each run from its checkpoint; finished runs are skipped (default: off)")


def add_identity_flags(p):
    """What decides what a run learns: any value but the default (the study's) makes a variant of
    the study, a run with files of its own (vaestudy/runs.py)."""
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                   help="AdamW weight decay (default: %(default)s, PyTorch's)")
    p.add_argument("--beta", type=float, default=TrainConfig.beta,
                   help="weight of the KL term, VAE only (default: %(default)s)")
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
    p.add_argument("--split-seed", type=int, default=TrainConfig.split_seed,
                   help="seed of the 54k/6k train/val split (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on N images of the training split only: the first N of its fixed random order, "
                        "for smoke runs (default: all 54,000)")


def add_machine_flags(p):
    """Where and how the runs go: this machine's threads, or jobs through submitit (vaestudy/launch.py)."""
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    p.add_argument("--save-every-s", type=float, default=30,
                   help="save a run's checkpoint at most every this many seconds; its last epoch, Ctrl-C, SIGTERM "
                        "and SLURM's SIGUSR2 always save every finished epoch; 0 saves after each epoch (default: 30)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch (default: PyTorch's, all cores; --launcher local shares them out)")
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


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    add_sweep_flags(p)
    add_identity_flags(p)
    add_place_flags(p, "folder for checkpoints and figures")
    add_machine_flags(p)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be positive")
    if not args.save_every_s >= 0:
        p.error("--save-every-s must not be negative")
    for name in ("threads", "jobs", "time_min", "cpus_per_run", "max_running"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    check_seeds(seed=args.seed, split_seed=args.split_seed)
    try:
        planned_runs(args)  # every rule on the settings, once, where the configs are made
    except ValueError as e:
        p.error(str(e))
    return args


class Stopped(Exception):
    """A request to stop from outside: SIGTERM, or SIGUSR2, which SLURM sends ahead of a time limit or
    a preemption when asked to (submitit asks for it)."""


@contextlib.contextmanager
def stop_signals():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt, SIGTERM and SIGUSR2 raise Stopped, the first one
    only: a second signal while the run saves its finished epochs is ignored, so that the save
    completes. The caller's handlers are back afterwards (signals reach the main thread alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def objective(config, train):
    """What the training loss is, in words: "mse + KL", "bce + 0.5 KL", "-IWAE bound, K = 5"."""
    if train.iw_samples > 1:
        return f"-IWAE bound, K = {train.iw_samples}"
    return train.recon + ("" if config.model == "ae" else f" + {'' if train.beta == 1 else f'{train.beta:g} '}KL")


def existing_checkpoint(path, config, train, resume, device):
    """The checkpoint already at path when it holds this very run (None when there is none, or when it
    is unreadable and is not to be resumed); a different run there is refused, never overwritten."""
    if not os.path.exists(path):
        return None
    try:
        theirs = load_run(path, device)
    except UserError:
        if resume:
            raise
        return None  # retrained from scratch: the damaged file holds nothing to keep
    if (theirs.config, theirs.train) != (config, train):  # e.g. written before file names carried the settings
        raise UserError(f"{path} holds another run ({run_name(theirs.config, theirs.train, seed=True)}); "
                        "move it elsewhere to keep it, then run again")
    return theirs.ckpt


class Sweep:
    """Where a sweep stands: "run 3 of 12" and the time left for all of it, in a bar above each run's
    own bar on a terminal, or at the end of each epoch's line in a log."""

    def __init__(self, n_runs, epochs_left):
        self.n_runs, self.left, self.done, self.start = n_runs, epochs_left, 0, time.perf_counter()
        self.bar = progress(total=epochs_left, desc="sweep", unit="epoch", position=0)
        self.saved = 0  # epochs of the current run saved by this process

    def run_bar(self, i, name, start_epoch, epochs):
        self.place = f"run {i + 1} of {self.n_runs}"
        self.bar.set_description(self.place)
        return progress(total=epochs, initial=start_epoch, desc=name, unit="epoch", position=1, leave=False)

    def epoch_done(self, line):
        self.done, self.saved = self.done + 1, self.saved + 1
        self.bar.update(1)
        if not on_terminal():
            left = (time.perf_counter() - self.start) / self.done * (self.left - self.done)
            print(f"{self.place}, {line}; sweep: {self.done} of {self.left} epochs done, "
                  f"about {left / 60:.0f} min left",
                  flush=True)


def train_run(args, config, train, path, splits, device, sweep, i):
    """Train one run. Its checkpoint is saved at most every --save-every-s seconds, after its last
    epoch, and whenever the run ends early (Ctrl-C, SIGTERM, SIGUSR2, a non-finite loss): always as
    it stood at the end of an epoch, so that --resume continues exactly."""
    ckpt = existing_checkpoint(path, config, train, args.resume, device)
    if args.resume and ckpt is not None and ckpt["epoch"] >= args.epochs:
        print(f"skipped {path}: already trained for {ckpt['epoch']} epochs")
        return
    torch.manual_seed(train.seed)
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, train)
    generator = torch.Generator().manual_seed(train.seed)
    history = {k: [] for k in ("train_loss", "train_mse", "train_kl", "val_mse", "val_kl", "seconds")}
    start_epoch = 0
    if args.resume and ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"], generator, device)
        history, start_epoch = ckpt["history"], ckpt["epoch"]
    elif args.resume:
        print(f"no checkpoint at {path} to resume: starting afresh")
    elif os.path.exists(path):
        print(f"retraining {path} from scratch; it is replaced at the run's first save (--resume continues it instead)")
    model.train()
    step = make_step(model, optimizer, train, args.compile)
    train_x, val_x = splits["train"][0], splits["val"][0]
    pixels, name, loss_name = train_x.shape[1], run_name(config, train), objective(config, train)
    bar = sweep.run_bar(i, name, start_epoch, args.epochs)
    saver = Saver(path, args.save_every_s)
    try:
        for epoch in range(start_epoch, args.epochs):
            t0 = time.perf_counter()
            stats = train_epoch(step, train_x, train.batch_size, generator).cpu()  # one sync per epoch
            bad = (~torch.isfinite(stats[:, 0])).nonzero()
            if len(bad):
                kept = f"the last good checkpoint ({path}, epoch {epoch}) is kept" if epoch else "nothing was saved"
                raise UserError(f"{name}: the loss became non-finite at epoch "
                                f"{epoch + 1}, batch {int(bad[0]) + 1}; {kept}; try a lower --lr")
            val_se, val_kl = per_image_errors(model, val_x, sample=True)
            history["train_loss"].append(stats[:, 0].mean().item())
            history["train_mse"].append(stats[:, 1].sum().item() / (len(train_x) * pixels))
            history["train_kl"].append(stats[:, 2].sum().item() / len(train_x))
            history["val_mse"].append(val_se.mean().item() / pixels)
            history["val_kl"].append(val_kl.mean().item())
            history["seconds"].append(time.perf_counter() - t0)
            saver.epoch_done(checkpoint(config, train, args.epochs, epoch + 1, model, optimizer, history,
                                        rng_state(generator, device)), last=epoch + 1 == args.epochs)
            figures = (f"loss {history['train_loss'][-1]:.2f} ({loss_name}), train MSE {history['train_mse'][-1]:.4f}, "
                       f"val MSE {history['val_mse'][-1]:.4f}"
                       + (f", val KL {history['val_kl'][-1]:.2f}" if config.model == "vae" else ""))
            bar.update(1)
            bar.set_postfix_str(figures)
            sweep.epoch_done(f"{name}: epoch {epoch + 1} of {args.epochs}: {figures}")
    except BaseException:
        saver.flush()  # every finished epoch is kept, never a part of one
        raise
    bar.close()
    print(f"saved {path}")


def epochs_done(path, resume):
    """Epochs a run already has, for the sweep's count of what is left."""
    if not resume or not os.path.exists(path):
        return 0
    try:
        return load_run(path).ckpt["epoch"]
    except UserError:
        return 0  # train_run says what is wrong with it


def main(argv=None):
    args = get_args(argv)
    if args.launcher != "none":
        try:
            from vaestudy.launch import launch  # only here: submitit is needed for launching alone
        except ImportError as e:
            raise UserError(f"--launcher {args.launcher} needs {e.name or 'submitit'}: pip install -r requirements.txt")
        return launch(args, sys.argv[1:] if argv is None else argv)
    device = pick_device(args.device)
    check_precision(args.precision, device)
    splits = load_splits(args.data_dir, args.split_seed, device, args.limit, binarize=args.binarize)
    threads = torch.get_num_threads()  # restored on return: a caller (a test, a notebook) keeps its own
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = [(config, train, checkpoint_path(args.out, config, train)) for config, train in planned_runs(args)]
    sweep = Sweep(len(plan), sum(max(0, args.epochs - epochs_done(path, args.resume)) for _, _, path in plan))
    path = None
    try:
        with stop_signals(), cuda_tf32(True):  # "fp32" training on a GPU is TF32, and only the training
            for i, (config, train, path) in enumerate(plan):
                sweep.saved = 0
                with run_lock(path):
                    train_run(args, config, train, path, splits, device, sweep, i)
    except (KeyboardInterrupt, Stopped) as e:
        how = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped by {e}"
        if sweep.saved or epochs_done(path, True):
            raise UserError(f"{how}; {path} keeps every finished epoch: add --resume to the same command to continue")
        raise UserError(f"{how} before the first epoch of {path} ended: nothing of that run was saved")
    finally:
        sweep.bar.close()
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run_cli(main)
