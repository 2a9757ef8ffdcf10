"""Where the work runs: the device a flag names, whether it runs bf16, TF32 on CUDA, the CPU's subnormal
floats, waiting for the device, and the record of where a result was made (provenance)."""
import contextlib
import datetime
import functools
import os
import platform
import subprocess

import torch

from vaestudy.cli import UserError


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


# PyTorch 2.9 added per-backend switches (fp32_precision: "tf32", "ieee" or "none", to inherit) beside the
# legacy allow_tf32, and raises where the legacy one is read after the new one set it: inside a scope that
# set fp32_precision, torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision()
# (which Inductor's max-autotune calls) failed with "mix of the legacy and new APIs". Setting the legacy
# switch sets both, so both stay readable; the caller's value is read, and put back, in its own API.
TF32_VALUES = {"tf32": True, "ieee": False}  # the new API's values that the legacy switch can set


def _tf32_switches():
    """(legacy, new) places of the two switches, cuBLAS's matmuls and cuDNN's convolutions; new is None
    before PyTorch 2.9."""
    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):
        return [(backends.cuda.matmul, None), (backends.cudnn, None)]
    return [(backends.cuda.matmul, backends.cuda.matmul), (backends.cudnn, backends.cudnn.conv)]


@contextlib.contextmanager
def cuda_tf32(enabled):
    """Float32 matmuls and convolutions on CUDA in TF32 (enabled: what "fp32" training means on a
    GPU, about 8x the float32 rate on Ampere and later, ample for these losses) or in full float32
    (measurements); the caller's setting is back afterwards. The CPU ignores both."""
    switches = _tf32_switches()
    before = [legacy.allow_tf32 if new is None else new.fp32_precision for legacy, new in switches]
    try:
        for legacy, _ in switches:
            legacy.allow_tf32 = bool(enabled)
        yield
    finally:
        for (legacy, new), value in zip(switches, before):
            if new is None or value in TF32_VALUES:
                legacy.allow_tf32 = TF32_VALUES.get(value, value)
            else:  # "none": only the new API says it
                new.fp32_precision = value


def tf32_enabled():
    """Whether float32 matmuls on CUDA run in TF32 now."""
    legacy, new = _tf32_switches()[0]
    if new is None:
        return bool(legacy.allow_tf32)
    value = new.fp32_precision
    if value == "none":  # inherits PyTorch's global setting
        value = torch.backends.fp32_precision
    return value == "tf32"


@contextlib.contextmanager
def deterministic_cudnn():
    """cuDNN's deterministic algorithms, none picked by timing (benchmark off): the classifier, trained
    and run on a GPU, gives the same numbers on every run; the caller's setting is back afterwards."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def sync(device):
    """Wait for the work queued on a GPU (a clock read without it times the queueing, not the work);
    nothing on the CPU, whose work is done when its call returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_bf16(device):
    """Whether this GPU, not the current one (torch.cuda.is_bf16_supported asks about that), has
    bf16 units: NVIDIA's from compute capability 8.0 (Ampere) on; ROCm builds run it on theirs."""
    return torch.version.hip is not None or torch.cuda.get_device_capability(device) >= (8, 0)


def device_name(device):
    """The GPU's name, or the CPU's model as the OS names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def code_version():
    """The commit of this repository's code and whether its tracked files match it; "unknown" outside
    a git checkout (a copy, an archive) or without git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        def git(*args):
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        return {"commit": git("rev-parse", "HEAD"), "clean": git("status", "--porcelain", "--untracked-files=no") == ""}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "clean": "unknown"}


def provenance(device):
    """Where and with what a result is made: PyTorch's and Python's versions, the device, the code's
    commit (and whether the tree was clean), and the date (UTC)."""
    from vaestudy.files import versions
    return {**versions(), "python": platform.python_version(), "device": f"{device.type}: {device_name(device)}",
            "threads": torch.get_num_threads(), **code_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
