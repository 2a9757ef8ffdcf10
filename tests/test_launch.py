"""Sweeps as jobs through submitit: the same results as the plain sweep, the GPU flags of a SLURM
array (which the one-node cluster of test_slurm.py cannot show), killed jobs that resume, failures
that are reported."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from submitit.core.utils import DelayedSubmission

import train
from vaestudy import launch
from vaestudy.cli import UserError
from vaestudy.runs import planned_runs

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "vae", "--latent", "2", "3", "--limit", "512", "--batch-size", "128", "--hidden", "32",
        "--device", "cpu", "--threads", "1"]
VARIANT = "hidden_32_batch-size_128_limit_512"


def sweep(mnist_dir, out, *extra):
    train.main([*TINY, "--data-dir", mnist_dir, "--out", str(out), *extra])
    return {p.name: torch.load(p, weights_only=True) for p in sorted((out / "VAE" / VARIANT).glob("*.pt"))}


def test_local_jobs_equal_the_sequential_sweep_bit_for_bit(mnist_dir, tmp_path):
    """With the same threads per run (1), two local jobs of two runs each, each job one process, give
    exactly the sequential sweep's runs."""
    threads = torch.get_num_threads()
    sequential = sweep(mnist_dir, tmp_path / "seq", "--epochs", "2", "--latent", "2", "3", "4", "5")
    assert torch.get_num_threads() == threads, "--threads holds for the runs, not for the caller afterwards"
    parallel = sweep(mnist_dir, tmp_path / "par", "--epochs", "2", "--latent", "2", "3", "4", "5",
                     "--launcher", "local", "--jobs", "2")
    assert list(parallel) == list(sequential) == [f"VAE_latent_{n}.pt" for n in (2, 3, 4, 5)]
    for name, ckpt in sequential.items():
        assert all(torch.equal(ckpt["model"][k], parallel[name]["model"][k]) for k in ckpt["model"])
        for key, values in ckpt["history"].items():
            if key != "seconds":
                assert parallel[name]["history"][key] == values, key
    logs = list((tmp_path / "par" / "jobs").glob("*_log.err"))
    assert len(logs) == 2, "one log per job, under --out"


def fake_slurm(tmp_path, monkeypatch):
    """sbatch, srun and squeue stand-ins: sbatch keeps the script it was given and answers like SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "squeue"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun", "squeue"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_slurm_array_parameters_without_a_cluster(mnist_dir, tmp_path, monkeypatch, capsys):
    script = fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    train.main([*TINY, "--seed", "0", "1", "--epochs", "2", "--data-dir", mnist_dir, "--out", str(out),
                "--launcher", "slurm", "--partition", "gpu", "--time-min", "30", "--max-running", "3",
                "--gpus-per-run", "2", "--cpus-per-run", "6"])
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.M))
    assert options["array"] == "0-3%3", "4 runs (2 latent sizes x 2 seeds), at most 3 at once"
    assert (options["partition"], options["time"], options["gpus-per-node"], options["cpus-per-task"]) == \
        ("gpu", "30", "2", "6")
    assert options["error"].startswith(str(out / "jobs"))
    printed = capsys.readouterr().out
    assert "submitted 4 runs as SLURM array 4242" in printed and "python evaluate.py" in printed
    assert printed.count(str(out / "jobs" / "4242_")) == 4, "each job's log is named"
    runs = []
    for i in range(4):
        (commands,) = DelayedSubmission.load(out / "jobs" / f"4242_{i}_submitted.pkl").args
        (argv,) = commands
        args = train.get_args(argv)
        assert args.launcher == "none" and args.resume and args.threads == 6 and args.out == str(out)
        assert args.only_runs == [i] and args.device == "cpu"
        runs += [(c.latent, t.seed) for c, t in planned_runs(args)]
    assert sorted(runs) == [(2, 0), (2, 1), (3, 0), (3, 1)], "each run in one job"


def test_a_slurm_array_packs_runs_into_jobs_and_a_jobs_gpu_is_its_cuda(mnist_dir, tmp_path, monkeypatch, capsys):
    """Three runs, two per job: an array of two tasks, the first with two runs and twice the time; a
    sweep's --device cuda:1 is each job's cuda, the one GPU SLURM gives it."""
    script = fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    flags = [*TINY, "--latent", "2", "3", "4", "--epochs", "1", "--data-dir", mnist_dir, "--out", str(out),
             "--launcher", "slurm", "--time-min", "30", "--runs-per-job", "2"]
    args = train.get_args(flags)
    commands = [launch.job_command(args, flags, places) for places in ([0, 1], [2])]
    assert [train.get_args(c).only_runs for c in commands] == [[0, 1], [2]]
    monkeypatch.setattr(args, "device", "cuda:1")
    assert train.get_args(launch.job_command(args, [*flags, "--device", "cuda:1"], [0])).device == "cuda"
    train.main(flags)
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script.read_text(), re.M))
    assert options["array"] == "0-1%2" and options["time"] == "60", "a task per 2 runs, and their time"
    assert "submitted 3 runs as SLURM array 4242 of 2 job(s)" in capsys.readouterr().out
    places = [train.get_args(DelayedSubmission.load(out / "jobs" / f"4242_{i}_submitted.pkl").args[0][0]).only_runs
              for i in range(2)]
    assert places == [[0, 1], [2]]


def test_slurm_missing_is_one_line_before_anything_is_fetched(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # python, but no sbatch
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--launcher", "slurm",
                             "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    assert result.stderr.strip().splitlines() == [
        "error: --launcher slurm needs SLURM, and this machine has no sbatch or srun or squeue on its PATH; "
        "--launcher local runs the jobs here"]


def test_killed_job_resumes_from_its_last_epoch(mnist_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(ROOT, "train.py"), *TINY[:2], "--latent", "2", *TINY[5:],
               "--data-dir", mnist_dir, "--out", str(out), "--epochs", "300", "--launcher", "local", "--jobs", "1",
               "--save-every-s", "0.2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    path = out / "VAE" / VARIANT / "VAE_latent_2.pt"
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its job, as a node failure would
    proc.wait()
    saved = torch.load(path, weights_only=True)
    assert 1 <= saved["epoch"] < 300
    epochs = saved["epoch"] + 1
    train.main([*TINY[:2], "--latent", "2", *TINY[5:], "--data-dir", mnist_dir, "--out", str(out),
                "--epochs", str(epochs), "--launcher", "local", "--jobs", "1", "--resume"])
    resumed = torch.load(path, weights_only=True)
    assert resumed["epoch"] == epochs
    assert resumed["history"]["val_mse"][:-1] == saved["history"]["val_mse"], "continued, not retrained"


def test_a_failed_run_fails_its_job_and_the_summary_names_it(mnist_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="1 of 1 runs did not finish; the same command with --resume continues them"):
        sweep(mnist_dir, tmp_path, "--latent", "2", "--epochs", "1", "--lr", "1e6", "--launcher", "local")
    said = capsys.readouterr().err
    assert "not finished: VAE (hidden 32, batch-size 128, lr 1000000.0, limit 512) latent 2 seed 0" in said
    (log,) = (tmp_path / "jobs").glob("*_log.err")
    assert re.search(r"^error: .*non-finite at epoch 1", log.read_text(), re.M)


def test_submitit_is_imported_for_launchers_only(mnist_dir, tmp_path):
    code = ("import sys, train; train.main(sys.argv[1:]); "
            "print('submitit' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, *TINY, "--latent", "2", "--epochs", "1",
                             "--data-dir", mnist_dir, "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_slurm_installed_but_not_configured_is_one_line_naming_the_ways_on(mnist_dir, tmp_path, monkeypatch):
    """sbatch without a slurm.conf, as Debian's slurm-wlm leaves it, printed its DNS lookup errors."""
    fake_slurm(tmp_path, monkeypatch)
    (tmp_path / "bin" / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host' >&2\n"
        "echo 'sbatch: error: fetch_config: DNS SRV lookup failed' >&2\n"
        "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    with pytest.raises(UserError, match=r"^sbatch found no SLURM cluster: SLURM is installed here but not configured "
                                        r".*scripts/local_slurm.sh .*--launcher local runs the jobs here$"):
        train.main([*TINY, "--latent", "2", "--epochs", "1", "--data-dir", mnist_dir, "--out", str(tmp_path / "out"),
                    "--launcher", "slurm"])
