"""The CUDA paths, tested as far as a machine without a GPU can: a checkpoint read for another
device, RNG states by device, the GPUs a local sweep uses, TF32 where training and only training
asks for it, bf16 asked of the GPU in use, the benchmark's refusals, clocks and profile, and
evaluate's cache across devices. GPU functions PyTorch has no answer for here are stood in for by
monkeypatch; tests/test_devices.py runs the pipeline itself on every device present."""
import os
import re
import signal
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import bench
import evaluate
import train
from vaestudy import evaluation, launch, speed, training
from vaestudy.checkpoints import load_checkpoint, load_run, restore_rng_state, rng_state
from vaestudy.cli import UserError
from vaestudy.device import check_precision, cuda_tf32, device_name, tf32_enabled

TINY = ["--limit", "512", "--batch-size", "128", "--hidden", "16", "--device", "cpu", "--latent", "2"]


def tiny_run(mnist_dir, out, *extra):
    train.main(["--data-dir", mnist_dir, "--out", str(out), "--model", "vae", *TINY, *extra])
    (path,) = out.rglob("*.pt")
    return path


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # meta weights hold no values
def test_a_checkpoint_read_for_another_device_keeps_its_rng_states_on_the_cpu(mnist_dir, tmp_path):
    """torch.set_rng_state takes CPU byte tensors only: a checkpoint read with map_location=device
    brought them to the GPU, and every --resume on CUDA ended in a TypeError. The meta device stands
    in for the GPU."""
    path = tiny_run(mnist_dir, tmp_path, "--epochs", "1")
    ckpt, model = load_checkpoint(str(path), torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"meta"}, "the model is on the device asked for"
    assert {t.device.type for t in ckpt["rng"].values()} == {"cpu"}
    restore_rng_state(ckpt["rng"], torch.Generator(), torch.device("cpu"))  # raises for a state off the CPU


def test_the_gpu_stream_is_saved_and_restored_by_device_not_position(monkeypatch):
    """A run saves the stream of the GPU it trains on and restores it onto the GPU it trains on
    next, whatever their numbers: started on cuda:1 of two GPUs, resumed as a job that sees one
    (set_rng_state_all with two states and one GPU raised IndexError)."""
    saved = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state.item(), device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    state = rng_state(torch.Generator(), torch.device("cuda:1"))
    restore_rng_state(state, torch.Generator(), torch.device("cuda:0"))
    restore_rng_state({**state, "cuda": [saved[0], saved[1]]}, torch.Generator(), torch.device("cuda:1"))  # older files
    assert restored == [(1, torch.device("cuda:0")), (1, torch.device("cuda:1"))]
    restore_rng_state({**state, "cuda": [saved[0], saved[1]]}, torch.Generator(), torch.device("cuda:3"))
    assert len(restored) == 2, "an older file without that GPU's stream restores none, and raises nothing"


def test_a_cpu_runs_random_state_leaves_cuda_alone(monkeypatch):
    """Saving a CPU run's random state asked CUDA for every GPU's where PyTorch saw one, starting
    CUDA for nothing."""
    def touched(*args, **kwargs):
        raise AssertionError("a CPU run asked CUDA for its random state")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, touched)
    generator = torch.Generator()
    state = rng_state(generator, torch.device("cpu"))
    restore_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, generator, torch.device("cpu"))
    assert set(state) == {"torch", "batch_order"}


def test_a_finished_run_is_skipped_before_its_state_is_restored(mnist_dir, tmp_path, monkeypatch, capsys):
    """The restore ran before the "already trained" check, so a failing restore failed finished runs too."""
    tiny_run(mnist_dir, tmp_path, "--epochs", "1")
    monkeypatch.setattr(training, "restore_rng_state", lambda *a: pytest.fail("restored a finished run's state"))
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "vae", *TINY, "--epochs", "1", "--resume"])
    assert "skipped" in capsys.readouterr().out


@pytest.fixture
def two_gpus(monkeypatch):
    """As if PyTorch saw two GPUs, the machine's GPUs 2 and 3."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")


def test_local_jobs_use_the_gpus_this_process_sees(two_gpus, monkeypatch):
    assert launch.local_gpus("auto") == launch.local_gpus("cuda") == ["2", "3"]
    assert launch.local_gpus("cuda:1") == ["3"]
    assert launch.local_gpus("cpu") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5a1b,GPU-77c0")  # UUIDs, as clusters often set them
    assert launch.local_gpus("cuda:0") == ["GPU-5a1b"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.local_gpus("auto") == ["0", "1"]
    with pytest.raises(UserError, match=r"--device cuda:2: this process sees 2 CUDA device\(s\)"):
        launch.local_gpus("cuda:2")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="stands in two GPUs for a machine that has none")
@pytest.mark.parametrize("device, jobs, gpus", [("auto", 3, ["2", "3", "2"]), ("cuda:1", 2, ["3", "3"])])
def test_each_local_job_is_given_its_gpu_and_cuda_0(two_gpus, mnist_dir, tmp_path, capsys, device, jobs, gpus):
    """Through submitit for real: each job's train.py runs with CUDA_VISIBLE_DEVICES set to its GPU
    and --device cuda, the one GPU it sees (cuda:1 was passed on, and every job failed). On this
    machine the GPUs are not there, so each run stops at the device check, whose line names both."""
    runs = [str(latent) for latent in range(2, 2 + jobs)]
    with pytest.raises(UserError, match=f"{jobs} of {jobs} runs did not finish"):
        train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "vae", *TINY, "--latent", *runs,
                    "--epochs", "1", "--launcher", "local", "--jobs", str(jobs), "--device", device])
    assert ("3 jobs share 2 GPU(s): up to 2 runs at a time on each" in capsys.readouterr().out) == (jobs == 3)
    logs = sorted((tmp_path / "jobs").glob("*_log.err"), key=lambda p: int(p.name.split("_")[0]))
    said = [re.search(r"^error: --device (\S+) asked for, .*\(CUDA_VISIBLE_DEVICES=(\S*)\)", log.read_text(), re.M)
            for log in logs]
    assert [(m.group(1), m.group(2)) for m in said] == [("cuda", gpu) for gpu in gpus]


def test_a_stopped_job_lets_its_run_save_before_it_exits(tmp_path):
    """submitit requeues a job on SIGUSR2 by raising SystemExit in it; subprocess.run then killed
    train.py with SIGKILL, losing its unsaved epochs. The job now asks it to stop and waits."""
    done = tmp_path / "saved"
    child = (f"import signal, time, pathlib\n"
             f"def stop(*a):\n    time.sleep(0.5); pathlib.Path({str(done)!r}).write_text('saved')\n"
             f"    raise SystemExit(1)\n"
             f"signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n")

    def requeued(signum, frame):  # as submitit's checkpoint_and_try_requeue ends
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGALRM, requeued)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        start = time.monotonic()
        with pytest.raises(SystemExit):
            launch.run_to_the_end([sys.executable, "-c", child], dict(os.environ))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert done.read_text() == "saved" and time.monotonic() - start < 30


@pytest.mark.slow
def test_tf32_is_trainings_alone_and_the_callers_setting_comes_back(mnist_dir, tmp_path, monkeypatch):
    """train.py and bench.py's timed steps run float32 matmuls as TF32 (on CUDA; the CPU ignores
    it), through one function, and leave the caller's setting as it was; evaluate measures in full
    float32 even when its caller had TF32 on (bench.py timed another float32 than train.py's, and
    TF32 stayed on in the process after training)."""
    seen = {"train": set(), "bench": set(), "evaluate": set()}
    for module, name in ((training, "train"), (bench, "bench")):
        def watched(*args, _make=module.make_step, _name=name, **kwargs):
            step = _make(*args, **kwargs)

            def stepped(x):
                seen[_name].add(tf32_enabled())
                return step(x)
            return stepped
        monkeypatch.setattr(module, "make_step", watched)
    measure_run = evaluation.measure_run
    monkeypatch.setattr(evaluation, "measure_run", lambda *a,
                        **k: seen["evaluate"].add(tf32_enabled()) or measure_run(*a, **k))
    before = tf32_enabled()
    tiny_run(mnist_dir, tmp_path, "--epochs", "1")
    assert tf32_enabled() == before
    bench.main(["--hidden", "16", "--latent", "2", "--repeats", "1", "--skip-dataloader", "--device", "cpu",
                "--precision", "fp32", "--data-dir", mnist_dir, "--json", str(tmp_path / "bench.json")])
    assert tf32_enabled() == before
    with cuda_tf32(True):
        evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
        assert tf32_enabled()
    assert seen == {"train": {True}, "bench": {True}, "evaluate": {False}}


def test_bf16_is_asked_of_the_gpu_the_run_uses(monkeypatch):
    """torch.cuda.is_bf16_supported answers for the current GPU; a run on cuda:1, a V100 beside an A100 at
    cuda:0, was let through."""
    capability = {0: (8, 0), 1: (7, 0)}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # cuda:0's answer
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: ["A100", "V100"][torch.device(device).index])
    check_precision("bf16", torch.device("cuda:0"))
    with pytest.raises(UserError, match=r"^--precision bf16: V100 has no native bfloat16"):
        check_precision("bf16", torch.device("cuda:1"))


def test_the_bench_refuses_before_it_times_anything(mnist_dir, tmp_path, monkeypatch):
    """On a GPU without bf16 the float32 timing ran to its end first, then the refusal, and nothing was written."""
    timed = []
    monkeypatch.setattr(bench, "check_precision", lambda precision, device: (_ for _ in ()).throw(
        UserError("no bf16 here")) if precision == "bf16" else None)
    monkeypatch.setattr(bench, "median_seconds", lambda *a, **k: timed.append(a) or (1.0, [1.0]))
    with pytest.raises(UserError, match="no bf16 here"):
        bench.main(["--hidden", "16", "--latent", "2", "--repeats", "1", "--skip-dataloader", "--device", "cpu",
                    "--data-dir", mnist_dir, "--json", str(tmp_path / "bench.json")])
    assert timed == [] and not (tmp_path / "bench.json").exists()


@pytest.mark.slow
def test_the_nll_clock_stops_after_the_device_is_done(mnist_dir, tmp_path, monkeypatch):
    """A GPU returns from log_px before its kernels have run: the NLL was timed without a sync."""
    path = tiny_run(mnist_dir, tmp_path, "--epochs", "1", "--recon", "bce", "--binarize")
    events = []
    monkeypatch.setattr(speed, "sync", lambda device: events.append("sync"))
    log_px = bench.log_px
    monkeypatch.setattr(bench, "log_px", lambda *a, **k: events.append("log_px") or log_px(*a, **k))
    bench.main(["--nll-checkpoint", str(path), "--nll-images", "5", "--nll-samples", "10", "--device", "cpu",
                "--data-dir", mnist_dir, "--json", str(tmp_path / "nll.json")])
    timed = [i for i, e in enumerate(events) if e == "log_px" and events[i - 1:i + 2] == ["sync", "log_px", "sync"]]
    assert events[:3] == ["sync", "log_px", "sync"] and len(timed) >= 2, "each precision's timed estimate"


def test_the_profile_counts_each_kernel_once():
    """On CUDA, key_averages() lists each op with the device time of the kernels it launched, and
    each kernel again as an event of its own; summing both halved the matmul share."""
    def event(key, on, cpu_us, device_us):
        return SimpleNamespace(key=key, device_type=on, self_cpu_time_total=cpu_us, self_device_time_total=device_us)

    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [event("aten::addmm", cpu, 5, 60), event("sm90_xmma_gemm_f32", gpu, 0, 60),
              event("aten::sigmoid", cpu, 5, 40), event("vectorized_elementwise_kernel", gpu, 0, 40)]
    share, top = speed.time_shares(events, on_gpu=True)
    assert share == pytest.approx(0.6) and top == {"aten::addmm": pytest.approx(0.6),
                                                   "aten::sigmoid": pytest.approx(0.4)}
    share, top = speed.time_shares(events, on_gpu=False)
    assert share == pytest.approx(0.5), "on the CPU the ops' own CPU time"


def test_a_measurement_made_on_one_device_is_not_reused_on_another(mnist_dir, tmp_path, monkeypatch):
    """The cache key had no device: a GPU evaluation, whose random streams differ, reused CPU figures."""
    run = load_run(str(tiny_run(mnist_dir, tmp_path, "--epochs", "1")))
    args = evaluate.get_args(["--out", str(tmp_path)])
    on_cpu = evaluation.measurement_key(run, args, torch.device("cpu"), None)
    assert on_cpu["device"] == device_name(torch.device("cpu")) and on_cpu["torch"] == str(torch.__version__)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    on_gpu = evaluation.measurement_key(run, args, torch.device("cuda"), None)
    assert on_gpu == {**on_cpu, "device": "NVIDIA H200"}
