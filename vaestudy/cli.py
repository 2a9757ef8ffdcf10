"""What every script's command line shares: one-line errors, the flags the scripts have in common,
seeds, progress, and what to run next. Nothing here needs PyTorch, so that a script reads its flags
(and answers --help or a mistyped flag) before the two seconds PyTorch takes to import."""
import argparse
import difflib
import importlib
import os
import signal
import sys
import time
from importlib.metadata import PackageNotFoundError, version

from tqdm import tqdm

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _interrupted_while_starting(signum, frame):
    # exit here and now: an exception raised inside an import that C++ code runs (PyTorch's) aborts
    # the process instead, and nothing has been done yet that an exit would lose
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    os._exit(130)


# Ctrl-C while one of the repository's scripts is still importing (PyTorch takes seconds) is one line
# too; run_cli installs _on_interrupt once main() runs. Not for a notebook or pytest importing us.
if os.path.dirname(os.path.abspath(getattr(sys.modules["__main__"], "__file__", "") or "")) == REPOSITORY:
    signal.signal(signal.SIGINT, _interrupted_while_starting)


class UserError(Exception):
    """A problem the user can fix: printed as one line, exit code 1, no traceback."""


def _on_interrupt(signum, frame):
    """Ctrl-C in main(): KeyboardInterrupt, except inside an import (the scripts import PyTorch once
    their flags are read), where Python may raise it in one of importlib's callbacks that swallow
    it ("Exception ignored in ... _get_module_lock"), and the script then ran on: exit there."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            _interrupted_while_starting(signum, frame)
        frame = frame.f_back
    raise KeyboardInterrupt


def run_cli(main):
    """Call main() and turn UserError (and Ctrl-C) into a one-line message and exit code."""
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        main()
    except UserError as e:
        sys.exit(f"{line_start()}error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"{line_start()}interrupted")


def line_start():
    """On a terminal, what puts a message at the start of a clean line: a bar (or the ^C the terminal
    echoed) may stand where the cursor is."""
    return "\r\033[K" if on_terminal() else ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are two short lines, the error last, instead of the whole usage."""

    def __init__(self, doc, **kwargs):
        # allow_abbrev=False: a prefix of a flag is no flag (--epoch 3 once ran as --epochs 3, every run)
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                         **kwargs)

    def error(self, message):
        self.exit(2, f"usage: python {self.prog} [flags]; python {self.prog} --help lists them\n"
                     f"{self.prog}: error: {message}{self.suggestion(message)}\n")

    def suggestion(self, message):
        """"; did you mean --epochs?" for a mistyped flag that is close to one of ours."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        for word in (w for w in message.split(":", 1)[1].split() if w.startswith("-")):
            close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


def add_place_flags(p, out_help=None, checkpoints=False, dataset=True):
    """--data-dir, --device and --dataset, with --out when out_help says what goes there and
    --checkpoints when checkpoints are read: where a script reads and writes, and on what."""
    if checkpoints:
        p.add_argument("--checkpoints", default=None, help="folder of checkpoints to read (default: the --out folder)")
    if out_help:
        p.add_argument("--out", default="output", help=f"{out_help} (default: output)")
    p.add_argument("--data-dir", default="data", help="where the datasets live or are fetched to (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto, CUDA when present)")
    if dataset:
        from vaestudy.datasets import DATASETS, DEFAULT, FASHION_MNIST  # no PyTorch in there
        folder = (f"; any but {DEFAULT} has a folder of its own under --out, e.g. OUT/{FASHION_MNIST.name}/"
                  if out_help else "")
        p.add_argument("--dataset", default=DEFAULT, choices=list(DATASETS),
                       help=f"the images: {', '.join(DATASETS)}{folder} (default: %(default)s, the study's)")


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


def plural(unit):
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def duration(seconds):
    """45 s, 3 min 20 s, 1 h 12 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds < 600 and seconds % 60 else "")
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """Progress of one long step over `total` items: a tqdm bar on a terminal, and elsewhere a plain
    line at most every `every_s` seconds ("log p(x), k = 5000: 1,200 of 10,000 images, about 29 min
    left"). After the first update that took at least `estimate_after_s`, one line with the estimated
    time of the whole, and `hint` when that estimate is over `hint_over_s`, on a terminal or not."""

    def __init__(self, total, desc, unit, every_s=30.0, hint=None, hint_over_s=180.0, estimate_after_s=0.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.hint, self.hint_over_s, self.estimate_after_s = hint, hint_over_s, estimate_after_s
        self.done, self.start, self.estimated = 0, time.perf_counter(), False
        self.last_line = self.start
        self.bar = progress(total=total, desc=desc, unit=unit, leave=False)

    def update(self, n):
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        left = (now - self.start) / self.done * (self.total - self.done)
        if not self.estimated and now - self.start >= self.estimate_after_s and self.done < self.total:
            self.estimated = True
            whole = left + now - self.start
            line = (f"{self.desc}: {self.total:,} {plural(self.unit)}, about {duration(whole)} "
                    f"(timed on the first {self.done:,})")
            if self.hint and whole > self.hint_over_s:
                line += f"; {self.hint}"
            self.write(line)
        elif not on_terminal() and now - self.last_line >= self.every_s and self.done < self.total:
            self.last_line = now
            self.write(f"{self.desc}: {self.done:,} of {self.total:,} {plural(self.unit)}, about {duration(left)} left")

    def write(self, line):
        self.bar.write(line, file=sys.stderr) if on_terminal() else print(line, file=sys.stderr, flush=True)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def next_steps(*lines):
    """What a script prints last: what to run or open next."""
    print("next: " + lines[0] if len(lines) == 1 else "next:\n" + "\n".join("  " + line for line in lines))


def out_flag(out, dataset="mnist"):
    """" --out X" when X is not the default folder, and " --dataset D" for another dataset than MNIST,
    for the commands next_steps prints."""
    return ("" if os.path.normpath(out) == "output" else f" --out {out}") + (
        "" if dataset == "mnist" else f" --dataset {dataset}")


def import_torchvision():
    """torchvision, or a one-line error naming both versions where it cannot load beside the installed
    PyTorch (a CPU torch from one index and torchvision from another fails with "operator
    torchvision::nms does not exist")."""
    try:
        return importlib.import_module("torchvision")
    except (ImportError, RuntimeError) as e:
        def installed(name):
            try:
                return version(name)
            except PackageNotFoundError:
                return "(not installed)"
        raise UserError(f"torchvision {installed('torchvision')} does not load with torch {installed('torch')} "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): install the two from one "
                        "index, e.g. pip install --force-reinstall torch torchvision (with the same --index-url)")


def model_kind(text):
    """--model: ae, vae or both, also as tables write them (Autoencoder, VAE), in any case."""
    kinds = {"ae": "ae", "autoencoder": "ae", "vae": "vae", "both": "both"}
    if text.lower() not in kinds:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from ae, vae, both)")
    return kinds[text.lower()]
