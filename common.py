"""What every script shares, importing no module of this repository: one-line errors, the command-line
flags the scripts have in common, the device, seeds, atomic writes, progress bars and figure files."""
import argparse
import os
import sys
import tempfile

import torch
import torchvision
from tqdm import tqdm

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are two short lines, the error last, instead of the whole usage."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"usage: python {self.prog} [flags]; python {self.prog} --help lists them\n"
                     f"{self.prog}: error: {message}\n")


def add_place_flags(p, out_help=None, checkpoints=False):
    """--data-dir and --device, with --out when out_help says what goes there and --checkpoints when
    checkpoints are read: where a script reads and writes, and on what."""
    if checkpoints:
        p.add_argument("--checkpoints", default=None, help="folder of checkpoints to read (default: the --out folder)")
    if out_help:
        p.add_argument("--out", default="output", help=f"{out_help} (default: output)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives or is fetched to (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")


def flush_subnormals():
    """Read and write floats below 1.2e-38 as zero on the CPU. They are common late in training, as
    gradients of saturated sigmoids at MNIST's always-black border pixels and Adam moments of dead
    units, and take a slow path: a trained Autoencoder's steps ran 2.8x faster without them. Call it
    before PyTorch starts its threads (on import), because they inherit it from the thread making them."""
    torch.set_flush_denormal(True)


def pick_device(name):
    """auto (CUDA when PyTorch sees it, else the CPU), cpu, cuda or cuda:N; anything else is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if device.type == "cuda":
        # what hides GPUs from a process, said where it is set: a job given one GPU sees it as cuda:0
        hidden = (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
                  if "CUDA_VISIBLE_DEVICES" in os.environ else "")
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but PyTorch sees no CUDA device{hidden}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this process sees {count} CUDA device(s){hidden}, "
                            f"cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":  # mps, meta, xpu, ...: nothing here is built or tested for them
        raise UserError(f"--device {name} is not supported; use auto, cpu or cuda")
    return device


def check_precision(precision, device):
    """bf16 where the device runs it natively; a GPU without bf16 units (before NVIDIA's Ampere) would
    emulate it or fail mid-run, so it is refused here. Every CPU runs it (fast where it has AVX-512
    BF16 or AMX; python bench.py measures it)."""
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bfloat16; "
                        "use --precision fp32")


def native_bf16(device):
    """Whether this GPU, not the current one (torch.cuda.is_bf16_supported asks about that), has
    bf16 units: NVIDIA's from compute capability 8.0 (Ampere) on; ROCm builds run it on theirs."""
    return torch.version.hip is not None or torch.cuda.get_device_capability(device) >= (8, 0)


SEED_RANGE = (0, 2**64 - 1)  # what torch.manual_seed and torch.Generator accept, less the negatives


def check_seeds(**seeds):
    """A seed outside SEED_RANGE is refused before anything runs: PyTorch would raise mid-run."""
    for flag, values in seeds.items():
        for value in values if isinstance(values, list) else [values]:
            if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
                raise UserError(f"--{flag.replace('_', '-')} {value}: seeds are whole numbers from 0 to 2**64 - 1")


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


def versions():
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def on_terminal():
    return sys.stderr.isatty()


def progress(**kwargs):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe, a test) none, since the bar's
    redrawing would leave carriage returns and cursor moves in the text."""
    return tqdm(disable=not on_terminal(), dynamic_ncols=True, **kwargs)


def save_figure(fig, path, **kwargs):
    atomic_write(path, lambda f: fig.savefig(f, format="jpg", **kwargs))
