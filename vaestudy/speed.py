"""Measuring speed: wall time with the device's work included, a matmul's sustained rate timed back to
back, the rooflines of a training epoch and of the NLL estimate (their matmuls alone at that rate),
where a profile's time goes, and the tables of bench.py's figures. bench.py tells the story; the
measuring is here, beside the code it measures (step.py's epoch, metrics.log_px)."""
import statistics
import time

import torch

from models import PRECISIONS
from vaestudy.device import sync
from vaestudy.metrics import chunk_rows

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def seconds(fn, device):
    """Wall time of fn(), the device's work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_seconds(fn, repeats, device):
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = [seconds(fn, device) for _ in range(repeats)]
    return statistics.median(times), times


def back_to_back_seconds(fn, device, calls, blocks):
    """Seconds of one fn() when `calls` of them run back to back: the median over `blocks` such runs,
    after a warm-up. On a GPU they are timed by CUDA events on its stream, so that a short kernel
    is measured as the GPU runs it in a step, queued behind others, not as a launch and a sync; the
    GPU first spins for about 10 us per call while the host queues them, so that no gap between
    two launches is counted either."""
    fn()
    times = []
    for _ in range(blocks):
        if device.type == "cuda":
            start, end, stream = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                                  torch.cuda.current_stream(device))
            with torch.cuda.device(device):
                torch.cuda._sleep(20_000 * calls)  # clock cycles, ~2 GHz
            start.record(stream)
            for _ in range(calls):
                fn()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000 / calls)
        else:
            times.append(seconds(lambda: [fn() for _ in range(calls)], device) / calls)
    return statistics.median(times)


def bf16_hardware(device):
    """What runs bf16 matmuls here: the GPU's name, or the CPU's bf16 flags (amx_bf16: Intel's matrix
    engine; avx512_bf16: bf16 dot products in AVX-512 vectors)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    found = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]
    return " ".join(found) if found else "none: no bf16 instructions, so bf16 is emulated and may be slower"


def linear_shapes(model):
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def matmul_flops(shapes, batch):
    """FLOPs of the matmuls of one step: forward, weight gradient, and input gradient for every layer
    but the first (nothing needs the gradient of the images)."""
    return sum(2 * batch * n_in * n_out * (2 if i == 0 else 3) for i, (n_in, n_out) in enumerate(shapes))


def roofline(model, n_images, batch, repeats, device, precision="fp32"):
    """Seconds of pure matmul work in one training epoch: each distinct matmul of a step (same shape,
    same memory layout as autograd's, in `precision`) timed back to back, summed over the epoch."""
    shapes, dtype = linear_shapes(model), DTYPES[precision]
    sizes = [batch] * (n_images // batch) + ([n_images % batch] if n_images % batch else [])
    total_flops = sum(matmul_flops(shapes, b) for b in sizes)
    # on a GPU a short GEMM is timed over 100 back-to-back calls; on the CPU one call is long enough
    calls, blocks = (100, 5) if device.type == "cuda" else (1, max(repeats, 20))
    step_seconds = {}
    for b in set(sizes):
        total = 0.0
        for i, (n_in, n_out) in enumerate(shapes):
            x, w, gy = (torch.randn(b, n_in, device=device, dtype=dtype), torch.randn(n_out, n_in, device=device,
                                                                                      dtype=dtype),
                        torch.randn(b, n_out, device=device, dtype=dtype))
            ops = [(x, w.t()), (gy.t(), x)] + ([(gy, w)] if i else [])  # y = x W^T; dW = gy^T x; dx = gy W
            for a, c in ops:
                out = torch.empty(a.shape[0], c.shape[1], device=device, dtype=dtype)
                total += back_to_back_seconds(lambda: torch.mm(a, c, out=out), device, calls, blocks)
        step_seconds[b] = total
    return sum(step_seconds[b] for b in sizes), total_flops


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear")


def time_shares(events, on_gpu):
    """The matmuls' share of a profile's time, and its eight largest ops with theirs. Only the
    operators count (events the CPU ran): on a GPU each also has its kernels as events of their own,
    with the same device time, which would count it twice. An op's self device time is that of the
    kernels it launched itself, so the matmul ops' own hold the GEMM kernels."""
    ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    own = {e.key: e.self_device_time_total if on_gpu else e.self_cpu_time_total for e in ops}
    total = sum(own.values())
    share = {k: v / total for k, v in own.items()}
    top = sorted(share.items(), key=lambda kv: -kv[1])[:8]
    return sum(v for k, v in share.items() if k in MATMUL_OPS), dict(top)


def nll_shapes(model, n_images, k, batch_size, draws):
    """Every matmul of metrics.log_px over n_images at k as ((rows, n_in, n_out), calls): the encoder
    once per batch of images, the decoder once per chunk of draws of each batch."""
    def layers(seq):
        return [(m.in_features, m.out_features) for m in seq if isinstance(m, torch.nn.Linear)]
    calls = {}
    for images in [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else []):
        for n_in, n_out in layers(model.encoder):
            calls[images, n_in, n_out] = calls.get((images, n_in, n_out), 0) + 1
        for n in [draws] * (k // draws) + ([k % draws] if k % draws else []):
            for n_in, n_out in layers(model.decoder):
                calls[n * images, n_in, n_out] = calls.get((n * images, n_in, n_out), 0) + 1
    return calls


def nll_roofline(model, n_images, k, precision, device, batch_size=100):
    """Seconds of the estimate's matmuls alone, and their FLOPs: each distinct shape timed over
    back-to-back calls for about a second (this CPU's rate drifts by a fifth over seconds of load),
    in `precision`, times the calls the estimate makes of it."""
    draws = max(1, chunk_rows(max(model.config.hidden + (model.config.input_dim,)), device)
                // min(batch_size, n_images))
    dtype, seconds_total, flops = DTYPES[precision], 0.0, 0
    for (rows, n_in, n_out), calls in nll_shapes(model, n_images, k, batch_size, draws).items():
        a, w = torch.randn(rows, n_in, device=device, dtype=dtype), torch.randn(n_out, n_in, device=device, dtype=dtype)
        bias, out = torch.randn(n_out, device=device, dtype=dtype), torch.empty(rows, n_out, device=device, dtype=dtype)
        once = seconds(lambda: torch.addmm(bias, a, w.t(), out=out), device)
        repeat = max(1, min(calls, int(1.0 / max(once, 1e-6))))
        seconds_total += calls * back_to_back_seconds(lambda: torch.addmm(bias, a, w.t(), out=out), device, repeat, 1)
        flops += calls * 2 * rows * n_in * n_out
    return seconds_total, flops, draws


def elementwise_ns(device, n=2**21):
    """Nanoseconds per element of the passes the Bernoulli log-likelihood could be made of, on a
    float32 tensor of n elements (8 MiB) back to back: why models.bernoulli_log_likelihood uses log
    and exp rather than log1p or softplus."""
    x, out = torch.randn(n, device=device) * 4, torch.empty(n, device=device)
    ops = {"exp": lambda: torch.exp(x, out=out), "log": lambda: torch.log(x.abs(), out=out),
           "log1p": lambda: torch.log1p(x.abs(), out=out), "softplus": lambda: torch.nn.functional.softplus(x)}
    return {name: back_to_back_seconds(op, device, 10, 3) / n * 1e9 for name, op in ops.items()}


def speed_table(results):
    """The docs' table of bench.py's figures, from the JSON files it wrote."""
    lines = ["| model | precision | epoch: training + validation | its training's matmul roofline "
             "| fraction of roofline | bf16 against fp32 | DataLoader loop, fp32 training |", "|" + "---|" * 7]
    for r in results:
        widths = "-".join(map(str, [r["model"]["input_dim"], *r["model"]["hidden"], r["model"]["latent"]]))
        for precision in PRECISIONS:
            t = r[precision]
            faster, loader = (f"{r['bf16_speedup']:.2f}x faster", "") if precision == "bf16" else (
                "", f"{r['dataloader_epoch_seconds']:.2f} s")
            lines.append(f"| {widths} | {precision} | {t['epoch_seconds']:.2f} s = {t['train_seconds']:.2f} + "
                         f"{t['val_seconds']:.2f} | {t['roofline_seconds']:.2f} s ({t['matmul_gflops']:.0f} GFLOP/s) "
                         f"| {t['fraction_of_roofline']:.0%} | {faster} | {loader} |")
    return "\n".join(lines) + "\n"


def nll_table(result):
    """The docs' table of the NLL estimate's speed, from bench.py --nll-checkpoint's JSON."""
    lines = ["| precision | seconds per 1,000 test images | its matmul roofline | times the roofline "
             "| matmuls in the profile | largest other ops |", "|" + "---|" * 6]
    for precision in PRECISIONS:
        r = result[precision]
        others = ", ".join(f"`{op.removeprefix('aten::')}` {share:.0%}" for op, share in r["profile_top_ops"].items()
                           if op not in MATMUL_OPS)
        roof = f"{r['roofline_seconds_per_1000_images']:.1f} s ({r['matmul_gflops']:.0f} GFLOP/s)"
        lines.append(f"| {precision} | {r['seconds_per_1000_images']:.1f} s | {roof} | {r['times_roofline']:.2f}x "
                     f"| {r['profile_matmul_share']:.0%} | {others} |")
    return "\n".join(lines) + "\n"

