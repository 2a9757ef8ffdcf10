"""A newcomer's first minutes: flags read before PyTorch loads, no prefix matching, Ctrl-C as one
line at any moment, every long step announced, and each script naming the next one."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import evaluate
import train
import visualize
from vaestudy import cli
from vaestudy.cli import Progress, UserError
from vaestudy.report import printed_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "256", "--batch-size", "128", "--hidden", "16", "--device", "cpu"]


def run(script, *args, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          cwd=ROOT, **kwargs)


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "visualize.py", "explorer.py"])
def test_help_and_a_flag_mistake_import_no_pytorch(script):
    """PyTorch alone takes about 2 s to import here: --help and a mistyped flag answer before it."""
    for flags, code in ((["--help"], 0), (["--no-such-flag"], 2)):
        result = run(script, *flags, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
        assert result.returncode == code, result.stderr
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time")}
        assert imported and not imported & {"torch", "torchvision", "matplotlib", "submitit", "selenium"}


def test_a_prefix_of_a_flag_is_an_error_that_suggests_the_flag():
    result = run("train.py", "--epoch", "3")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2
    assert lines[-1] == "train.py: error: unrecognized arguments: --epoch 3; did you mean --epochs?"


@pytest.mark.parametrize("parse", [train.get_args, evaluate.get_args, visualize.get_args])
def test_no_script_takes_a_prefix_for_a_flag(parse, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse(["--out", "x", "--see", "1"])  # --seed in every one of them
    assert stopped.value.code == 2 and "did you mean --seed?" in capsys.readouterr().err


@pytest.mark.parametrize("script, after_s", [("train.py", 0.3), ("train.py", 1.0), ("bench.py", 0.5),
                                             ("bench.py", 1.5)])
def test_ctrl_c_while_starting_is_one_line(script, after_s, tmp_path, mnist_dir):
    """SIGINT while the script still imports (PyTorch: seconds) or has just begun: one line, no traceback.
    Both scripts are still busy then, whatever the machine: train.py has 50 epochs to run, bench.py
    imports PyTorch before it reads its flags and then times epochs for a while."""
    flags = ["--out", str(tmp_path), "--data-dir", mnist_dir]
    flags = {"train.py": [*flags, "--latent", "2", "--epochs", "50", *TINY],
             "bench.py": ["--data-dir", mnist_dir, "--json", str(tmp_path / "bench.json")]}[script]
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *flags], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err


def test_a_torchvision_that_cannot_load_is_one_line_naming_both_versions(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what import then raises: ImportError
    with pytest.raises(UserError) as error:
        cli.import_torchvision()
    message = str(error.value)
    assert "\n" not in message and "torchvision " in message and "with torch " in message
    assert "pip install --force-reinstall torch torchvision" in message


def test_progress_off_a_terminal_is_plain_lines_and_an_estimate(capsys, monkeypatch):
    monkeypatch.setattr(cli, "on_terminal", lambda: False)
    with Progress(1000, "log p(x), k = 5000", "image", every_s=0.0, hint="--nll-samples 500 is faster",
                  hint_over_s=0.0) as bar:
        for _ in range(10):
            time.sleep(0.002)
            bar.update(100)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("log p(x), k = 5000: 1,000 images, about ") and "(timed on the first 100)" in lines[0]
    assert lines[0].endswith("; --nll-samples 500 is faster")
    assert lines[1].startswith("log p(x), k = 5000: 200 of 1,000 images, about ") and lines[1].endswith(" left")
    assert len(lines) == 9 and not any("\r" in line for line in lines), "one a batch here, none after the last"


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (59.6, "1 min"), (200, "3 min 20 s"), (1980, "33 min"),
                                           (4368, "1 h 12 min")])
def test_durations_read_as_words(seconds, text):
    assert cli.duration(seconds) == text


@pytest.mark.slow
def test_the_first_look_end_to_end_says_what_comes_next(mnist_dir, tmp_path):
    """train.py, evaluate.py (announcing the NLL's cost before it runs, with its k and image count)
    and visualize.py as a newcomer runs them, their output piped (no terminal): each ends by naming
    the next step, and the run leaves no lock file behind."""
    out, data = ["--out", str(tmp_path)], ["--data-dir", mnist_dir]
    trained = run("train.py", "--model", "vae", "--latent", "2", "--epochs", "2", "--recon", "bce", "--binarize",
                  *TINY, *out, *data)
    assert trained.returncode == 0, trained.stderr
    tail = trained.stdout.strip().splitlines()[-3:]
    assert tail[0] == "next:" and tail[1].startswith(f"  python evaluate.py --out {tmp_path} ")
    assert tail[2].startswith(f"  python visualize.py --out {tmp_path} ")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".lock")], "the lock file goes with the run"

    measured = run("evaluate.py", "--no-classifier", "--nll-samples", "30", "--device", "cpu", *out, *data)
    assert measured.returncode == 0, measured.stderr
    announced = [line for line in measured.stderr.splitlines() if line.startswith("log p(x), k = 30: ")]
    assert announced and announced[0].startswith("log p(x), k = 30: 10,000 images, about ")
    printed = measured.stdout.strip().splitlines()
    assert max(len(line) for line in printed if str(tmp_path) not in line) <= 100, \
        "the printed summary fits a terminal (a long --out aside); results.md has every column"
    assert printed[-1].startswith(f"next: python visualize.py --out {tmp_path} ")
    assert any(line.startswith("Short runs: the study's configuration") for line in printed) is False, \
        "a variant's short runs are not the study's configuration"

    drawn = run("visualize.py", "--device", "cpu", *out, *data)
    assert drawn.returncode == 0, drawn.stderr
    tail = drawn.stdout.strip().splitlines()
    first = tail.index("next:") + 1
    assert tail[first].startswith(f"  {tmp_path / 'explorer.html'}   the latent explorer"), "the explorer first"
    assert tail[-1].startswith(f"  {tmp_path / 'results.md'}   every measurement")


@pytest.mark.slow
def test_short_runs_of_the_study_say_what_they_can_show(mnist_dir, tmp_path, capsys):
    train.main(["--model", "vae", "--latent", "2", "--epochs", "1", "--device", "cpu", "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    note = "Short runs: the study's configuration trained for 1 epoch here, the study's for 50."
    assert (tmp_path / "results.md").read_text().startswith(note)
    assert note.split(" here,")[0] in capsys.readouterr().out


def test_the_printed_summary_of_the_published_study_fits_100_columns():
    with open(os.path.join(ROOT, "results", "study", "results.json")) as f:
        results = json.load(f)
    text = printed_summary(results)
    assert max(map(len, text.splitlines())) <= 100
    assert "VAE: lowest validation MSE at latent 20; smallest latent size within 2% of it: 20 (selected)" in text
    assert "  20      3      50      0.0165    0.0212     10.97  11.3    0.9442" in text
