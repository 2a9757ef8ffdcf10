"""How fast one training epoch runs, against the study's DataLoader loop and the matmul roofline.

    python bench.py                      # the study's VAE, 784-784-784-20, batch 1024
    python bench.py --hidden 512 256     # a narrower model, where the loader's share is larger

Prints seconds per epoch (median of --repeats after a warm-up epoch) for
  - this repository's loop (train.py's train_epoch: the split as one device tensor, slices of a
    random permutation),
  - a reference loop as in the study (torchvision MNIST with ToTensor, DataLoader, shuffle),
  - the roofline: the epoch's matrix-multiply FLOPs (forward, weight gradients, input gradients)
    divided by the throughput this machine sustains on exactly those matmul shapes (each timed on
    its own, median of at least 20 calls),
and the peak memory, then writes all of it to --json. A benchmark, not a test: CI never runs it.
"""
import json
import os
import platform
import resource
import statistics
import time

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import MNIST

from common import ArgumentParser, atomic_write, flush_subnormals, pick_device, run_cli
from data import ensure_mnist, load_splits, split_indices
from models import ModelConfig, build_model
from runs import TrainConfig
from step import make_optimizer, make_step, train_epoch

flush_subnormals()  # as train.py does


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats, device):
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def linear_shapes(model):
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def matmul_flops(shapes, batch):
    """FLOPs of the matmuls of one step: forward, weight gradient, and input gradient for every layer
    but the first (nothing needs the gradient of the images)."""
    return sum(2 * batch * n_in * n_out * (2 if i == 0 else 3) for i, (n_in, n_out) in enumerate(shapes))


def roofline(model, n_images, batch, repeats, device):
    """Seconds of pure matmul work in one epoch: each distinct matmul of a training step (same shape,
    same memory layout as autograd's) timed on its own, its median time summed over the epoch."""
    shapes = linear_shapes(model)
    sizes = [batch] * (n_images // batch) + ([n_images % batch] if n_images % batch else [])
    total_flops = sum(matmul_flops(shapes, b) for b in sizes)
    step_seconds = {}
    for b in set(sizes):
        seconds = 0.0
        for i, (n_in, n_out) in enumerate(shapes):
            x, w, gy = (torch.randn(b, n_in, device=device), torch.randn(n_out, n_in, device=device),
                        torch.randn(b, n_out, device=device))
            ops = [(x, w.t()), (gy.t(), x)] + ([(gy, w)] if i else [])  # y = x W^T; dW = gy^T x; dx = gy W
            for a, c in ops:
                out = torch.empty(a.shape[0], c.shape[1], device=device)
                seconds += median_seconds(lambda: torch.mm(a, c, out=out), max(repeats, 20), device)[0]
        step_seconds[b] = seconds
    return sum(step_seconds[b] for b in sizes), total_flops


def dataloader_epoch_fn(data_dir, split_seed, step, batch, device, generator_seed):
    """The study's input pipeline: PIL images through ToTensor, batched and shuffled by DataLoader."""
    dataset = MNIST(data_dir, train=True, transform=transforms.ToTensor())
    train_idx, _ = split_indices(len(dataset), split_seed)
    loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(generator_seed))

    def epoch():
        for images, _ in loader:
            step(images.to(device).reshape(len(images), -1))

    return epoch


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--model", default="vae", choices=["ae", "vae"], help="model to time (default: vae)")
    p.add_argument("--latent", type=int, default=20, help="latent size (default: 20)")
    p.add_argument("--hidden", type=int, nargs="+", default=[784, 784], help="encoder widths (default: 784 784)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per step (default: 1024)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per measurement, after one warm-up (default: 3)")
    p.add_argument("--skip-dataloader", action="store_true", help="do not time the DataLoader loop (default: time it)")
    p.add_argument("--compile", action="store_true", help="time the step under torch.compile (default: off)")
    p.add_argument("--data-dir", default="data", help="where MNIST lives (default: data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--json", default="output/bench.json", help="where to write the figures (default: output/bench.json)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.latent < 1 or min(args.hidden) < 1:
        p.error("--repeats, --batch-size, --latent and --hidden must be at least 1")
    return args


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    ensure_mnist(args.data_dir)
    train_x = load_splits(args.data_dir, 0, device)["train"][0]
    config = ModelConfig(model=args.model, latent=args.latent, hidden=tuple(args.hidden))

    def fresh_step():
        torch.manual_seed(0)
        model = build_model(config).to(device).train()
        train = TrainConfig(batch_size=args.batch_size)
        return model, make_step(model, make_optimizer(model, train), train, compile=args.compile)

    model, step = fresh_step()
    generator = torch.Generator().manual_seed(0)
    ours, ours_all = median_seconds(lambda: train_epoch(step, train_x, args.batch_size, generator).cpu(),
                                    args.repeats, device)
    roof, flops = roofline(model, len(train_x), args.batch_size, args.repeats, device)
    result = {
        "model": config.to_dict(), "batch_size": args.batch_size, "images_per_epoch": len(train_x),
        "device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "torch": str(torch.__version__), "repeats": args.repeats,
        "epoch_seconds": ours, "epoch_seconds_all": ours_all,
        "matmul_gflop_per_epoch": flops / 1e9, "matmul_gflops": flops / roof / 1e9, "roofline_seconds": roof,
        "fraction_of_roofline": roof / ours,
    }
    print(f"model {config.model} {config.input_dim}-{'-'.join(map(str, config.hidden))}-{config.latent}, "
          f"batch {args.batch_size}, {len(train_x)} images/epoch, {device} ({cpu_name()}), "
          f"{torch.get_num_threads()} threads")
    print(f"this repository's loop : {ours:7.2f} s/epoch  (runs: {', '.join(f'{t:.2f}' for t in ours_all)})")
    print(f"matmul roofline        : {roof:7.2f} s/epoch  ({flops / 1e9:.0f} GFLOP at {flops / roof / 1e9:.0f} GFLOP/s)")
    print(f"fraction of roofline   : {roof / ours:7.1%}  (epoch time = {ours / roof:.2f} x roofline)")
    if not args.skip_dataloader:
        model, step = fresh_step()
        loader_epoch = dataloader_epoch_fn(args.data_dir, 0, step, args.batch_size, device, 0)
        reference, reference_all = median_seconds(loader_epoch, args.repeats, device)
        result.update(dataloader_epoch_seconds=reference, dataloader_epoch_seconds_all=reference_all,
                      speedup_over_dataloader=reference / ours)
        print(f"DataLoader reference   : {reference:7.2f} s/epoch  (runs: {', '.join(f'{t:.2f}' for t in reference_all)})")
        print(f"speedup over DataLoader: {reference / ours:7.2f} x")
    result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if device.type == "cuda":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"peak memory            : {result['peak_memory_mib']:7.0f} MiB (process RSS)")
    payload = json.dumps(result, indent=1)
    atomic_write(args.json, lambda f: f.write(payload), mode="w")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
