"""What every script's command line shares: one-line errors, the flags the scripts have in common,
seeds, and progress bars."""
import argparse
import sys

from tqdm import tqdm


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


SEED_RANGE = (0, 2**64 - 1)  # what torch.manual_seed and torch.Generator accept, less the negatives


def check_seeds(**seeds):
    """A seed outside SEED_RANGE is refused before anything runs: PyTorch would raise mid-run."""
    for flag, values in seeds.items():
        for value in values if isinstance(values, list) else [values]:
            if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
                raise UserError(f"--{flag.replace('_', '-')} {value}: seeds are whole numbers from 0 to 2**64 - 1")


def on_terminal():
    return sys.stderr.isatty()


def progress(**kwargs):
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe, a test) none, since the bar's
    redrawing would leave carriage returns and cursor moves in the text."""
    return tqdm(disable=not on_terminal(), dynamic_ncols=True, **kwargs)


def model_kind(text):
    """--model: ae, vae or both, also as tables write them (Autoencoder, VAE), in any case."""
    kinds = {"ae": "ae", "autoencoder": "ae", "vae": "vae", "both": "both"}
    if text.lower() not in kinds:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from ae, vae, both)")
    return kinds[text.lower()]
