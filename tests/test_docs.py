"""The README and the pages under docs/: every table that quotes results is what the committed
results render to, digit for digit, and the README stays a door (short, commands first, no link
leaving the repository but public addresses)."""
import glob
import json
import os
import re

import pytest

from vaestudy import report, speed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def committed(folder):
    with open(os.path.join(ROOT, "results", folder, "results.json")) as f:
        return json.load(f)["summary"]


def page(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def assert_in(table, name, what):
    assert table, f"results/ has nothing for the {what}"
    assert table.strip() in page(name), f"regenerate the {what} in {name} from results/"


def test_readme_headline_table_is_the_committed_results_json():
    assert_in(report.headline_table(committed("study")), "README.md", "headline table")


def test_study_pages_tables_are_the_committed_results_json():
    study = committed("study")
    default = [r for r in study if r["variant"] == "default"]
    assert_in(report.markdown_tables(default).split("\n\n")[0], "docs/study.md", "table of every column")
    assert_in(report.study_table(study), "docs/study.md", "comparison with the study")
    assert_in(report.rate_distortion_table(study), "docs/rate-distortion.md", "rate-distortion table")


def test_likelihood_pages_table_is_the_committed_results_json():
    assert_in(report.likelihood_table(committed("likelihood")), "docs/likelihood.md", "benchmark table")


def test_speed_pages_tables_are_the_committed_results():
    files = sorted(glob.glob(os.path.join(ROOT, "results", "bench", "bench_hidden_*.json")))
    bench_results = []
    for path in files:
        with open(path) as f:
            bench_results.append(json.load(f))
    bench_results.sort(key=lambda r: -sum(r["model"]["hidden"]))
    assert_in(speed.speed_table(bench_results), "docs/speed.md", "speed table")
    study, precision = committed("study"), committed("precision")
    assert_in(report.precision_table(study, precision), "docs/speed.md", "bf16 quality table")
    assert_in(report.machine_table(study, precision, ("results/study", "results/precision")), "docs/speed.md",
              "the two machines' float32 table")
    assert_in(report.precision_table(precision, precision, report.EVERY_METRIC), "docs/speed.md",
              "table of bf16 beside float32 on one machine")
    with open(os.path.join(ROOT, "results", "bench", "nll_precision.json")) as f:
        nll = json.load(f)
    text = page("docs/speed.md")
    assert speed.nll_table(nll).strip() in text, "regenerate the NLL table from results/bench/nll_precision.json"
    for figure in (f"{nll['difference_mean']:+.3f} nats", f"{nll['difference_std']:.3f}", f"{nll['nll_fp32']:.2f}",
                   f"{nll['nll_bf16']:.2f}"):
        assert figure in text, f"docs/speed.md should quote {figure} from results/bench/nll_precision.json"


def commands(text):
    """The README's shell command lines, as (first line number, command) with continuations joined."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        start, command = i, lines[i]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1].rstrip() + " " + lines[i].strip()
        found.append((start, command))
        i += 1
    return found


def test_the_readme_is_a_door():
    text = page("README.md")
    lines = text.splitlines()
    assert len(lines) <= 250 and max(map(len, lines)) <= 100, "short, and no line wider than 100 characters"
    installs = {command: n for n, command in commands(text) if "pip install -r requirements.txt" in command}
    study = [n for command, n in installs.items()
             if "python train.py --resume && python evaluate.py && python visualize.py" in command
             and command.startswith("python -m venv .venv && . .venv/bin/activate")]
    first_look = [n for command, n in installs.items() if "python train.py --latent 2 20 --epochs 3 &&" in command]
    assert study and study[0] < 40, "the main job's one command line, from nothing, on the first screen"
    assert installs.get("pip install -r requirements.txt && ruff check . && pytest", 99) < 40, "and the tests'"
    assert first_look and first_look[0] < study[0], "the first look comes before the whole study"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "pip install -q -r requirements.txt && ruff check . && pytest\n" in ci, "CI runs what the README says"


PAGES = ["README.md"] + [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


@pytest.mark.parametrize("name", PAGES)
def test_links_stay_in_the_repository_and_lead_somewhere(name):
    folder = os.path.dirname(os.path.join(ROOT, name))
    for target in re.findall(r"\]\(([^)\s]+)\)", page(name)):
        if target.startswith(("http://", "https://", "#")):  # public addresses, and places on the same page
            continue
        path = os.path.normpath(os.path.join(folder, target.split("#")[0]))
        assert path.startswith(ROOT + os.sep), f"{name} links outside the repository: {target}"
        assert os.path.exists(path), f"{name} links to {target}, which is not there"


def test_the_published_results_are_apart_from_the_working_folder():
    """The default commands write output/, which git ignores as a whole; results/ is theirs only
    through --out."""
    ignored = page(".gitignore").splitlines()
    assert "output/" in ignored
    import evaluate
    import train
    import visualize
    for script in (train, evaluate, visualize):
        assert script.get_args([]).out == "output"


def results_of(folder):
    with open(os.path.join(ROOT, "results", folder, "results.json")) as f:
        return json.load(f)


def test_calibrated_pages_tables_are_the_committed_results():
    study, calibrated = committed("study"), results_of("calibrated")
    assert_in(report.calibration_table(study, calibrated["summary"]), "docs/calibrated.md",
              "table of the optimal sigma beside sigma² = 1/2")
    for line in report.selection_lines(calibrated["selection"], calibrated["summary"]):
        assert line in page("docs/calibrated.md"), "regenerate the calibrated selection from results/calibrated"
    with open(os.path.join(ROOT, "results", "calibrated", "bits_per_dim.json")) as f:
        rows = json.load(f)
    assert_in(report.bits_per_dim_table(rows), "docs/calibrated.md", "bits-per-dimension table")
    from vaestudy.metrics import gaussian_elbo_bits
    for row in rows:  # the page says the ELBO column is the formula of the error, the KL and the variance
        assert row["bits_per_dim_k1"] == pytest.approx(gaussian_elbo_bits(
            row["test_mse_sampled"], row["test_kl"], row["decoder_sigma"] ** 2, 784), abs=0.01)


def test_the_kl_weights_control_tables_are_the_committed_results():
    """The control of docs/calibrated.md: the arms at latent 20, 50 and 100, the constant beta against
    the optimal sigma, the plateau's steps within each arm, the selections, and the samples at latent 20."""
    arms = report.kl_weight_arms(committed("study"), committed("calibrated"), committed("control"))
    latents = report.CONTROL_LATENTS
    for table, what in ((report.arms_table(arms, latents), "table of the arms"),
                        (report.arms_comparison(dict(arms)["beta 0.011"], dict(arms)["optimal sigma"], latents,
                                                report.STUDY_METRICS, ("beta 0.011", "optimal sigma")),
                         "constant beta against the optimal sigma"),
                        (report.plateau_table(arms, ((20, 50), (50, 100), (20, 100))), "plateau's steps"),
                        (report.selection_table(arms, latents), "selections of the arms"),
                        (report.samples_table(report.samples_arms(committed("control"))), "samples' table")):
        assert_in(table, "docs/calibrated.md", what)


def test_the_fashion_mnist_page_is_the_committed_results():
    fashion = results_of("fashion-mnist")
    summary = fashion["summary"]
    from vaestudy.datasets import FASHION_MNIST
    study = report.FASHION_STUDY
    headline = report.headline_table(summary, study)
    ranking = report.class_ranking(summary, FASHION_MNIST, (("Autoencoder", study), ("VAE", study)))
    assert headline.count("\n| ") == 12 and ranking.count("\n| ") == 12, "both models at six sizes"
    assert_in(headline, "docs/fashion-mnist.md", "headline table")
    assert_in(ranking, "docs/fashion-mnist.md", "classes' ranking")
    for line in report.selection_lines(fashion["selection"], summary):
        assert line in page("docs/fashion-mnist.md"), "regenerate the selections from results/fashion-mnist"
    arms = report.samples_arms(summary, {"precision": "bf16"})
    assert [label for label, _ in arms][0] == "beta 1 (the study's)" and len(arms) == 3, \
        "the study's loss, a constant beta, the optimal sigma"
    for table, what in ((report.arms_table(arms, report.FASHION_LATENTS), "table of the arms"),
                        (report.plateau_table(arms, report.FASHION_STEPS), "plateau's steps"),
                        (report.calibration_table(summary, summary), "optimal sigma beside sigma² = 1/2"),
                        (report.samples_table(arms), "samples' table"),
                        (report.precision_table(summary, summary), "bf16 beside float32")):
        assert table.count("\n| ") >= 2, f"the {what} has rows"
        assert_in(table, "docs/fashion-mnist.md", what)


def test_the_five_seeds_and_the_study_split_are_the_committed_results():
    study, epyc = committed("study"), committed("epyc")
    assert_in(report.machine_table(study, epyc, ("results/study", "results/epyc")), "docs/speed.md",
              "five seeds on this CPU beside the study")
    split = results_of("split")
    assert_in(report.split_table(study, split["summary"]), "docs/study.md", "the study's split beside ours")
    for line in report.selection_lines(split["selection"], split["summary"]):
        assert line in page("docs/study.md"), "regenerate the study split's selection from results/split"
