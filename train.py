"""Train the study's Autoencoder and VAE on MNIST: one checkpoint per run (vaestudy/runs.py says what a run is).

    python train.py                          # the whole study: both models, latent 2 5 10 20 50 100
    python train.py --model vae --latent 20  # one run
    python train.py --model vae --beta 0.5   # a variant: its own files, under output/VAE/beta_0.5/
"""
import os
import sys
import time

import torch

from models import PRECISIONS, ModelConfig, build_model, cuda_tf32
from vaestudy.checkpoints import (
    Saver,
    checkpoint,
    epochs_done,
    existing_checkpoint,
    restore_rng_state,
    rng_state,
    run_lock,
)
from vaestudy.cli import ArgumentParser, UserError, add_place_flags, check_seeds, model_kind, run_cli
from vaestudy.data import load_splits
from vaestudy.device import check_precision, flush_subnormals, pick_device
from vaestudy.metrics import per_image_errors
from vaestudy.runs import STUDY_EPOCHS, TrainConfig, checkpoint_path, objective, planned_runs, run_name
from vaestudy.step import make_optimizer, make_step, train_epoch
from vaestudy.sweep import LiveView, Stopped, Sweep, stop_signals, stopped

flush_subnormals()  # on import, before PyTorch starts its threads


def get_args(argv=None):
    """Every flag and its default; any mistake is two short lines and exit code 2."""
    p = ArgumentParser(__doc__)
    g = p.add_argument_group("which runs")
    g.add_argument("--model", default="both", type=model_kind, help="ae, vae or both (default: both)")
    g.add_argument("--latent", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100],
                   help="latent sizes to sweep (default: 2 5 10 20 50 100, the study's)")
    g.add_argument("--seed", type=int, nargs="+", default=[TrainConfig.seed],
                   help="seeds of initialisation, batch order and sampling; several give error bars (default: 0)")
    g.add_argument("--epochs", type=int, default=STUDY_EPOCHS,
                   help="epochs per run (default: %(default)s, the study's)")
    g.add_argument("--resume", action="store_true",
                   help="continue each run from its checkpoint; finished runs are skipped (default: off)")
    g = p.add_argument_group("what a run learns: any value but the default (the study's) makes a variant, a run "
                             "with files of its own (vaestudy/runs.py)")
    g.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="images per step (default: %(default)s)")
    g.add_argument("--lr", type=float, default=TrainConfig.lr, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                   help="AdamW weight decay (default: %(default)s, PyTorch's)")
    g.add_argument("--beta", type=float, default=TrainConfig.beta,
                   help="weight of the KL term, VAE only (default: %(default)s)")
    g.add_argument("--recon", default=TrainConfig.recon, choices=["mse", "bce"],
                   help="reconstruction loss summed over pixels: mse or bce (default: %(default)s, the study's)")
    g.add_argument("--binarize", action="store_true",
                   help="dynamically binarized MNIST: training pixels drawn 0/1 anew at every use, validation and "
                        "test drawn once with vaestudy.data.BINARIZE_SEED; needs --recon bce "
                        "(default: off, grey pixels)")
    g.add_argument("--iw-samples", type=int, default=TrainConfig.iw_samples,
                   help="VAE only: train on the K-sample importance-weighted bound (IWAE); 1 is the ELBO "
                        "(default: %(default)s)")
    g.add_argument("--precision", default=TrainConfig.precision, choices=PRECISIONS,
                   help="number format of the matmuls: fp32, or bf16 with float32 weights, optimizer and loss "
                        "(default: %(default)s, the study's)")
    g.add_argument("--hidden", type=int, nargs="+", default=list(ModelConfig.hidden),
                   help="encoder hidden widths, mirrored in the decoder (default: 784 784)")
    g.add_argument("--code-relu", action="store_true",
                   help="Autoencoder only: a ReLU on the code, as the study built it (default: off, a linear code)")
    g.add_argument("--split-seed", type=int, default=TrainConfig.split_seed,
                   help="seed of the 54k/6k train/val split (default: %(default)s)")
    g.add_argument("--limit", type=int, default=None,
                   help="train on N images of the training split only: the first N of its fixed random order, "
                        "for smoke runs (default: all 54,000)")
    add_place_flags(p.add_argument_group("where"), "folder for checkpoints and figures")
    g = p.add_argument_group("how the runs go: this machine's threads, or jobs through submitit "
                             "(vaestudy/launch.py)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    g.add_argument("--save-every-s", type=float, default=30,
                   help="save a run's checkpoint at most every this many seconds; its last epoch, Ctrl-C, SIGTERM "
                        "and SLURM's SIGUSR2 always save every finished epoch; 0 saves after each epoch (default: 30)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write each run's per-epoch figures and reconstructions as TensorBoard events in "
                        "tensorboard/ beside its checkpoint: tensorboard --logdir output (default: off)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch (default: PyTorch's, all cores; --launcher local shares them out)")
    g.add_argument("--launcher", default="none", choices=["none", "local", "slurm"],
                   help="none: the runs one after another, here; local: --jobs processes here; slurm: one job "
                        "array on a SLURM cluster (default: none)")
    g.add_argument("--jobs", type=int, default=2,
                   help="local: runs at a time, spread over the GPUs (sharing them when there are more jobs than "
                        "GPUs), else each with a share of the CPU cores (default: 2)")
    g.add_argument("--wait", action="store_true",
                   help="slurm: wait for the jobs to end, then report as local does (default: submit and return)")
    g.add_argument("--partition", default=None, help="slurm: partition (default: the cluster's default)")
    g.add_argument("--time-min", type=int, default=60,
                   help="time limit of a run in minutes; a run stopped by it is requeued and resumes (default: 60)")
    g.add_argument("--gpus-per-run", type=int, default=1, help="slurm: GPUs per run, 0 for CPU nodes (default: 1)")
    g.add_argument("--cpus-per-run", type=int, default=4, help="slurm: CPUs per run (default: 4)")
    g.add_argument("--max-running", type=int, default=64, help="slurm: most runs running at once (default: 64)")
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
    view = LiveView(path, start_epoch, args.epochs) if args.tensorboard else None
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
            if view:
                view.epoch_done(epoch + 1, history, model, val_x[:16])
            figures = (f"loss {history['train_loss'][-1]:.2f} ({loss_name}), train MSE {history['train_mse'][-1]:.4f}, "
                       f"val MSE {history['val_mse'][-1]:.4f}"
                       + (f", val KL {history['val_kl'][-1]:.2f}" if config.model == "vae" else ""))
            bar.update(1)
            bar.set_postfix_str(figures)
            sweep.epoch_done(f"{name}: epoch {epoch + 1} of {args.epochs}: {figures}")
    except BaseException:
        saver.flush()  # every finished epoch is kept, never a part of one
        raise
    finally:
        if view:
            view.close()
    bar.close()
    print(f"saved {path}")


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
                sweep.finished = 0
                with run_lock(path):
                    train_run(args, config, train, path, splits, device, sweep, i)
    except (KeyboardInterrupt, Stopped) as e:
        raise stopped(e, path, sweep.finished)
    finally:
        sweep.bar.close()
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run_cli(main)
