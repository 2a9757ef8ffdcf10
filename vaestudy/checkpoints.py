"""A run's checkpoint on disk: its format, its save cadence and random states, loading it back,
the lock held while it is trained, and finding the finished runs under a folder.

A checkpoint holds the two configs, the epochs asked for, and the run's state and history, as plain
data; every script rebuilds the run from it alone. Means over seeds are taken only within one
(model, variant, latent size).
"""
import contextlib
import errno
import fcntl
import glob
import os
import sys
import time
from dataclasses import asdict, fields
from typing import NamedTuple

import torch

from models import ModelConfig, build_model
from vaestudy.cli import UserError
from vaestudy.datasets import DATASETS, DEFAULT
from vaestudy.files import atomic_write, versions
from vaestudy.runs import TrainConfig, checkpoint_path, run_name, train_config, variant, variant_label

CHECKPOINT_FORMAT = "mnist-vae-study/2"
# format 1 held train.py's flags ("args", epochs among them) where format 2 holds the TrainConfig; still read
FORMAT_1 = "mnist-vae-study/1"
STATE = ("model", "optimizer", "epoch", "history", "rng", "versions")


def checkpoint(config, train, epochs, epoch, model, optimizer, history, rng, trained_by=()):
    """A run's checkpoint, plain data only: what decides the run, the epochs asked for, its state, and
    where it was trained (device.provenance of each process that trained it, from which epoch)."""
    return {"format": CHECKPOINT_FORMAT, "model_config": config.to_dict(), "train_config": asdict(train),
            "epochs": epochs, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "history": history, "rng": rng, "versions": versions(), "trained_by": list(trained_by)}


def rng_state(generator, device):
    """The random state a run continues from: PyTorch's global CPU stream, the batch order's
    generator and, for a run on a GPU, that GPU's stream (asked for only then: asking starts CUDA)."""
    state = {"torch": torch.get_rng_state(), "batch_order": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, generator, device):
    """rng_state's inverse. The saved GPU stream goes to the GPU the run trains on now, whatever its
    number: a run started on cuda:1 continues on the cuda:0 of a job that sees one GPU. PyTorch takes
    RNG states only as CPU tensors."""
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["batch_order"].cpu())
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        if isinstance(cuda, (list, tuple)):  # written before: one state per GPU the process saw, in order
            index = torch.cuda.current_device() if device.index is None else device.index
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda.cpu(), device)


def snapshot(ckpt, device=None):
    """A copy of a checkpoint that later training cannot change: its tensors copied (to `device`, or
    where they are), where checkpoint() holds the live weights and optimizer state, and its lists copied."""
    if isinstance(ckpt, torch.Tensor):
        return ckpt.detach().to(device or ckpt.device, copy=True)
    if isinstance(ckpt, dict):
        return {k: snapshot(v, device) for k, v in ckpt.items()}
    if isinstance(ckpt, (list, tuple)):
        return type(ckpt)(snapshot(v, device) for v in ckpt)
    return ckpt


def save_checkpoint(path, ckpt):
    """The checkpoint written with every tensor on the CPU, whatever device trained it: torch.save keeps
    each tensor's device, and a GPU's checkpoint would then load with a plain torch.load(path,
    weights_only=True) only where that GPU is ("Attempting to deserialize object on a CUDA device")."""
    on_cpu = snapshot(ckpt, "cpu")
    atomic_write(path, lambda f: torch.save(on_cpu, f))


class Writes:
    """Stops (Ctrl-C, SIGTERM, SIGUSR2: sweep.stop_signals) that arrive while a checkpoint is being
    written take effect when the write ends: a KeyboardInterrupt raised inside torch.save's C++
    writer made it fail on its way out with a RuntimeError ("unexpected pos 64 vs 0", seen in CI),
    which replaced the stop, and the run ended in a traceback (tests/test_faults.py reproduces it)."""
    depth, pending = 0, None

    @classmethod
    @contextlib.contextmanager
    def uninterrupted(cls):
        cls.depth += 1
        try:
            yield
        except BaseException:
            cls.pending = None  # the write's own error says more than a stop that came during it
            raise
        finally:
            cls.depth -= 1
        if cls.depth == 0 and cls.pending is not None:
            error, cls.pending = cls.pending, None
            raise error

    @classmethod
    def stop(cls, error):
        """Raise error now, or as soon as the write in progress has ended."""
        if cls.depth:
            cls.pending = error
        else:
            raise error


class Saver:
    """Writes a run's checkpoint after its last epoch and otherwise at most every `every_s` seconds:
    a write is ~30 MB (weights and AdamW's moments) and an fsync, longer than a whole epoch of the
    study's model on a fast GPU. An epoch not written is kept in memory, and flush() writes it when
    the run ends early, so that the file always holds the last finished epoch or one before it."""

    def __init__(self, path, every_s):
        self.path, self.every_s, self.saved_at, self.unsaved = path, every_s, time.monotonic(), None

    def epoch_done(self, ckpt, last=False):
        if last or time.monotonic() - self.saved_at >= self.every_s:
            self.unsaved = ckpt  # until written: a write that fails has flush() try it again
            with Writes.uninterrupted():  # a stop meanwhile waits for the file to be whole
                save_checkpoint(self.path, ckpt)
                self.unsaved, self.saved_at = None, time.monotonic()
        else:
            self.unsaved = snapshot(ckpt)  # a copy: the next epoch changes the weights in place

    def flush(self):
        if self.unsaved is not None:
            ckpt, self.unsaved = self.unsaved, None
            with Writes.uninterrupted():
                save_checkpoint(self.path, ckpt)


def load_checkpoint(path, device="cpu"):
    """A checkpoint of this repository (format 2, or 1 read as 2) and its model, rebuilt on device and
    in eval mode. The checkpoint itself is read onto the CPU, whatever the device: its RNG states
    must stay there (PyTorch refuses them elsewhere), and the model and optimizer copy their tensors
    to their own device when loaded. Only plain data is read (weights_only=True): a file carrying
    pickled code is refused, not run."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}")
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint of this repository ({reason[:200]}); "
                        "delete it and re-run train.py")
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, FORMAT_1):
        raise UserError(f"{path} was not written by this repository's train.py")
    if ckpt["format"] == FORMAT_1:
        missing = [k for k in ("config", "args") + STATE if k not in ckpt]
        settings = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
        ckpt = {**ckpt, "model_config": ckpt.get("config"), "train_config": settings, "epochs": settings.get("epochs")}
    else:
        missing = [k for k in ("model_config", "train_config", "epochs") + STATE if k not in ckpt]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; re-run train.py to regenerate it")
    settings = ckpt["train_config"]
    missing = [f.name for f in fields(TrainConfig) if not f.metadata and f.name not in settings]
    missing += ["epochs"] if ckpt["epochs"] is None else []
    if missing:
        raise UserError(f"{path} lacks the settings {', '.join(missing)}; re-run train.py to regenerate it")
    try:
        config = ModelConfig(**ckpt["model_config"])
        train = train_config(config, settings)
        ckpt["train_config"] = asdict(train)
        model = build_model(config, train.recon).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{path} does not match the model it describes ({reason[:200]})")
    return ckpt, model.eval()


# what flock raises where a file system has no locks at all
NO_LOCKS = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK}


@contextlib.contextmanager
def run_lock(path):
    """Hold an exclusive lock on a run's checkpoint while training it, so that two processes never
    write the same file. The OS drops the lock when its holder dies, even by SIGKILL; a run that ends
    removes its lock file. flock guards processes of one machine everywhere; across machines only
    where the file system makes it cluster-wide (Lustre with -o flock, NFS v4, GPFS; not a node-local
    lock such as Lustre's -o localflock): docs/scaling-out.md."""
    lock_path = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock")
    while True:
        try:
            os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot write to {os.path.dirname(lock_path) or '.'}: {e.strerror}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another process is training {path} right now; wait for it or use another --out")
        except OSError as e:
            os.close(fd)
            if e.errno in NO_LOCKS:  # Lustre or NFS mounted without flock, some FUSE file systems
                raise UserError(f"cannot lock {lock_path}: its file system has no file locks ({e.strerror}), "
                                "and without them two processes could train one run; --out on a local disk, "
                                "or on a mount with flock (Lustre: -o flock), trains safely")
            raise UserError(f"cannot lock {lock_path}: {e.strerror}")
        try:  # a holder that ended removed the file we opened before we locked it: lock the one at the path
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # before the lock goes, so that no one locks a file that is gone
        os.close(fd)


class Run(NamedTuple):
    """A run found on disk (unpacks as path, checkpoint, model)."""
    path: str
    ckpt: dict
    model: torch.nn.Module

    @property
    def config(self):
        return self.model.config

    @property
    def train(self):
        return TrainConfig(**self.ckpt["train_config"])

    @property
    def variant(self):
        return variant(self.config, self.train)

    @property
    def finished(self):
        return self.ckpt["epoch"] >= self.ckpt["epochs"]


def load_run(path, device="cpu"):
    return Run(path, *load_checkpoint(path, device))


def load_runs(folder, device="cpu", dataset=DEFAULT):
    """Every finished run of a dataset under folder (datasets.dataset_folder: MNIST's at the top,
    another's in its own folder), ordered by (model, variant, latent size, seed). Another dataset's
    folders are not looked into; unfinished runs (in progress, or interrupted) are left out with a
    note, and so is a second file of the same identity (possible only for files written before names
    carried the variant)."""
    others = tuple(os.path.join(folder, name) + os.sep for name in DATASETS if name != dataset)
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*", "**", "*_latent_*.pt"), recursive=True)
                   if not p.startswith(others))
    if not paths:
        flag = "" if dataset == DEFAULT else f" --dataset {dataset}"
        raise UserError(f"no checkpoints under {folder}: run python train.py{flag} first")
    runs = {}
    for path in paths:
        run = load_run(path, device)
        identity = (run.config, run.train)
        if run.train.dataset != dataset:
            print(f"leaving out {path}: a run on {run.train.dataset}, not {dataset}", file=sys.stderr)
        elif not run.finished:
            print(f"leaving out {path}: {run.ckpt['epoch']} of {run.ckpt['epochs']} epochs "
                  "(finish it with python train.py ... --resume)", file=sys.stderr)
        elif identity in runs:
            keep = sorted([run, runs[identity]], key=lambda r: r.path != checkpoint_path(folder, *identity))
            print(f"leaving out {keep[1].path}: the same run as {keep[0].path}", file=sys.stderr)
            runs[identity] = keep[0]
        else:
            runs[identity] = run
    if not runs:
        raise UserError(f"no finished runs under {folder}: run python train.py (with --resume to finish them)")
    return sorted(runs.values(), key=lambda r: (r.config.model, r.variant != (), variant_label(r.variant),
                                                r.config.latent, r.train.seed))


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
        return None  # retrained from scratch (--overwrite, checked before: check_plan): nothing to keep
    if (theirs.config, theirs.train) != (config, train):  # e.g. written before file names carried the settings
        raise UserError(f"{path} holds another run ({run_name(theirs.config, theirs.train, seed=True)}); "
                        "move it elsewhere to keep it, then run again")
    return theirs.ckpt


def check_plan(plan, epochs, resume=False, overwrite=False):
    """Before a sweep trains anything, what its planned runs ((config, train, path), ...) have on disk:
    a run a user has is never replaced unasked. Without --resume or --overwrite an existing checkpoint
    refuses the whole sweep, in one line naming the ways on; a damaged one, or one holding another run,
    is refused unless --overwrite. Returns what --resume will do, in one line (None otherwise)."""
    existing, damaged = [], []
    for config, train, path in plan:
        if not os.path.exists(path):
            continue
        try:
            theirs = load_run(path)
        except UserError:
            if not overwrite:
                raise
            damaged.append(path)
            continue
        if (theirs.config, theirs.train) != (config, train) and not overwrite:
            raise UserError(f"{path} holds another run ({run_name(theirs.config, theirs.train, seed=True)}); "
                            "move it elsewhere to keep it, then run again")
        existing.append((path, theirs.ckpt["epoch"]))
    if existing and not resume and not overwrite:
        path, epoch = existing[0]
        others = f" (and {len(existing) - 1} more of the {len(plan)} planned)" if len(existing) > 1 else ""
        raise UserError(f"{path} exists, trained for {epoch} epoch{'s' if epoch != 1 else ''}{others}, and is kept: "
                        f"--resume continues it to --epochs {epochs}, --out DIR trains elsewhere, --overwrite "
                        "retrains it from scratch")
    if overwrite and (existing or damaged):
        print(f"--overwrite: {len(existing) + len(damaged)} existing checkpoint(s) are retrained from scratch, each "
              "replaced at its run's first save")
    if resume:
        done = sum(epoch >= epochs for _, epoch in existing)
        return (f"--resume: {done} finished (skipped), {len(existing) - done} to continue from its checkpoint, "
                f"{len(plan) - len(existing)} to start afresh, of {len(plan)} planned")
    return None


def epochs_done(path, resume):
    """Epochs a run already has, for the sweep's count of what is left."""
    if not resume or not os.path.exists(path):
        return 0
    try:
        return load_run(path).ckpt["epoch"]
    except UserError:
        return 0  # train_run says what is wrong with it
