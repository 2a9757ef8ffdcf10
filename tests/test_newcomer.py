"""What a newcomer meets first: short mistakes, outputs that say what they are, figures that read
well for a small sweep, logs without terminal codes."""
import json
import os
import subprocess
import sys

import pytest

import train
from vaestudy import figures, plots, training
from vaestudy.checkpoints import Run
from vaestudy.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "256", "--batch-size", "128", "--hidden", "16", "--device", "cpu"]


def cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True)


@pytest.mark.parametrize("script, flags, message", [
    ("train.py", ["--latnet", "2"], "unrecognized arguments: --latnet 2"),
    ("train.py", ["--model", "gan"], "argument --model: invalid choice: 'gan' (choose from ae, vae, both)"),
    ("train.py", ["--precision", "fp16"], "argument --precision: invalid choice: 'fp16' (choose from "),
    ("evaluate.py", ["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ("visualize.py", ["--outt", "x"], "unrecognized arguments: --outt x"),
])
def test_a_flag_mistake_is_two_short_lines(script, flags, message):
    result = cli(script, *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) <= 3, result.stderr
    assert lines[-1].startswith(f"{script}: error: {message}") and f"python {script} --help" in lines[0]
    if "--precision" in flags:
        assert lines[-1].endswith(("fp32, bf16)", "'fp32', 'bf16')")), "the choices named"


@pytest.mark.parametrize("spelling, kind", [("VAE", "vae"), ("vae", "vae"), ("AE", "ae"), ("Autoencoder", "ae"),
                                            ("autoencoder", "ae"), ("Both", "both")])
def test_model_is_named_as_tables_name_it_in_any_case(spelling, kind):
    assert train.get_args(["--model", spelling]).model == kind


def test_model_VAE_trains_the_vae(mnist_dir, tmp_path):
    train.main(["--model", "VAE", "--latent", "2", "--epochs", "1", *TINY, "--data-dir", mnist_dir, "--out",
                str(tmp_path)])
    assert [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.pt")] == ["VAE"]


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(mnist_dir, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_epoch", interrupted)
    with pytest.raises(UserError, match="interrupted before the first epoch of .*VAE_latent_2.pt ended: nothing of "
                                        "that run was saved"):
        train.main(["--model", "vae", "--latent", "2", "--epochs", "3", *TINY, "--data-dir", mnist_dir,
                    "--out", str(tmp_path)])
    assert not list(tmp_path.rglob("*.pt"))


def test_resume_without_a_checkpoint_says_what_it_will_do(mnist_dir, tmp_path, capsys):
    train.main(["--model", "ae", "--latent", "2", "--epochs", "1", *TINY, "--data-dir", mnist_dir,
                "--out", str(tmp_path), "--resume"])
    assert ("--resume: 0 finished (skipped), 0 to continue from its checkpoint, 1 to start afresh, of 1 planned"
            in capsys.readouterr().out)


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "mnist.zip").write_bytes(b"not a folder")
    result = cli("train.py", "--data-dir", str(tmp_path / "mnist.zip"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: --data-dir {tmp_path / 'mnist.zip'} is a file, not a folder: point it at a folder (MNIST goes "
        "into FOLDER/MNIST/raw)"]


@pytest.mark.slow
def test_logs_have_one_plain_line_per_epoch_with_the_sweeps_place(mnist_dir, tmp_path):
    """Away from a terminal (a log, a pipe) no bar is drawn: no carriage returns or cursor moves, and
    each epoch is one line naming the loss optimised and the sweep's progress."""
    result = cli("train.py", "--model", "vae", "--latent", "2", "3", "--epochs", "2", "--recon", "bce", *TINY,
                 "--data-dir", mnist_dir, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, result.stderr):
        assert "\r" not in text and "\x1b" not in text
    epochs = [line for line in result.stdout.splitlines() if ": epoch " in line]
    assert len(epochs) == 4
    assert epochs[0].startswith("run 1 of 2, VAE (hidden 16, recon bce, batch-size 128, limit 256) latent 2: epoch 1 "
                                "of 2: loss ")
    assert epochs[-1].startswith("run 2 of 2, VAE (hidden 16, recon bce, batch-size 128, limit 256) latent 3: epoch 2")
    assert "(bce + KL), train MSE " in epochs[0] and "; sweep: 1 of 4 epochs done, about " in epochs[0]
    assert "; sweep: 4 of 4 epochs done, about 0 s left" in epochs[-1]
    result = cli("evaluate.py", "--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier")
    assert result.returncode == 0 and "\r" not in result.stderr and "\x1b" not in result.stderr, result.stderr


@pytest.mark.slow
def test_a_short_runs_row_says_its_epochs_and_skips_the_study_comparison(mnist_dir, tmp_path):
    """The study's configuration (no variant) for 1 epoch at two sizes: its row says 1, the selection
    says it chose among short runs, and the comparison with the study's 50-epoch numbers is left out."""
    import evaluate
    train.main(["--model", "vae", "--latent", "2", "3", "--epochs", "1", "--device", "cpu", "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    report = (tmp_path / "results.md").read_text()
    assert "| model | latent | seeds | epochs | test MSE |" in report and "\n| VAE | 2 | 1 | 1 | 0.0" in report
    assert "(selected; among runs of 1 epoch, the study trained for 50)" in report
    assert "| study AE |" not in report
    assert "left out: the runs of the study's configuration here were trained for 1 epoch, the study's for 50" in report
    assert json.loads((tmp_path / "results.json").read_text())["summary"][0]["epochs"] == [1]


def test_latent_axes_are_ticked_at_the_sizes_trained(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.setdefault(os.path.basename(path), fig))
    row = lambda latent, units: {"model": "VAE", "variant": "default", "settings": {}, "latent": latent, "seeds": [0],
                                 "test_mse_per_digit": [0.01] * 10, "test_mse_per_digit_std": [0.0] * 10,
                                 "active_units": units, "active_units_std": 0.0, "dead_units": None,
                                 "classifier_accuracy": 0.9, "classifier_accuracy_std": 0.0,
                                 "frechet_distance": None, "test_kl": 5.0}
    plots.plot_results([row(2, 2.0), row(20, 11.0)], None, str(tmp_path))
    for name in ("active_units.jpg", "classifier_accuracy.jpg"):
        ax = drawn[name].axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "20"] and len(ax.xaxis.get_minorticklocs()) == 0
    units = drawn["active_units.jpg"].axes[0].get_yticks()
    assert all(float(v).is_integer() for v in units), "unit counts are whole numbers"


def fake_runs(epochs, seeds):
    history = lambda seed: {k: [0.05 / (e + 1) + 0.001 * seed for e in range(epochs)] for k in ("train_mse", "val_mse")}
    return [Run(None, {"history": history(s)}, None) for s in range(seeds)]


def test_curves_read_well_for_a_short_sweep(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.setdefault(os.path.basename(path), fig))
    figures.plot_curves({2: fake_runs(2, 1)}, "val_mse", "MSE", "VAE", str(tmp_path / "one.jpg"))
    figures.plot_curves({2: fake_runs(3, 2)}, "val_mse", "MSE", "VAE", str(tmp_path / "two.jpg"))
    figures.plot_curves({2: fake_runs(20, 1)}, "val_mse", "MSE", "VAE", str(tmp_path / "long.jpg"))
    one, two, long = (drawn[f"{name}.jpg"].axes[0] for name in ("one", "two", "long"))
    assert all(float(v).is_integer() for v in one.get_xticks()), "whole epochs"
    assert (one.get_yscale(), long.get_yscale()) == ("linear", "log"), "log only where the error falls 3-fold"
    for ax in (one, long):
        ax.figure.canvas.draw()
        low, high = ax.get_ylim()
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
                  if t.get_text() and low <= t.get_position()[1] <= high]
        assert len(labels) >= 2 and all("10^" not in t and "times" not in t for t in labels), labels
    assert one.get_legend().get_title().get_text() == "latent size", "one seed: no band, no word of one"
    assert two.get_legend().get_title().get_text() == "latent size (band: seeds' range)"
