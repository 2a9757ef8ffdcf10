"""A sweep's training, as train.py asks for it: every planned run, one after another in this process,
each from its first (or last saved) epoch to its last, saved as it goes (vaestudy/checkpoints.py)."""
import time

import torch

from models import build_model
from vaestudy.checkpoints import (
    Saver,
    check_plan,
    checkpoint,
    epochs_done,
    existing_checkpoint,
    restore_rng_state,
    rng_state,
    run_lock,
)
from vaestudy.cli import UserError
from vaestudy.data import load_splits
from vaestudy.device import check_precision, cuda_tf32, flush_subnormals, pick_device, provenance
from vaestudy.metrics import per_image_errors
from vaestudy.runs import checkpoint_path, objective, planned_runs, run_name
from vaestudy.step import make_optimizer, make_step, train_epoch
from vaestudy.sweep import LiveView, Stopped, Sweep, stop_signals, stopped

flush_subnormals()  # on import, before PyTorch starts its threads


def train_sweep(args):
    """Train every run that train.py's flags (args) plan; returns their checkpoints' paths."""
    device = pick_device(args.device)
    check_precision(args.precision, device)
    splits = load_splits(args.data_dir, args.split_seed, device, args.limit, binarize=args.binarize,
                         dataset=args.dataset)
    threads = torch.get_num_threads()  # restored on return: a caller (a test, a notebook) keeps its own
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = [(config, train, checkpoint_path(args.out, config, train)) for config, train in planned_runs(args)]
    said = check_plan(plan, args.epochs, args.resume, args.overwrite)  # before any run trains
    if said:
        print(said)
    sweep = Sweep(len(plan), sum(max(0, args.epochs - epochs_done(path, args.resume)) for _, _, path in plan))
    path = None
    try:
        with stop_signals(), cuda_tf32(True):  # "fp32" training on a GPU is TF32, and only the training
            for i, (config, train, path) in enumerate(plan):
                sweep.finished = 0
                with run_lock(path):
                    train_run(args, config, train, path, splits, device, sweep, i)
        return [path for _, _, path in plan]
    except (KeyboardInterrupt, Stopped) as e:
        raise stopped(e, path, sweep.finished)
    finally:
        sweep.bar.close()
        torch.set_num_threads(threads)


def train_run(args, config, train, path, splits, device, sweep, i):
    """Train one run. Its checkpoint is saved at most every --save-every-s seconds, after its last
    epoch, and whenever the run ends early (Ctrl-C, SIGTERM, SIGUSR2, a non-finite loss): always as
    it stood at the end of an epoch, so that --resume continues exactly."""
    ckpt = existing_checkpoint(path, config, train, args.resume, device)
    if args.resume and ckpt is not None and ckpt["epoch"] >= args.epochs:
        print(f"skipped {path}: already trained for {ckpt['epoch']} epochs")
        return
    torch.manual_seed(train.seed)
    model = build_model(config, train.recon).to(device)
    optimizer = make_optimizer(model, train)
    generator = torch.Generator().manual_seed(train.seed)
    history = {k: [] for k in ("train_loss", "train_mse", "train_kl", "val_mse", "val_kl", "seconds")}
    start_epoch = 0
    if args.resume and ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"], generator, device)
        history, start_epoch = ckpt["history"], ckpt["epoch"]
    earlier = ckpt.get("trained_by", []) if args.resume and ckpt is not None else []
    trained_by = earlier + [{**provenance(device), "from_epoch": start_epoch}]
    model.train()
    step = make_step(model, optimizer, train, args.compile)
    train_x, val_x = splits["train"][0], splits["val"][0]
    pixels, name, loss_name = train_x.shape[1], run_name(config, train), objective(config, train)
    n_batches = -(-len(train_x) // train.batch_size)
    bar = sweep.run_bar(i, name, start_epoch, args.epochs, n_batches)
    saver = Saver(path, args.save_every_s)
    view = LiveView(path, start_epoch, args.epochs) if args.tensorboard else None
    try:
        for epoch in range(start_epoch, args.epochs):
            t0 = time.perf_counter()
            bar.set_description(f"{name}, epoch {epoch + 1} of {args.epochs}")
            # the bar counts batches as the host queues them: it moves within the epoch, reading nothing
            stats = train_epoch(step, train_x, train.batch_size, generator, bar.update).cpu()  # one sync per epoch
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
                                        rng_state(generator, device), trained_by), last=epoch + 1 == args.epochs)
            if view:
                view.epoch_done(epoch + 1, history, model, val_x[:16])
            figures = (f"loss {history['train_loss'][-1]:.2f} ({loss_name}), train MSE {history['train_mse'][-1]:.4f}, "
                       f"val MSE {history['val_mse'][-1]:.4f}"
                       + (f", val KL {history['val_kl'][-1]:.2f}" if config.model == "vae" else ""))
            bar.set_postfix_str(figures)
            sweep.epoch_done(f"{name}: epoch {epoch + 1} of {args.epochs}: {figures}")
    except BaseException:
        saver.flush()  # every finished epoch is kept, never a part of one
        raise
    finally:
        if view:
            view.close()
    bar.close()
    sweep.bar.write(f"saved {path}")  # above the sweep's bar on a terminal, not across it
