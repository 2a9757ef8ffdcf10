"""What a run is and where it lives: its identity (the model's and the training's configurations), its name, its file.

A run's identity is its ModelConfig plus its TrainConfig: every setting that changes what is
trained or what it is trained on, the seed included. Two runs that agree on both are the same run;
any other setting makes a variant with files of its own, named after the settings that differ from
the study's (the defaults of the two dataclasses):

    output/VAE/VAE_latent_20.pt               the study's configuration, seed 0
    output/VAE/VAE_latent_20_seed_1.pt        the same, seed 1
    output/VAE/beta_0.5/VAE_latent_20.pt      a variant: its settings name its folder, figures included
    output/fashion-mnist/VAE/VAE_latent_20.pt another dataset: a folder of its own above (datasets.dataset_folder)
"""
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from vaestudy.datasets import DATASETS, DEFAULT, dataset_folder

PRECISIONS = ("fp32", "bf16")  # the matmuls' number format (models.matmul_precision)
MODEL_NAMES = {"ae": "Autoencoder", "vae": "VAE"}
STUDY_SPLIT = "study"  # --split-seed study: the study's own validation split (vaestudy.data.split_indices)
RECONS = ("mse", "bce", "gaussian", "gaussian-optimal")  # the reconstruction terms (models.loss_terms)


@dataclass(frozen=True)  # frozen: part of a run's identity, so hashable and never changed
class ModelConfig:
    """The model's shape (models.build_model builds it): saved in every checkpoint, which rebuilds it alone."""
    model: str = "vae"  # "ae" or "vae"
    latent: int = 20
    hidden: tuple = (784, 784)  # encoder widths; the decoder mirrors them
    input_dim: int = 784  # 28 x 28 pixels
    code_relu: bool = False  # the study's Autoencoder put a ReLU on its code; the default leaves it linear

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))  # checkpoints store a list
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}")
        if self.latent < 1 or any(h < 1 for h in self.hidden):
            raise ValueError("--latent and --hidden sizes must be at least 1")
        if self.code_relu and self.model != "ae":  # the VAE's code is a mean and a log-variance
            raise ValueError("--code-relu is for the Autoencoder: add --model ae")

    def to_dict(self):
        return {**asdict(self), "hidden": list(self.hidden)}


STUDY_EPOCHS = 50  # the study trained every run for 50 epochs
# a setting newer than the first checkpoints: where one lacks it, it had its default
ADDED_LATER = {"added_later": True}


@dataclass(frozen=True)
class TrainConfig:
    """The settings besides the model's that change what a run learns. Epochs are not among them:
    the same run can be continued for longer with --resume."""
    # what it is trained on (vaestudy/datasets.py); not a variant's name but a folder of its own (checkpoint_path)
    dataset: str = field(default=DEFAULT, metadata=ADDED_LATER)
    beta: float = 1.0  # weight of the KL term (the VAE's only)
    # reconstruction loss summed over pixels: "mse" (the study's), "bce", "gaussian" (a learned variance) or
    # "gaussian-optimal" (the variance set to its optimum for each batch)
    recon: str = "mse"
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
    split_seed: int = 0  # the 54k/6k train/validation split; STUDY_SPLIT for the study's own (data.split_indices)
    seed: int = 0  # initialisation, batch order, sampling

    def __post_init__(self):
        for f in fields(self):  # 1 and 1.0 are one setting, whether typed or read back from a checkpoint
            value = getattr(self, f.name)
            if value is not None and not (f.name == "split_seed" and value == STUDY_SPLIT):
                object.__setattr__(self, f.name, {float: float, bool: bool, str: str}.get(f.type, int)(value))
        problems = [
            (self.batch_size < 1, "--batch-size must be positive"), (not self.lr > 0, "--lr must be positive"),
            (self.weight_decay < 0, "--weight-decay must not be negative"), (self.beta < 0,
                                                                             "--beta must not be negative"),
            (self.limit is not None and self.limit < 1, "--limit must be at least 1"),
            (self.recon not in RECONS, f"unknown reconstruction loss {self.recon!r}; use {', '.join(RECONS)}"),
            (self.precision not in PRECISIONS, f"unknown precision {self.precision!r}; use {' or '.join(PRECISIONS)}"),
            (self.iw_samples < 1, "--iw-samples must be at least 1"),
            (self.dataset not in DATASETS, f"unknown dataset {self.dataset!r}; use {', '.join(DATASETS)}"),
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
    if train.recon.startswith("gaussian") and config.model != "vae":
        raise ValueError(f"--recon {train.recon} sets the variance that weighs the VAE's reconstruction against "
                         "its KL; the Autoencoder has no KL: add --model vae")
    if train.iw_samples != TrainConfig.iw_samples and (config.model != "vae" or train.beta != TrainConfig.beta):
        raise ValueError("--iw-samples bounds the VAE's log-likelihood, with beta 1: add --model vae (and no --beta)")


def defines_likelihood(config, train):
    """Whether the run's decoder is a normalised likelihood of its data: Bernoulli on 0/1 pixels. BCE
    on grey pixels is not (its values for a pixel do not sum to 1 over the pixel's values), and the
    squared error is a Gaussian of fixed variance 1/2, a density on pixels that are bytes."""
    return config.model == "vae" and train.recon == "bce" and train.binarize


def gaussian_decoder(config, train):
    """Whether the run's decoder is a Gaussian density on grey pixels, of fixed variance 1/2 ("mse")
    or a learned or optimal one ("gaussian", "gaussian-optimal"): a density of dequantized bytes, in bits per dimension
    (metrics.bits_per_dim)."""
    return config.model == "vae" and train.recon in ("mse", "gaussian", "gaussian-optimal") and not train.binarize


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
    only = getattr(args, "only_runs", None)
    if only is not None:  # a launcher's job: its share of the sweep, by place in the plan
        wrong = [i for i in only if not 0 <= i < len(runs)]
        if wrong:
            raise IndexError(f"--only-runs {wrong[0]}: the flags plan runs 0 to {len(runs) - 1}")
        runs = [runs[i] for i in only]
    return runs


def variant(config, train):
    """The settings that differ from the study's, as ((name, value), ...); model, latent size and
    seed are the axes of every table, and the dataset has a folder (and results) of its own, so they
    are not part of it. () is the study's configuration."""
    defaults = (ModelConfig(model=config.model, latent=config.latent), TrainConfig(seed=train.seed,
                                                                                   dataset=train.dataset))
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
    """The one file of a run, e.g. output/VAE/VAE_latent_20.pt; seeds other than 0 add _seed_S, and
    another dataset than MNIST puts it under its own folder, e.g. output/fashion-mnist/VAE/."""
    suffix = "" if train.seed == 0 else f"_seed_{train.seed}"
    name = MODEL_NAMES[config.model]
    folder = variant_folder(dataset_folder(out, train.dataset), name, variant(config, train))
    return os.path.join(folder, f"{name}_latent_{config.latent}{suffix}.pt")


def objective(config, train):
    """What the training loss is, in words: "mse + KL", "bce + 0.5 KL", "-IWAE bound, K = 5"."""
    if train.iw_samples > 1:
        return f"-IWAE bound, K = {train.iw_samples}"
    return train.recon + ("" if config.model == "ae" else f" + {'' if train.beta == 1 else f'{train.beta:g} '}KL")
