"""What a run is: its identity, its file, its variant, and how the scripts find runs on disk.

A run's identity is its ModelConfig plus its TrainConfig: every setting that changes what is
trained or what it is trained on, the seed included. Two runs that agree on both are the same run;
any other setting makes a variant with files of its own, named after the settings that differ from
the study's (the defaults of the two dataclasses):

    output/VAE/VAE_latent_20.pt               the study's configuration, seed 0
    output/VAE/VAE_latent_20_seed_1.pt        the same, seed 1
    output/VAE/beta_0.5/VAE_latent_20.pt      a variant: its settings name its folder, figures included

evaluate.py averages only over seeds of one (model, variant, latent size).
"""
import glob
import os
import sys
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import torch

from common import UserError, load_checkpoint
from models import MODEL_NAMES, ModelConfig


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
    binarize: bool = False  # dynamically binarized MNIST (Burda et al. 2016): pixels drawn 0/1 anew at every use
    iw_samples: int = 1  # the VAE's bound: 1 is the ELBO, K > 1 the K-sample importance-weighted bound (IWAE)
    precision: str = "fp32"  # the matmuls' number format: "fp32" (the study's) or "bf16" (models.matmul_precision)
    split_seed: int = 0  # the 54k/6k train/validation split
    seed: int = 0  # initialisation, batch order, sampling

    def __post_init__(self):  # 1 and 1.0 are one setting, whether typed or read back from a checkpoint
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, {float: float, bool: bool, str: str}.get(f.type, int)(value))


def train_config(config, settings):
    """A run's TrainConfig from a dict holding its fields: argparse's, or a checkpoint's "args"."""
    # a setting added after a checkpoint was written is missing from it, and had its default then
    values = {f.name: settings.get(f.name, f.default) for f in fields(TrainConfig)}
    if config.model == "ae":  # no KL term and no q(z|x): these change nothing, so they name no variant
        values["beta"], values["iw_samples"] = TrainConfig.beta, TrainConfig.iw_samples
    return TrainConfig(**values)


def planned_runs(args):
    """Every run the flags ask for, as (ModelConfig, TrainConfig), seed by seed."""
    kinds = ["ae", "vae"] if args.model == "both" else [args.model]
    return [(config, train_config(config, {**vars(args), "seed": seed}))
            for seed in args.seed for kind in kinds for latent in args.latent
            for config in [ModelConfig(model=kind, latent=latent, hidden=tuple(args.hidden), code_relu=args.code_relu)]]


def variant(config, train):
    """The settings that differ from the study's, as ((name, value), ...); model, latent size and
    seed are the axes of every table, so they are not part of it. () is the study's configuration."""
    defaults = (ModelConfig(model=config.model, latent=config.latent), TrainConfig(seed=train.seed))
    return tuple((f.name, getattr(ours, f.name)) for ours, default in zip((config, train), defaults)
                 for f in fields(ours) if getattr(ours, f.name) != getattr(default, f.name))


def _words(settings, between, name_value, items):
    """(("beta", 0.5), ("hidden", (512, 256))) -> "beta" name_value "0.5" between "hidden" ... "512" items "256"."""
    def text(name, value):
        name = name.replace("_", "-")  # spelled as its flag
        if value is True:
            return name
        if isinstance(value, (tuple, list)):  # a list where the settings were read back from JSON
            value = items.join(map(str, value))
        return name + name_value + (repr(value) if isinstance(value, float) else str(value))  # repr: exact
    return between.join(text(*s) for s in settings)


def variant_label(settings):
    """How tables and legends name a variant: "default", or e.g. "beta 0.5, hidden 512 256"."""
    return _words(settings, ", ", " ", " ") or "default"


def variant_flags(settings):
    """The train.py flags that make a variant: {"recon": "bce", "binarize": True} -> "--recon bce --binarize"."""
    return "--" + _words(dict(settings).items(), " --", " ", " ") if settings else ""


def group_label(model_name, label):
    """How titles, legends and selections name a model's variant: "VAE", or "VAE (beta 0.5)"."""
    return model_name if label == "default" else f"{model_name} ({label})"


def variant_folder(out, model, settings):
    """Where a variant's checkpoints and figures go: output/VAE for the study's configuration,
    output/VAE/beta_0.5_hidden_512-256 for a variant (floats written exactly, so names never collide)."""
    folder = os.path.join(out, MODEL_NAMES[model])
    return os.path.join(folder, _words(settings, "_", "_", "-")) if settings else folder


def checkpoint_path(out, config, train):
    """The one file of a run, e.g. output/VAE/VAE_latent_20.pt; seeds other than 0 add _seed_S."""
    suffix = "" if train.seed == 0 else f"_seed_{train.seed}"
    folder = variant_folder(out, config.model, variant(config, train))
    return os.path.join(folder, f"{MODEL_NAMES[config.model]}_latent_{config.latent}{suffix}.pt")


class Run(NamedTuple):
    """A finished run found on disk (unpacks as path, checkpoint, model)."""
    path: str
    ckpt: dict
    model: torch.nn.Module

    @property
    def config(self):
        return self.model.config

    @property
    def train(self):
        return train_config(self.config, self.ckpt["args"])

    @property
    def variant(self):
        return variant(self.config, self.train)


def load_runs(folder, device="cpu"):
    """Every finished run under folder, ordered by (model, variant, latent size, seed). Unfinished
    runs (in progress, or interrupted) are left out with a note, and so is a second file of the same
    identity (possible only for files written before names carried the variant)."""
    paths = sorted(glob.glob(os.path.join(folder, "*", "**", "*_latent_*.pt"), recursive=True))
    if not paths:
        raise UserError(f"no checkpoints under {folder}: run python train.py first")
    runs = {}
    for path in paths:
        ckpt, model = load_checkpoint(path, device)
        run = Run(path, ckpt, model)
        identity = (run.config, run.train)
        if ckpt["epoch"] < ckpt["args"]["epochs"]:
            print(f"leaving out {path}: {ckpt['epoch']} of {ckpt['args']['epochs']} epochs "
                  "(finish it with python train.py ... --resume)", file=sys.stderr)
        elif identity in runs:
            keep = sorted([run, runs[identity]], key=lambda r: r.path != checkpoint_path(folder, *identity))
            print(f"leaving out {keep[1].path}: the same run as {keep[0].path}", file=sys.stderr)
            runs[identity] = keep[0]
        else:
            runs[identity] = run
    if not runs:
        raise UserError(f"no finished runs under {folder}: run python train.py (with --resume to finish them)")
    return sorted(runs.values(), key=lambda r: (r.config.model, variant_label(r.variant) != "default",
                                                variant_label(r.variant), r.config.latent, r.train.seed))
