"""What a run is and where it lives: its identity, its name, its file, its checkpoint, its lock.

A run's identity is its ModelConfig plus its TrainConfig: every setting that changes what is
trained or what it is trained on, the seed included. Two runs that agree on both are the same run;
any other setting makes a variant with files of its own, named after the settings that differ from
the study's (the defaults of the two dataclasses):

    output/VAE/VAE_latent_20.pt               the study's configuration, seed 0
    output/VAE/VAE_latent_20_seed_1.pt        the same, seed 1
    output/VAE/beta_0.5/VAE_latent_20.pt      a variant: its settings name its folder, figures included

A checkpoint holds the two configs, the epochs asked for, and the run's state and history, as plain
data; every script rebuilds the run from it alone. Means over seeds are taken only within one
(model, variant, latent size).
"""
import contextlib
import fcntl
import glob
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple, Optional

import torch

from common import UserError, atomic_write, versions
from models import MODEL_NAMES, PRECISIONS, ModelConfig, build_model

STUDY_EPOCHS = 50  # the study trained every run for 50 epochs
ADDED_LATER = {"added_later": True}  # a setting newer than the first checkpoints: where one lacks it, it had its default


@dataclass(frozen=True)
class TrainConfig:
    """The settings besides the model's that change what a run learns. Epochs are not among them:
    the same run can be continued for longer with --resume."""
    beta: float = 1.0  # weight of the KL term (the VAE's only)
    recon: str = "mse"  # reconstruction loss summed over pixels: "mse" (the study's) or "bce"
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-2  # PyTorch's AdamW default
    limit: Optional[int] = None  # train on N images of the shuffled training split only (smoke runs)
    # dynamically binarized MNIST (Burda et al. 2016): training pixels drawn 0/1 anew at every use
    binarize: bool = field(default=False, metadata=ADDED_LATER)
    # the VAE's bound: 1 is the ELBO, K > 1 the K-sample importance-weighted bound (IWAE)
    iw_samples: int = field(default=1, metadata=ADDED_LATER)
    # the matmuls' number format: "fp32" (the study's) or "bf16" (models.matmul_precision)
    precision: str = field(default="fp32", metadata=ADDED_LATER)
    split_seed: int = 0  # the 54k/6k train/validation split
    seed: int = 0  # initialisation, batch order, sampling

    def __post_init__(self):
        for f in fields(self):  # 1 and 1.0 are one setting, whether typed or read back from a checkpoint
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, {float: float, bool: bool, str: str}.get(f.type, int)(value))
        problems = [
            (self.batch_size < 1, "--batch-size must be positive"), (not self.lr > 0, "--lr must be positive"),
            (self.weight_decay < 0, "--weight-decay must not be negative"), (self.beta < 0, "--beta must not be negative"),
            (self.limit is not None and self.limit < 1, "--limit must be at least 1"),
            (self.recon not in ("mse", "bce"), f"unknown reconstruction loss {self.recon!r}; use mse or bce"),
            (self.precision not in PRECISIONS, f"unknown precision {self.precision!r}; use {' or '.join(PRECISIONS)}"),
            (self.iw_samples < 1, "--iw-samples must be at least 1"),
            # MSE on 0/1 pixels would be a Gaussian around values that are never in between: no likelihood of them
            (self.binarize and self.recon != "bce", "--binarize is for the Bernoulli decoder: add --recon bce")]
        for wrong, message in problems:
            if wrong:
                raise ValueError(message)


def check_run(config, train):
    """The rules that involve both configs: a setting that changes nothing for a model would only
    retrain its study run under another name."""
    if train.beta != TrainConfig.beta and config.model != "vae":
        raise ValueError("--beta weighs the VAE's KL term; the Autoencoder has none: add --model vae")
    if train.iw_samples != TrainConfig.iw_samples and (config.model != "vae" or train.beta != TrainConfig.beta):
        raise ValueError("--iw-samples bounds the VAE's log-likelihood, with beta 1: add --model vae (and no --beta)")


def defines_likelihood(config, train):
    """Whether the run's decoder is a normalised likelihood of its data: Bernoulli on 0/1 pixels. BCE
    on grey pixels is not (its values for a pixel do not sum to 1 over the pixel's values), and the
    squared error is a Gaussian of fixed variance 1/2, a density on pixels that are bytes."""
    return config.model == "vae" and train.recon == "bce" and train.binarize


def train_config(config, settings):
    """A run's TrainConfig from a dict of its settings: argparse's, or a checkpoint's."""
    values = {f.name: settings.get(f.name, f.default) for f in fields(TrainConfig)}
    if config.model == "ae":  # no KL term and no q(z|x): these change nothing, so they name no variant
        values["beta"], values["iw_samples"] = TrainConfig.beta, TrainConfig.iw_samples
    return TrainConfig(**values)


def planned_runs(args):
    """Every run the flags ask for, as (ModelConfig, TrainConfig), seed by seed; ValueError names a
    setting that cannot be."""
    kinds = ["ae", "vae"] if args.model == "both" else [args.model]
    asked = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "seed"})
    runs = [(config, train_config(config, {**vars(args), "seed": seed}))
            for seed in args.seed for kind in kinds for latent in args.latent
            for config in [ModelConfig(model=kind, latent=latent, hidden=tuple(args.hidden), code_relu=args.code_relu)]]
    for config, _ in runs:
        check_run(config, asked)
    return runs


def variant(config, train):
    """The settings that differ from the study's, as ((name, value), ...); model, latent size and
    seed are the axes of every table, so they are not part of it. () is the study's configuration."""
    defaults = (ModelConfig(model=config.model, latent=config.latent), TrainConfig(seed=train.seed))
    return tuple((f.name, getattr(ours, f.name)) for ours, default in zip((config, train), defaults)
                 for f in fields(ours) if getattr(ours, f.name) != getattr(default, f.name))


def join_settings(settings, between, name_value, items):
    """Settings as text: (("beta", 0.5), ("hidden", (512, 256))) with between ", ", name_value " " and
    items " " gives "beta 0.5, hidden 512 256". Names are spelled as their flags, floats exactly."""
    def text(name, value):
        name = name.replace("_", "-")
        if value is True:
            return name
        if isinstance(value, (tuple, list)):  # a list where the settings were read back from JSON
            value = items.join(map(str, value))
        return name + name_value + (repr(value) if isinstance(value, float) else str(value))
    return between.join(text(*s) for s in settings)


def variant_label(settings):
    """How tables and legends name a variant: "default", or e.g. "beta 0.5, hidden 512 256"."""
    return join_settings(settings, ", ", " ", " ") or "default"


def variant_flags(settings):
    """The train.py flags that make a variant: {"recon": "bce", "binarize": True} -> "--recon bce --binarize"."""
    return "--" + join_settings(dict(settings).items(), " --", " ", " ") if settings else ""


def group_label(model_name, label):
    """How titles, legends and selections name a model's variant: "VAE", or "VAE (beta 0.5)"."""
    return model_name if label == "default" else f"{model_name} ({label})"


def run_name(config, train, seed=False):
    """"VAE (beta 0.5) latent 20", with " seed 1" when asked for."""
    name = f"{group_label(MODEL_NAMES[config.model], variant_label(variant(config, train)))} latent {config.latent}"
    return name + (f" seed {train.seed}" if seed else "")


def variant_folder(out, model_name, settings):
    """Where a variant's checkpoints and figures go, by the model's name as tables write it: output/VAE
    for the study's configuration, output/VAE/beta_0.5_hidden_512-256 for a variant."""
    folder = os.path.join(out, model_name)
    return os.path.join(folder, join_settings(settings, "_", "_", "-")) if settings else folder


def checkpoint_path(out, config, train):
    """The one file of a run, e.g. output/VAE/VAE_latent_20.pt; seeds other than 0 add _seed_S."""
    suffix = "" if train.seed == 0 else f"_seed_{train.seed}"
    name = MODEL_NAMES[config.model]
    return os.path.join(variant_folder(out, name, variant(config, train)), f"{name}_latent_{config.latent}{suffix}.pt")


CHECKPOINT_FORMAT = "mnist-vae-study/2"
# format 1 held train.py's flags ("args", epochs among them) where format 2 holds the TrainConfig; still read
FORMAT_1 = "mnist-vae-study/1"
STATE = ("model", "optimizer", "epoch", "history", "rng", "versions")


def checkpoint(config, train, epochs, epoch, model, optimizer, history, rng):
    """A run's checkpoint, plain data only: what decides the run, the epochs asked for, its state."""
    return {"format": CHECKPOINT_FORMAT, "model_config": config.to_dict(), "train_config": asdict(train),
            "epochs": epochs, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "history": history, "rng": rng, "versions": versions()}


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


def snapshot(ckpt):
    """A copy of a checkpoint that later training cannot change: its tensors cloned, where
    checkpoint() holds the live weights and optimizer state, and its lists copied."""
    if isinstance(ckpt, torch.Tensor):
        return ckpt.detach().clone()
    if isinstance(ckpt, dict):
        return {k: snapshot(v) for k, v in ckpt.items()}
    if isinstance(ckpt, (list, tuple)):
        return type(ckpt)(snapshot(v) for v in ckpt)
    return ckpt


def save_checkpoint(path, ckpt):
    atomic_write(path, lambda f: torch.save(ckpt, f))


class Saver:
    """Writes a run's checkpoint after its last epoch and otherwise at most every `every_s` seconds:
    a write is ~30 MB (weights and AdamW's moments) and an fsync, longer than a whole epoch of the
    study's model on a fast GPU. An epoch not written is kept in memory, and flush() writes it when
    the run ends early, so that the file always holds the last finished epoch or one before it."""

    def __init__(self, path, every_s):
        self.path, self.every_s, self.saved_at, self.unsaved = path, every_s, time.monotonic(), None

    def epoch_done(self, ckpt, last=False):
        if last or time.monotonic() - self.saved_at >= self.every_s:
            self.unsaved = ckpt  # until written: a stop during the write has flush() write it again
            save_checkpoint(self.path, ckpt)
            self.unsaved, self.saved_at = None, time.monotonic()
        else:
            self.unsaved = snapshot(ckpt)  # a copy: the next epoch changes the weights in place

    def flush(self):
        if self.unsaved is not None:
            ckpt, self.unsaved = self.unsaved, None
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
        ckpt["train_config"] = asdict(train_config(config, settings))
        model = build_model(config).to(device)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{path} does not match the model it describes ({reason[:200]})")
    return ckpt, model.eval()


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


def load_runs(folder, device="cpu"):
    """Every finished run under folder, ordered by (model, variant, latent size, seed). Unfinished
    runs (in progress, or interrupted) are left out with a note, and so is a second file of the same
    identity (possible only for files written before names carried the variant)."""
    paths = sorted(glob.glob(os.path.join(folder, "*", "**", "*_latent_*.pt"), recursive=True))
    if not paths:
        raise UserError(f"no checkpoints under {folder}: run python train.py first")
    runs = {}
    for path in paths:
        run = load_run(path, device)
        identity = (run.config, run.train)
        if not run.finished:
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
