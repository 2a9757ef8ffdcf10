"""--launcher slurm against a real one-node SLURM cluster (the slurm_conf fixture starts it): a sweep
that equals the sequential one, a preempted job that is requeued and finishes every epoch once, a
failing run reported with its log, and sbatch's refusals as one-line errors."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import evaluate
import train
from vaestudy.cli import UserError

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "vae", "--limit", "512", "--batch-size", "128", "--hidden", "32", "--device", "cpu"]
FOLDER = os.path.join("VAE", "hidden_32_batch-size_128_limit_512")
ON_SLURM = ["--launcher", "slurm", "--gpus-per-run", "0", "--cpus-per-run", "1", "--wait"]  # 1 CPU: --threads 1


@pytest.fixture
def cluster(slurm_conf, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    return {**os.environ, "SLURM_CONF": slurm_conf}


def train_py(*argv, env):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv], capture_output=True, text=True,
                          env=env, timeout=300)


def weights_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sweep_on_slurm_equals_the_sequential_runs_and_evaluate_collects_it(cluster, mnist_dir, tmp_path, capsys):
    """Three runs in two array tasks (--runs-per-job 2): the sequential sweep's runs, bit for bit."""
    common = [*TINY, "--latent", "2", "3", "4", "--epochs", "2", "--data-dir", mnist_dir]
    train.main([*common, "--out", str(tmp_path / "seq"), "--threads", "1"])
    train.main([*common, "--out", str(tmp_path / "slurm"), *ON_SLURM, "--runs-per-job", "2"])
    printed = capsys.readouterr().out
    assert "submitted 3 runs as SLURM array" in printed and "of 2 job(s)" in printed
    assert "all 3 runs finished" in printed
    for name in ("VAE_latent_2.pt", "VAE_latent_3.pt", "VAE_latent_4.pt"):
        seq, slurm = (torch.load(tmp_path / where / FOLDER / name, weights_only=True) for where in ("seq", "slurm"))
        assert slurm["epoch"] == 2 and weights_equal(seq["model"], slurm["model"]), name
        assert all(slurm["history"][k] == v for k, v in seq["history"].items() if k != "seconds"), name
    evaluate.main(["--out", str(tmp_path / "slurm"), "--data-dir", mnist_dir, "--no-classifier", "--device", "cpu"])
    results = json.loads((tmp_path / "slurm" / "results.json").read_text())
    assert sorted((r["latent"], r["epochs"]) for r in results["runs"]) == [(2, 2), (3, 2), (4, 2)]


def squeue(job, env):
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T %r"], capture_output=True, text=True,
                         env=env).stdout.split()
    return tuple(out[:2]) if out else (None, None)


def test_a_preempted_job_is_requeued_and_does_every_epoch_once(cluster, mnist_dir, tmp_path):
    """A run that would save only every hour is preempted mid-run: its finished epochs are saved at
    the signal, the requeued job continues from them, and the result is the uninterrupted run's."""
    epochs = 300
    argv = [*TINY, "--latent", "2", "--epochs", str(epochs), "--data-dir", mnist_dir, "--save-every-s", "3600"]
    launcher = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv, "--out",
                                 str(tmp_path / "slurm"),
                                 *ON_SLURM], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster)
    try:
        job = re.match(r"job (\d+):", launcher.stdout.readline()).group(1)
        path = tmp_path / "slurm" / FOLDER / "VAE_latent_2.pt"
        log = tmp_path / "slurm" / "jobs" / f"{job}_0_log.out"
        deadline = time.time() + 120
        while not (log.exists() and ": epoch 3 of" in log.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        assert not path.exists(), "nothing saved before the signal"
        # as SLURM does before a time limit or a preemption when asked with --signal; the job step,
        # not the batch shell (--full), which would die of it
        subprocess.run(["scancel", "--signal=USR2", job], check=True, env=cluster)
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        at_signal = torch.load(path, weights_only=True)["epoch"]
        assert 3 <= at_signal < epochs, "the signal came mid-run, and the run saved its finished epochs"
        while squeue(job, cluster) != ("PENDING", "BeginTime") and time.time() < deadline:
            time.sleep(0.2)
        assert squeue(job, cluster) == ("PENDING", "BeginTime"), "requeued: SLURM holds it for a while"
        # SLURM would start it again about two minutes later; start it now, to keep the test short
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, env=cluster)
        out, err = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, err
    assert "all 1 runs finished" in out
    log = log.read_text()
    assert "Caught signal SIGUSR2" in log and f"Requeued job {job}" in log
    preempted = torch.load(path, weights_only=True)
    assert preempted["epoch"] == epochs and all(len(v) == epochs for v in preempted["history"].values())
    train.main([*argv, "--out", str(tmp_path / "seq"), "--threads", "1"])
    uninterrupted = torch.load(tmp_path / "seq" / FOLDER / "VAE_latent_2.pt", weights_only=True)
    assert weights_equal(uninterrupted["model"], preempted["model"])
    assert all(preempted["history"][k] == v for k, v in uninterrupted["history"].items() if k != "seconds")


def test_a_failing_run_fails_its_job_and_wait_names_it(cluster, mnist_dir, tmp_path):
    result = train_py(*TINY, "--latent", "2", "--epochs", "1", "--lr", "1e6", "--data-dir", mnist_dir,
                      "--out", str(tmp_path), *ON_SLURM, env=cluster)
    assert result.returncode == 1
    job = re.search(r"^job (\d+):", result.stdout, re.M).group(1)
    log = tmp_path / "jobs" / f"{job}_0_log.err"
    assert result.stderr.strip().splitlines() == [
        f"not finished: VAE (hidden 32, batch-size 128, lr 1000000.0, limit 512) latent 2 seed 0 (see {log})",
        "error: 1 of 1 runs did not finish; the same command with --resume continues them"]
    assert re.search(r"^error: .*non-finite at epoch 1", log.read_text(), re.M)
    assert squeue(job, cluster)[0] in ("FAILED", None), "the job failed, not only the run"


@pytest.mark.parametrize("flags, says", [
    ([], "Invalid generic resource (gres) specification (it asked for 1 GPU per run; a cluster without GPUs needs "
         "--gpus-per-run 0)"),
    (["--gpus-per-run", "0", "--partition", "gpu"], "(no partition 'gpu' here; sinfo lists the partitions)"),
    (["--gpus-per-run", "0", "--cpus-per-run", "1", "--partition", "short", "--time-min", "60"],
     "(--time-min 60 is above what the partition allows; sinfo -o '%P %l' shows the limits)"),
])
def test_every_refusal_is_one_line_and_writes_nothing(cluster, mnist_dir, tmp_path, flags, says):
    out = tmp_path / "out"
    result = train_py(*TINY, "--latent", "2", "--epochs", "1", "--data-dir", mnist_dir, "--out", str(out),
                      "--launcher", "slurm", *flags, env=cluster)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: sbatch refused the sweep: ") and line.endswith(says)
    assert result.stdout == "" and not out.exists()


def test_without_wait_it_submits_and_returns(cluster, mnist_dir, tmp_path, capsys):
    train.main([*TINY, "--latent", "2", "--epochs", "1", "--data-dir", mnist_dir, "--out", str(tmp_path),
                "--launcher", "slurm", "--gpus-per-run", "0", "--cpus-per-run", "1"])
    printed = capsys.readouterr().out
    assert "submitted 1 runs as SLURM array" in printed and "--wait waits for them" in printed
    job = re.search(r"^job (\d+):", printed, re.M).group(1)
    subprocess.run(["scancel", job], env=cluster)


def test_an_interrupted_wait_leaves_the_jobs_running(cluster, mnist_dir, tmp_path, monkeypatch):
    from vaestudy import launch
    monkeypatch.setattr(launch, "slurm_states", lambda array: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(UserError, match=r"stopped waiting; the jobs go on \(squeue -j \d+ shows them\)"):
        train.main([*TINY, "--latent", "2", "--epochs", "1", "--data-dir", mnist_dir, "--out", str(tmp_path),
                    *ON_SLURM])
