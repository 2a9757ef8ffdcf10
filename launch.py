"""Sweeps past one machine: every run of a sweep as a job, through submitit (used by train.py).

    python train.py --seed 0 1 2 --launcher slurm --partition gpu   # 36 runs, one SLURM job array
    python train.py --seed 0 1 2 --launcher local --jobs 4          # 4 runs at a time on this machine

A job is train.py itself, with the sweep's flags narrowed to its run (--model, --latent, --seed)
and --resume: a finished run is skipped, a run stopped by the scheduler (time limit, preemption) is
requeued by submitit and continues from its last saved epoch, and the run lock keeps two jobs off
one run. Every job writes into the same --out; python evaluate.py collects the results.
"""
import os
import shutil
import sys

import submitit

import train
from common import UserError, load_checkpoint
from data import ensure_mnist
from models import MODEL_NAMES
from runs import checkpoint_path, group_label, variant, variant_label

ROOT = os.path.dirname(os.path.abspath(__file__))


class TrainJob(submitit.helpers.Checkpointable):
    """train.py for each of a job's runs in turn. On a time limit or preemption submitit calls
    checkpoint(), inherited: the same job with the same commands is queued again, and --resume
    makes it continue from the last saved epoch."""

    def __call__(self, commands):
        failed = []
        for argv in commands:
            try:
                train.main(argv)
            except UserError as e:  # the run's one-line error, in the job's log
                print(f"error: {e}", file=sys.stderr, flush=True)
                failed.append(str(e))
        if failed:  # fails the job, so the scheduler reports it too
            raise RuntimeError(f"{len(failed)} of {len(commands)} runs failed: " + "; ".join(failed))


def describe(config, train_config):
    name = group_label(MODEL_NAMES[config.model], variant_label(variant(config, train_config)))
    return f"{name} latent {config.latent} seed {train_config.seed}"


def job_commands(args, argv, runs, threads=None):
    """One train.py command line per run: the sweep's own flags, the last word given to the run."""
    base = [*argv, "--launcher", "none", "--resume", "--out", os.path.abspath(args.out),
            "--data-dir", os.path.abspath(args.data_dir)] + (["--threads", str(threads)] if threads else [])
    return [base + ["--model", c.model, "--latent", str(c.latent), "--seed", str(t.seed)] for c, t in runs]


def finished(path, epochs):
    try:
        return load_checkpoint(path)[0]["epoch"] >= epochs
    except UserError:
        return False


def launch(args, argv):
    runs = train.planned_runs(args)
    ensure_mnist(args.data_dir)  # once, here: compute nodes often have no internet
    # jobs import this repository's modules, wherever they start
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    folder = os.path.join(args.out, "jobs")  # submitit names each log by its job id
    if args.launcher == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise UserError(f"--launcher slurm needs SLURM, and this machine has no {' or '.join(missing)} on its "
                            "PATH; --launcher local runs the jobs here")
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(job_name="mnist-vae", partition=args.partition, time=args.time_min,
                                   gpus_per_node=args.gpus_per_run or None, cpus_per_task=args.cpus_per_run,
                                   array_parallelism=args.max_running, signal_delay_s=120)
        commands = job_commands(args, argv, runs, threads=args.cpus_per_run)  # PyTorch would count the node's cores
        jobs = executor.map_array(TrainJob(), [[command] for command in commands])
        groups = [[run] for run in runs]
    else:
        jobs, groups = local_jobs(args, argv, runs, folder)
    for job, group in zip(jobs, groups):
        print(f"job {job.job_id}: {', '.join(describe(*run) for run in group)}; log {job.paths.stderr}")
    if args.launcher == "slurm":
        print(f"submitted {len(jobs)} runs as SLURM array {jobs[0].job_id.split('_')[0]}; when they are done, "
              "python evaluate.py collects the results (squeue shows them meanwhile)")
        return
    print(f"{len(jobs)} local jobs running; waiting for them (their logs are named above)", flush=True)
    for job in jobs:
        job.exception()  # waits; the outcome is read from the checkpoints below
    failed = [(describe(*run), job) for job, group in zip(jobs, groups) for run in group
              if not finished(checkpoint_path(args.out, *run), args.epochs)]
    for name, job in failed:
        print(f"not finished: {name} (see {job.paths.stderr})", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} runs did not finish; the same command resumes them")
    print(f"all {len(runs)} runs finished; python evaluate.py collects the results")


def local_jobs(args, argv, runs, folder):
    """args.jobs processes, each training its share of the runs in turn: with GPUs, one GPU each;
    on the CPU, each with an equal share of the cores."""
    n = min(args.jobs, len(runs))
    import torch
    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    threads = None if gpus else (args.threads or max(1, len(os.sched_getaffinity(0)) // n))
    executor = submitit.LocalExecutor(folder=folder)
    jobs, groups = [], []
    for i in range(n):
        group = runs[i::n]
        executor.update_parameters(timeout_min=args.time_min * len(group), gpus_per_node=1 if gpus else 0,
                                   visible_gpus=(i % gpus,) if gpus else ())
        jobs.append(executor.submit(TrainJob(), job_commands(args, argv, group, threads)))
        groups.append(group)
    return jobs, groups
