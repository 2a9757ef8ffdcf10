"""Train the study's Autoencoder and VAE on MNIST: one checkpoint per run (vaestudy/runs.py says what a run is).

    python train.py                          # the whole study: both models, latent 2 5 10 20 50 100
    python train.py --model vae --latent 20  # one run
    python train.py --model vae --beta 0.5   # a variant: its own files, under output/VAE/beta_0.5/
    python train.py --resume                 # continue (or skip) the runs already there; --overwrite retrains them
"""
import argparse
import sys

from vaestudy.cli import (
    ArgumentParser,
    UserError,
    add_place_flags,
    check_seeds,
    model_kind,
    next_steps,
    out_flag,
    run_cli,
)
from vaestudy.runs import PRECISIONS, RECONS, STUDY_EPOCHS, STUDY_SPLIT, ModelConfig, TrainConfig, planned_runs


def split_seed(text):
    """--split-seed: a whole number, or "study"."""
    if text == STUDY_SPLIT:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor {STUDY_SPLIT!r}")


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
                   help="continue each run from its checkpoint to --epochs; finished runs are skipped (default: off: "
                        "a run whose checkpoint exists is refused, before anything trains)")
    g.add_argument("--overwrite", action="store_true",
                   help="retrain runs whose checkpoints exist from scratch, each replaced at its first save "
                        "(default: off)")
    g = p.add_argument_group("what a run learns: any value but the default (the study's) makes a variant, a run "
                             "with files of its own (vaestudy/runs.py)")
    g.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="images per step (default: %(default)s)")
    g.add_argument("--lr", type=float, default=TrainConfig.lr, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                   help="AdamW weight decay (default: %(default)s, PyTorch's)")
    g.add_argument("--beta", type=float, default=TrainConfig.beta,
                   help="weight of the KL term, VAE only (default: %(default)s)")
    g.add_argument("--recon", default=TrainConfig.recon, choices=RECONS,
                   help="reconstruction term summed over pixels: mse (a Gaussian of variance 1/2), bce (Bernoulli, "
                        "from the logits), gaussian (a Gaussian whose variance, one scalar, is learned) or "
                        "gaussian-optimal (that variance set to the batch's per-pixel MSE, its optimum) "
                        "(default: %(default)s, the study's)")
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
    g.add_argument("--split-seed", type=split_seed, default=TrainConfig.split_seed,
                   help="seed of the 54k/6k train/val split, or 'study' for the study's own (sklearn's "
                        "train_test_split with random_state 0) (default: %(default)s)")
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
    g.add_argument("--jobs", type=int, default=None,
                   help="local: processes at a time, each training its share of the runs one after another: on "
                        "GPUs one per GPU (sharing them when there are more jobs than GPUs), else each with a share "
                        "of the CPU cores (default: one per visible GPU, else 2)")
    g.add_argument("--runs-per-job", type=int, default=1,
                   help="slurm: runs one array task trains one after another, paying Python's start, PyTorch's "
                        "import, a CUDA context and the data once; a study run takes seconds on a GPU, so pack "
                        "several (python bench.py suggests a number) (default: %(default)s)")
    g.add_argument("--only-runs", type=int, nargs="+", default=None, metavar="I",
                   help="train only these of the runs the flags plan, by their place in the plan from 0; what a "
                        "launcher's job is given (default: all)")
    g.add_argument("--wait", action="store_true",
                   help="slurm: wait for the jobs to end, then report as local does (default: submit and return)")
    g.add_argument("--partition", default=None, help="slurm: partition (default: the cluster's default)")
    g.add_argument("--time-min", type=int, default=60,
                   help="time limit of a run in minutes; a run stopped by it is requeued and resumes (default: 60)")
    g.add_argument("--gpus-per-run", type=int, default=1, help="slurm: GPUs per run, 0 for CPU nodes (default: 1)")
    g.add_argument("--cpus-per-run", type=int, default=4, help="slurm: CPUs per run (default: 4)")
    g.add_argument("--max-running", type=int, default=64,
                   help="slurm: most array tasks (jobs) running at once (default: 64)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be positive")
    if args.resume and args.overwrite:
        p.error("--resume continues a run and --overwrite retrains it: choose one")
    if args.overwrite and args.launcher != "none":
        p.error("--overwrite retrains in this process only (a requeued job must resume): drop --launcher, or move "
                "the runs' checkpoints away first")
    if not args.save_every_s >= 0:
        p.error("--save-every-s must not be negative")
    for name in ("threads", "jobs", "runs_per_job", "time_min", "cpus_per_run", "max_running"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    check_seeds(seed=args.seed, **({} if args.split_seed == STUDY_SPLIT else {"split_seed": args.split_seed}))
    try:
        planned_runs(args)  # every rule on the settings, once, where the configs are made
    except ValueError as e:
        p.error(str(e))
    except IndexError as e:  # --only-runs past the plan
        p.error(str(e))
    return args


def main(argv=None):
    args = get_args(argv)  # before PyTorch is imported (2 s here): --help and a mistyped flag answer at once
    if args.launcher != "none":
        try:
            from vaestudy.launch import launch  # only here: submitit is needed for launching alone
        except ImportError as e:
            raise UserError(f"--launcher {args.launcher} needs {e.name or 'submitit'}: pip install -r requirements.txt")
        return launch(args, sys.argv[1:] if argv is None else argv)
    from vaestudy.datasets import dataset_folder
    from vaestudy.training import train_sweep

    train_sweep(args)
    out = out_flag(args.out, args.dataset)
    next_steps(f"python evaluate.py{out}   measures every run under {dataset_folder(args.out, args.dataset)} "
               "(results.md)",
               f"python visualize.py{out}  draws the figures and the latent explorer")


if __name__ == "__main__":
    run_cli(main)
