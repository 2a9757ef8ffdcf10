"""What every script shares: one-line errors, atomic writes, the device, the checkpoint format."""
import contextlib
import fcntl
import os
import sys
import tempfile

import torch
import torchvision

from models import ModelConfig, build_model


_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
    """A problem the user can fix: printed as one line, exit code 1, no traceback."""


def run_cli(main):
    """Call main() and turn UserError (and Ctrl-C) into a one-line message and exit code."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted")


def atomic_write(path, write, mode="wb"):
    """Write via a temporary file in the same folder and rename it, so no reader ever sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror}")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise UserError(f"could not write {path}: {e.strerror or e}; the previous file is untouched")
        raise


def pick_device(name):
    """auto (CUDA when PyTorch sees it, else the CPU), cpu, cuda or cuda:N; anything else is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but PyTorch sees no CUDA device; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":  # mps, meta, xpu, ...: nothing here is built or tested for them
        raise UserError(f"--device {name} is not supported; use auto, cpu or cuda")
    return device


def check_precision(precision, device):
    """bf16 where the device runs it natively; a GPU without bf16 units (before NVIDIA's Ampere) would
    emulate it or fail mid-run, so it is refused here. Every CPU runs it (fast where it has AVX-512
    BF16 or AMX; python bench.py measures it)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bfloat16; "
                        "use --precision fp32")


SEED_RANGE = (0, 2**64 - 1)  # what torch.manual_seed and torch.Generator accept, less the negatives


def check_seeds(**seeds):
    """A seed outside SEED_RANGE is refused before anything runs: PyTorch would raise mid-run."""
    for flag, values in seeds.items():
        for value in values if isinstance(values, list) else [values]:
            if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
                raise UserError(f"--{flag.replace('_', '-')} {value}: seeds are whole numbers from 0 to 2**64 - 1")


@contextlib.contextmanager
def run_lock(path):
    """Hold an exclusive lock on a run's checkpoint while training it, so that two processes never
    write the same file. The OS drops the lock when its holder dies, even by SIGKILL."""
    lock_path = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock")
    try:
        os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot write to {os.path.dirname(lock_path) or '.'}: {e.strerror}")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is training {path} right now; wait for it or use another --out")
        yield
    finally:
        os.close(fd)  # closing releases the lock; the empty lock file stays, as deleting it would race


def save_checkpoint(path, checkpoint):
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def versions():
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint of this repository's format and rebuild its model (in eval mode).

    Only plain data is read (weights_only=True), so a file carrying pickled code is refused
    instead of executed.
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}")
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint of this repository ({reason[:200]}); "
                        "delete it and re-run train.py")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} was not written by this repository's train.py")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; re-run train.py to regenerate it")
    missing = [k for k in TRAIN_ARGS if not isinstance(ckpt["args"], dict) or k not in ckpt["args"]]
    if missing:
        raise UserError(f"{path} lacks the settings {', '.join(missing)}; re-run train.py to regenerate it")
    try:
        config = ModelConfig(**ckpt["config"])
        model = build_model(config).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{path} does not match the model it describes ({reason[:200]})")
    return ckpt, model.eval()


CHECKPOINT_FORMAT = "mnist-vae-study/1"
CHECKPOINT_KEYS = ("model", "optimizer", "config", "args", "epoch", "history", "split_seed", "rng", "versions")
# what a checkpoint's "args" must hold: runs.TrainConfig's fields that every checkpoint has had (its
# identity; later fields default when missing) and the epochs asked for
TRAIN_ARGS = ("beta", "recon", "batch_size", "lr", "weight_decay", "limit", "split_seed", "seed", "epochs")


def save_figure(fig, path, **kwargs):
    atomic_write(path, lambda f: fig.savefig(f, format="jpg", **kwargs))
