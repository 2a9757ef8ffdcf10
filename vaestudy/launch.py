"""Sweeps past one machine: every run of a sweep as a job, through submitit (used by train.py).

    python train.py --seed 0 1 2 --launcher slurm --partition gpu   # 36 runs, one SLURM job array
    python train.py --seed 0 1 2 --launcher slurm --wait            # ... and wait for them, then report
    python train.py --seed 0 1 2 --launcher local --jobs 4          # 4 runs at a time on this machine

A job is one `python train.py` process with the sweep's flags, narrowed to its share of the runs
(--only-runs, their places in the sweep's plan), and --resume: it trains them one after another,
paying Python's start, PyTorch's import, a CUDA context and the data once. A finished run is
skipped, a run stopped by the scheduler (time limit, preemption) is requeued by submitit and
continues from its last saved epoch, and the run lock keeps two jobs off one run. Every job writes
into the same --out; python evaluate.py collects the results. Local jobs are one per visible GPU (or
--jobs); a SLURM array has a task per --runs-per-job runs.
"""
import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import submitit
from submitit.core.utils import FailedJobError

from vaestudy.checkpoints import check_plan, load_run
from vaestudy.cli import UserError
from vaestudy.data import ensure_dataset
from vaestudy.datasets import dataset_folder
from vaestudy.device import pick_device
from vaestudy.runs import checkpoint_path, planned_runs, run_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py and models.py
TRAIN_PY = os.path.join(ROOT, "train.py")
POLL_S = 3  # how often --wait asks squeue
# squeue's states of a job that will not run again (a requeued job is PENDING, so still running)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# reasons for which SLURM keeps a job pending for ever
NEVER_STARTS = {"PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints", "InvalidAccount", "InvalidQOS"}


class TrainJob(submitit.helpers.Checkpointable):
    """Runs its train.py command lines (one: its share of the runs) one after another, on the GPU it is
    given (gpu: an entry of CUDA_VISIBLE_DEVICES, or None to leave the environment as it is). On a
    time limit or preemption submitit calls checkpoint(), inherited: the same job with the same
    commands is queued again, and --resume makes each run continue from its last saved epoch."""

    def __call__(self, commands, gpu=None):
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        failed = 0
        for argv in commands:  # a run's one-line error goes to the job's log, from train.py itself
            failed += run_to_the_end([sys.executable, TRAIN_PY, *argv], env) != 0
        if failed:  # fails the job, so the scheduler reports it too
            raise RuntimeError(f"{failed} of {len(commands)} runs failed; their errors are above")


def run_to_the_end(argv, env):
    """A train.py process's exit code. When this job is told to stop (submitit's requeue on SIGUSR2
    exits by an exception), train.py is asked too and given the time to save its finished epochs,
    instead of the kill that subprocess.run would send it."""
    proc = subprocess.Popen(argv, env=env)
    try:
        return proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)  # ignored where the scheduler's own signal reached it first
        proc.wait()
        raise


def job_command(args, argv, places, threads=None, device=None):
    """The train.py command line of a job that trains the runs at `places` in the sweep's plan: the
    sweep's own flags, the last word given to the job (and the device, where the job sees other GPUs
    than the sweep did). A job given one GPU sees it as cuda:0, so a sweep's --device cuda:N is
    cuda there."""
    device = device or ("cuda" if args.device.startswith("cuda:") else None)
    command = [*argv, "--launcher", "none", "--resume", "--out", os.path.abspath(args.out),
               "--data-dir", os.path.abspath(args.data_dir)] + (["--threads", str(threads)] if threads else [])
    return command + (["--device", device] if device else []) + ["--only-runs", *map(str, places)]


def planned_places(args):
    """The sweep's runs with their places in its plan, [(place, (config, train)), ...]: all of them, or
    those --only-runs names."""
    everything = planned_runs(argparse.Namespace(**{**vars(args), "only_runs": None}))
    return [(i, everything[i]) for i in (args.only_runs if args.only_runs is not None else range(len(everything)))]


def finished(path, epochs):
    try:
        return load_run(path).ckpt["epoch"] >= epochs
    except UserError:
        return False


def launch(args, argv):
    places = planned_places(args)
    runs = [run for _, run in places]
    if args.launcher == "slurm":  # before anything is fetched or written
        missing = [tool for tool in ("sbatch", "srun", "squeue") if shutil.which(tool) is None]
        if missing:
            raise UserError(f"--launcher slurm needs SLURM, and this machine has no {' or '.join(missing)} on its "
                            "PATH; --launcher local runs the jobs here")
    said = check_plan([(c, t, checkpoint_path(args.out, c, t)) for c, t in runs], args.epochs, args.resume)
    if said:  # every job resumes (a requeued one must); a run the user has is kept unless --resume says so
        print(said)
    ensure_dataset(args.data_dir, args.dataset)  # once, here: compute nodes often have no internet
    # a job unpickles TrainJob, so it imports this module, wherever it starts
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    folder = os.path.join(dataset_folder(args.out, args.dataset), "jobs")  # submitit names each log by its job id
    if args.launcher == "slurm":
        jobs, groups = slurm_jobs(args, argv, places, folder)
    else:
        jobs, groups = local_jobs(args, argv, places, folder)
    for job, group in zip(jobs, groups):
        print(f"job {job.job_id}: {', '.join(run_name(*run, seed=True) for run in group)}; log {job.paths.stderr}")
    if args.launcher == "slurm":
        array = jobs[0].job_id.split("_")[0]
        print(f"submitted {len(runs)} runs as SLURM array {array} of {len(jobs)} job(s)", flush=True)
        if not args.wait:
            print("when they are done, python evaluate.py collects the results (squeue shows them meanwhile; "
                  "--wait waits for them)")
            return
        print("waiting for them (squeue shows them too)", flush=True)
        wait_for_slurm(array)
    else:
        print(f"{len(jobs)} local jobs running; waiting for them (their logs are named above)", flush=True)
        for job in jobs:
            job.exception()  # waits; the outcome is read from the checkpoints below
    failed = [(run_name(*run, seed=True), job) for job, group in zip(jobs, groups) for run in group
              if not finished(checkpoint_path(args.out, *run), args.epochs)]
    for name, job in failed:
        print(f"not finished: {name} (see {job.paths.stderr})", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} runs did not finish; the same command with --resume continues "
                        "them")
    print(f"all {len(runs)} runs finished; python evaluate.py collects the results")


def slurm_jobs(args, argv, places, folder):
    """One SLURM job array, a task per --runs-per-job runs (its time limit that many runs' --time-min);
    sbatch's refusal becomes a one-line error, and the files written for the refused submission are
    removed."""
    groups = [places[i:i + args.runs_per_job] for i in range(0, len(places), args.runs_per_job)]
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(job_name="mnist-vae", partition=args.partition,
                               time=args.time_min * max(map(len, groups)), gpus_per_node=args.gpus_per_run or None,
                               cpus_per_task=args.cpus_per_run, array_parallelism=args.max_running,
                               signal_delay_s=120)
    # --threads: PyTorch would count the node's cores, not the job's
    commands = [job_command(args, argv, [i for i, _ in group], threads=args.cpus_per_run) for group in groups]
    created = [p for p in (args.out, folder) if not os.path.isdir(p)]
    before = set() if created else set(os.listdir(folder))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal; ours is one line
            jobs = executor.map_array(TrainJob(), [[command] for command in commands])
    except FailedJobError as e:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
        else:
            for name in set(os.listdir(folder)) - before:
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        raise UserError(sbatch_refusal(str(e), args))
    return jobs, [[run for _, run in group] for group in groups]


def sbatch_refusal(message, args):
    """sbatch's own words, and what to change where the cause is known."""
    if "configuration source" in message or "DNS SRV lookup failed" in message:  # installed, never configured
        return ("sbatch found no SLURM cluster: SLURM is installed here but not configured (no slurm.conf, and "
                "SLURM_CONF unset); on a cluster's login node set SLURM_CONF, or start a one-node cluster with "
                "scripts/local_slurm.sh (docs/scaling-out.md); --launcher local runs the jobs here")
    said = [line.split("error:", 1)[1].strip() for line in message.splitlines() if "error:" in line]
    text = "sbatch refused the sweep: " + "; ".join(dict.fromkeys(said or [message.strip() or "no reason given"]))
    if "gres" in text.lower() and args.gpus_per_run:
        text += f" (it asked for {args.gpus_per_run} GPU per run; a cluster without GPUs needs --gpus-per-run 0)"
    elif "invalid partition" in text.lower():
        text += f" (no partition {args.partition!r} here; sinfo lists the partitions)"
    elif "more processors requested" in text.lower():
        text += f" (--cpus-per-run {args.cpus_per_run} is more than a node has; sinfo -o '%P %c' shows CPUs per node)"
    elif "time limit" in text.lower():
        text += f" (--time-min {args.time_min} is above what the partition allows; sinfo -o '%P %l' shows the limits)"
    return text


def slurm_states(array):
    """{task id: (state, reason)} of the array's tasks that squeue still knows."""
    result = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%i %T %r"],
                            capture_output=True, text=True)
    if result.returncode != 0:  # the array is gone from the controller's memory: every task ended
        return {}
    return {task: (state, reason) for task, state, reason in (line.split(None,
                                                                         2) for line in result.stdout.splitlines())}


def wait_for_slurm(array):
    """Until no task of the array can run again, asking squeue (there may be no accounting for sacct)."""
    try:
        while True:
            states = slurm_states(array)
            stuck = {task: reason for task, (state, reason) in states.items()
                     if state == "PENDING" and reason in NEVER_STARTS}
            if stuck:
                task, reason = next(iter(stuck.items()))
                raise UserError(f"SLURM will never start job {task} ({reason}); scancel {array} and submit again "
                                "with settings the partition allows (sinfo -o '%P %l %D' lists its limits)")
            if all(state in ENDED for state, _ in states.values()):
                return
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        raise UserError(f"stopped waiting; the jobs go on (squeue -j {array} shows them)")


def local_gpus(device):
    """The GPUs local jobs may use, as entries of CUDA_VISIBLE_DEVICES: every GPU this process sees
    for --device auto or cuda, the one asked for by cuda:N, none for cpu. An entry is what this
    process's own CUDA_VISIBLE_DEVICES names (a number or a UUID), so that a sweep started with
    CUDA_VISIBLE_DEVICES=2,3 runs on GPUs 2 and 3, not 0 and 1."""
    import torch
    index = None
    if device != "auto":
        chosen = pick_device(device)  # its one-line error for a device this process lacks
        if chosen.type == "cpu":
            return []
        index = chosen.index
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
    return entries if index is None else [entries[index]]


def local_jobs(args, argv, places, folder):
    """Processes that each train their share of the runs one after another: by default one per visible
    GPU, job i on GPU i (a second process on a GPU would only time-slice it, and fails outright on a GPU
    in EXCLUSIVE_PROCESS mode); with --jobs more than GPUs, job i on GPU i mod their number; on the CPU,
    --jobs (2) processes, each with an equal share of the cores."""
    gpus = local_gpus(args.device)
    n = min(args.jobs or len(gpus) or 2, len(places))
    threads = None if gpus else (args.threads or max(1, len(os.sched_getaffinity(0)) // n))
    if gpus and n > len(gpus):
        print(f"{n} jobs share {len(gpus)} GPU(s): up to {-(-n // len(gpus))} runs at a time on each", flush=True)
    executor = submitit.LocalExecutor(folder=folder)
    jobs, groups = [], []
    for i in range(n):
        group = places[i::n]
        # CUDA_VISIBLE_DEVICES is set by TrainJob, not by submitit's visible_gpus, which takes numbers
        # alone and reads them as positions among all the machine's GPUs
        executor.update_parameters(timeout_min=args.time_min * len(group), gpus_per_node=0)
        # its one GPU, as cuda (a job that cannot see it fails, rather than trains on the CPU)
        command = job_command(args, argv, [place for place, _ in group], threads, "cuda" if gpus else None)
        jobs.append(executor.submit(TrainJob(), [command], gpus[i % len(gpus)] if gpus else None))
        groups.append([run for _, run in group])
    return jobs, groups
