"""A sweep as train.py runs it, apart from the training itself: where it stands (bars on a terminal,
one line per epoch in a log, the time left, TensorBoard's curves), the signals that stop it, and what
it says when stopped."""
import contextlib
import os
import signal
import threading
import time

import torch

from vaestudy.checkpoints import Writes, epochs_done
from vaestudy.cli import UserError, duration, import_torchvision, on_terminal, progress


class Stopped(Exception):
    """A request to stop from outside: SIGTERM, or SIGUSR2, which SLURM sends ahead of a time limit or
    a preemption when asked to (submitit asks for it)."""


@contextlib.contextmanager
def stop_signals():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt, SIGTERM and SIGUSR2 raise Stopped, the first one
    only, and after the checkpoint being written, if one is (checkpoints.Writes): a second signal
    while the run saves its finished epochs is ignored, so that the save completes. The caller's
    handlers are back afterwards (signals reach the main thread alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if not stopping:
            stopping.append(signum)
            Writes.stop(KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signal.Signals(signum).name))

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def stopped(error, path, finished_here):
    """The one line for a sweep stopped by Ctrl-C or a signal during the run at path, which finished
    `finished_here` epochs in this process (every one of them saved before the stop took effect)."""
    how = "interrupted" if isinstance(error, KeyboardInterrupt) else f"stopped by {error}"
    if finished_here or epochs_done(path, True):
        return UserError(f"{how}; {path} keeps every finished epoch: add --resume to the same command to continue")
    return UserError(f"{how} before the first epoch of {path} ended: nothing of that run was saved")


class Sweep:
    """Where a sweep stands: "run 3 of 12" and the time left for all of it, in a bar above each run's
    own bar on a terminal, or at the end of each epoch's line in a log."""

    def __init__(self, n_runs, epochs_left):
        self.n_runs, self.left, self.done, self.start = n_runs, epochs_left, 0, time.perf_counter()
        self.bar = progress(total=epochs_left, desc="sweep", unit="epoch", position=0)
        self.finished = 0  # epochs of the current run finished by this process

    def run_bar(self, i, name, start_epoch, epochs, n_batches):
        """The run's own bar, in batches, so that it moves within an epoch."""
        self.place, self.finished = f"run {i + 1} of {self.n_runs}", 0
        self.bar.set_description(self.place)
        return progress(total=epochs * n_batches, initial=start_epoch * n_batches, desc=name, unit="batch",
                        position=1, leave=False)

    def epoch_done(self, line):
        self.done, self.finished = self.done + 1, self.finished + 1
        self.bar.update(1)
        if not on_terminal():
            left = (time.perf_counter() - self.start) / self.done * (self.left - self.done)
            print(f"{self.place}, {line}; sweep: {self.done} of {self.left} epochs done, "
                  f"about {duration(left)} left", flush=True)


GRID_EVERY = 5  # epochs between two reconstruction grids in TensorBoard (and the last epoch's)


class LiveView:
    """train.py --tensorboard: a run's per-epoch figures, and a grid of validation images over their
    reconstructions every GRID_EVERY epochs, as TensorBoard event files in tensorboard/ beside the
    run's checkpoint, so that `tensorboard --logdir output` names each run by its folder (variant)
    and file (latent size, seed). A resumed run drops what an earlier process wrote past the epoch it
    resumes from (a run killed between two saves), so no epoch appears twice."""

    def __init__(self, path, start_epoch, epochs):
        from torch.utils.tensorboard import SummaryWriter  # only here: tensorboard is needed for this alone

        self.folder = tensorboard_folder(path)
        self.epochs = epochs
        self.writer = SummaryWriter(self.folder, purge_step=start_epoch + 1 if start_epoch else None)

    def epoch_done(self, epoch, history, model, images):
        for key, values in history.items():
            self.writer.add_scalar(key.replace("_", "/", 1) if key != "seconds" else key, values[-1], epoch)
        if epoch % GRID_EVERY == 0 or epoch == self.epochs:
            from vaestudy.metrics import reconstruct
            was_training = model.training
            both = torch.cat([images, reconstruct(model, images)]).reshape(-1, 1, 28, 28).clamp(0, 1)
            model.train(was_training)
            grid = import_torchvision().utils.make_grid(both.cpu(), nrow=len(images))
            self.writer.add_image("reconstructions", grid, epoch)

    def close(self):
        self.writer.close()


def tensorboard_folder(path):
    """output/VAE/VAE_latent_20.pt's events go to output/VAE/tensorboard/VAE_latent_20/."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(path), "tensorboard", stem)
