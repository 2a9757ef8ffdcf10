"""How fast one training epoch runs, in float32 and in bf16, against the study's DataLoader loop and
the matmul roofline; and what bf16 does to the test NLL estimate.

    python bench.py                      # the study's VAE, 784-784-784-20, batch 1024, fp32 and bf16
    python bench.py --hidden 400         # a narrower model, where the loop's own overhead weighs more
    python bench.py --nll-checkpoint output/likelihood/VAE/recon_bce_batch-size_128_binarize/VAE_latent_50.pt

Prints, per precision, seconds per epoch (median of --repeats after a warm-up epoch) of
  - this repository's loop (vaestudy/step.py: the split as one device tensor, slices of a random
    permutation), training and then validation as train.py does it (always in float32),
  - the roofline: the training epoch's matrix-multiply FLOPs (forward, weight gradients, input
    gradients) divided by the throughput this machine sustains on exactly those matmul shapes in that
    precision (each shape timed over back-to-back calls, so that a GPU's launch latency is not
    counted as work), with float32 as train.py runs it (TF32 on CUDA),
and, in float32, a reference loop as in the study (torchvision MNIST with ToTensor, DataLoader,
shuffle); then the CPU's bf16 units (or the GPU) and the peak memory, all written to --json.
--nll-checkpoint instead measures metrics.log_px in fp32 and in bf16 on the first --nll-images test
images. A benchmark, not a test: CI never runs it.
"""
import vaestudy.cli  # noqa: F401  first: Ctrl-C during the seconds the imports below take is one line

# isort: split
import json
import resource
import statistics

import torch
from torch.utils.data import DataLoader, Subset

from models import PRECISIONS, ModelConfig, build_model
from vaestudy.checkpoints import load_run
from vaestudy.cli import ArgumentParser, UserError, add_place_flags, import_torchvision, run_cli
from vaestudy.data import ensure_dataset, load_splits, split_indices
from vaestudy.datasets import DATASETS
from vaestudy.device import check_precision, cuda_tf32, device_name, flush_subnormals, pick_device, sync
from vaestudy.files import atomic_write
from vaestudy.metrics import log_px, per_image_errors
from vaestudy.runs import STUDY_EPOCHS, TrainConfig, defines_likelihood
from vaestudy.speed import bf16_hardware, elementwise_ns, median_seconds, nll_roofline, roofline, seconds, time_shares
from vaestudy.step import make_optimizer, make_step, train_epoch

flush_subnormals()  # as train.py does
CPU = torch.device("cpu")


def fresh_step(config, train, device, compiled=False):
    """A new model, seeded as every timing here starts, and its training step."""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    return model, make_step(model, make_optimizer(model, train), train, compiled)


def loop_epoch(config, train, train_x, val_x, compiled):
    """A fresh model and train.py's epoch: training in train.precision, then float32 validation."""
    model, step = fresh_step(config, train, train_x.device, compiled)
    generator = torch.Generator().manual_seed(0)
    times = {"train": [], "val": []}

    def epoch():
        device = train_x.device
        times["train"].append(seconds(lambda: train_epoch(step, train_x, train.batch_size, generator).cpu(), device))
        times["val"].append(seconds(lambda: per_image_errors(model, val_x, sample=True)[0].cpu(), device))

    return model, epoch, times


def profile_steps(config, train, train_x, steps=20):
    """torch.profiler over `steps` training steps after a warm-up: each op's share of the time, and
    the share of the matrix multiplies (what the roofline counts) in all of it."""
    from torch.profiler import ProfilerActivity, profile
    _, step = fresh_step(config, train, train_x.device)
    batches = train_x[:steps * train.batch_size].split(train.batch_size)
    for x in batches[:3]:
        step(x)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if train_x.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for x in batches:
            step(x)
        sync(train_x.device)
    matmuls, top = time_shares(prof.key_averages(), train_x.device.type == "cuda")
    print(f"{train.precision} profile of {len(batches)} steps: matmuls {matmuls:.0%} of the time; "
          + ", ".join(f"{k} {v:.0%}" for k, v in top.items()))
    return {"matmul_share": matmuls, "top_ops": top}


def dataloader_epoch_fn(data_dir, split_seed, step, batch, device, generator_seed, name="mnist"):
    """The study's input pipeline: PIL images through ToTensor, batched and shuffled by DataLoader."""
    torchvision = import_torchvision()  # only here: the study's reference loop is torchvision's
    dataset = getattr(torchvision.datasets, DATASETS[name].torchvision)(
        data_dir, train=True, transform=torchvision.transforms.ToTensor())
    train_idx, _ = split_indices(len(dataset), split_seed)
    loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(generator_seed))

    def epoch():
        for images, _ in loader:
            step(images.to(device).reshape(len(images), -1))

    return epoch


JOB_TARGET_S = 600  # a job worth its start (Python, PyTorch's import, a CUDA context, the data) and its queueing


def launch_advice(run_seconds, device):
    """How to lay out a sweep of runs that take run_seconds each (vaestudy/launch.py), in words."""
    pack = max(1, round(JOB_TARGET_S / run_seconds))
    here = ("on one GPU, train.py as it is (--launcher none): one process trains the runs in turn, and more "
            "processes would only take turns on the GPU; with several GPUs, --launcher local (a job per GPU)"
            if device.type == "cuda" else
            "on this CPU, train.py as it is uses every core; --launcher local --jobs N splits them among N runs")
    return (f"a {STUDY_EPOCHS}-epoch run takes about {run_seconds:.0f} s here: {here}; on SLURM, --runs-per-job "
            f"{pack} makes each array task about {pack * run_seconds / 60:.0f} min")


def time_epochs(args, device):
    ensure_dataset(args.data_dir, args.dataset)
    splits = load_splits(args.data_dir, 0, device, dataset=args.dataset)
    train_x, val_x = splits["train"][0], splits["val"][0]
    config = ModelConfig(model=args.model, latent=args.latent, hidden=tuple(args.hidden))
    result = {"model": config.to_dict(), "batch_size": args.batch_size, "images_per_epoch": len(train_x),
              "device": str(device), "cpu": device_name(CPU), "bf16_hardware": bf16_hardware(device),
              "threads": torch.get_num_threads(), "torch": str(torch.__version__), "repeats": args.repeats}
    print(f"model {config.model} {config.input_dim}-{'-'.join(map(str, config.hidden))}-{config.latent}, "
          f"batch {args.batch_size}, {len(train_x)} images/epoch, {device} ({device_name(CPU)}), "
          f"{torch.get_num_threads()} threads; bf16 hardware: {result['bf16_hardware']}")
    for precision in args.precision:
        train = TrainConfig(batch_size=args.batch_size, precision=precision, iw_samples=args.iw_samples,
                            **({"recon": "bce", "binarize": True} if args.iw_samples > 1 else {}))
        model, epoch, times = loop_epoch(config, train, train_x, val_x, args.compile)
        epoch_s, runs = median_seconds(epoch, args.repeats, device)
        trained, validated = statistics.median(times["train"][1:]), statistics.median(times["val"][1:])
        roof, flops = roofline(model, len(train_x), args.batch_size, args.repeats, device, precision)
        if args.profile:
            result[f"{precision}_profile"] = profile_steps(config, train, train_x)
        result[precision] = {"epoch_seconds": epoch_s, "epoch_seconds_all": runs, "train_seconds": trained,
                             "val_seconds": validated, "matmul_gflop_per_epoch": flops / 1e9,
                             "matmul_gflops": flops / roof / 1e9, "roofline_seconds": roof,
                             "fraction_of_roofline": roof / trained}
        print(f"{precision}: epoch {epoch_s:6.2f} s (training {trained:.2f} s + validation {validated:.2f} s; "
              f"runs {', '.join(f'{t:.2f}' for t in runs)}); training's matmul roofline {roof:.2f} s "
              f"({flops / 1e9:.0f} GFLOP at {flops / roof / 1e9:.0f} GFLOP/s): {roof / trained:.1%} of it")
        if device.type == "cuda" and roof < trained / 2:  # what a step of small matmuls is limited by on a GPU
            print(f"  the step is launch-bound: its matmuls keep the GPU busy {roof / trained:.0%} of the time; the "
                  f"rest is the host queuing kernels ({trained / (len(train_x) / args.batch_size) * 1e6:.0f} us "
                  "per step)")
    first = result[args.precision[0]]["epoch_seconds"]
    result["advice"] = launch_advice(first * STUDY_EPOCHS, device)
    print(result["advice"])
    if "fp32" in result and "bf16" in result:
        result["bf16_speedup"] = result["fp32"]["epoch_seconds"] / result["bf16"]["epoch_seconds"]
        print(f"bf16 against fp32: {result['bf16_speedup']:.2f}x per epoch")
    if not args.skip_dataloader:
        train = TrainConfig(batch_size=args.batch_size)
        loader_epoch = dataloader_epoch_fn(args.data_dir, 0, fresh_step(config, train, device)[1], args.batch_size,
                                           device, 0, args.dataset)
        reference, reference_all = median_seconds(loader_epoch, args.repeats, device)
        result.update(dataloader_epoch_seconds=reference, dataloader_epoch_seconds_all=reference_all)
        print(f"DataLoader reference, fp32 training only: {reference:.2f} s/epoch "
              f"(runs {', '.join(f'{t:.2f}' for t in reference_all)})")
    return result


def nll_profile(model, x, k, precision):
    """Where one batch's estimate spends its time (torch.profiler), as time_shares reports it."""
    from torch.profiler import ProfilerActivity, profile
    log_px(model, x, k, precision=precision)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        log_px(model, x, k, precision=precision)
        sync(x.device)
    return time_shares(prof.key_averages(), x.device.type == "cuda")


def nll_precision(args, device):
    """log p(x) at k = --nll-samples on the first --nll-images binarized test images, in fp32 and in
    bf16 from the same draws: each one's time per 1,000 images against its matmul roofline, a
    profile of one batch, and the per-image difference of the two estimates."""
    run = load_run(args.nll_checkpoint, device)
    if not defines_likelihood(run.config, run.train):
        raise UserError(f"{args.nll_checkpoint} has no likelihood to estimate: it needs --recon bce --binarize")
    x = load_splits(args.data_dir, run.train.split_seed, device, fetch=False, binarize=True,
                    dataset=run.train.dataset)["test"][0][:args.nll_images]
    nll, took, result = {}, {}, {}
    for precision in ("fp32", "bf16"):
        def estimate():
            nll[precision] = -log_px(run.model, x, args.nll_samples, seed=0, precision=precision).double()
        took[precision] = seconds(estimate, device)
        roof, flops, draws = nll_roofline(run.model, len(x), args.nll_samples, precision, device)
        matmuls, top = nll_profile(run.model, x[:100], min(args.nll_samples, 10 * draws), precision)
        per_1000 = 1000 / len(x)
        result[precision] = {"seconds": took[precision], "seconds_per_1000_images": took[precision] * per_1000,
                             "roofline_seconds_per_1000_images": roof * per_1000, "matmul_gflops": flops / roof / 1e9,
                             "times_roofline": took[precision] / roof, "draws_per_chunk": draws,
                             "profile_matmul_share": matmuls, "profile_top_ops": top,
                             "nll": nll[precision].mean().item(), "nll_per_image": nll[precision].tolist()}
        print(f"{precision}: mean test NLL {nll[precision].mean():.4f} nats over {len(x)} images, k = "
              f"{args.nll_samples}, in {took[precision]:.0f} s: {took[precision] * per_1000:.1f} s per 1,000 images; "
              f"matmul roofline {roof * per_1000:.1f} s ({flops / 1e12 * per_1000:.1f} TFLOP per 1,000 images at "
              f"{flops / roof / 1e9:.0f} GFLOP/s), so {took[precision] / roof:.2f}x the roofline")
        print(f"  profile of 100 images at k = {min(args.nll_samples, 10 * draws)}: matmuls {matmuls:.0%}; "
              + ", ".join(f"{op} {share:.0%}" for op, share in top.items()))
    result["elementwise_ns_per_element"] = elementwise_ns(device)
    print("float32 elementwise passes, ns per element: "
          + ", ".join(f"{op} {ns:.2f}" for op, ns in result["elementwise_ns_per_element"].items()))
    difference = nll["bf16"] - nll["fp32"]
    result.update({"checkpoint": args.nll_checkpoint, "images": len(x), "k": args.nll_samples, "device": str(device),
                   "cpu": device_name(CPU), "bf16_hardware": bf16_hardware(device), "threads": torch.get_num_threads(),
                   "nll_fp32": nll["fp32"].mean().item(), "nll_bf16": nll["bf16"].mean().item(),
                   "difference_mean": difference.mean().item(), "difference_std": difference.std().item(),
                   "difference_max_abs": difference.abs().max().item(), "seconds_fp32": took["fp32"],
                   "seconds_bf16": took["bf16"]})
    print(f"bf16 minus fp32, per image: mean {result['difference_mean']:+.4f} nats, standard deviation "
          f"{result['difference_std']:.4f}, largest {result['difference_max_abs']:.4f}; "
          f"bf16 took {took['bf16'] / took['fp32']:.2f}x fp32's time")
    return result


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--model", default="vae", choices=["ae", "vae"], help="model to time (default: vae)")
    p.add_argument("--latent", type=int, default=20, help="latent size (default: 20)")
    p.add_argument("--hidden", type=int, nargs="+", default=[784, 784], help="encoder widths (default: 784 784)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per step (default: 1024)")
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="precisions to time (default: fp32 bf16)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed epochs per measurement, after one warm-up (default: 3)")
    p.add_argument("--iw-samples", type=int, default=1,
                   help="time the IWAE's step with this many samples (on binarized images, --recon bce; the roofline "
                        "printed is then the ELBO step's, a K-th of the decoder's work) (default: 1, the ELBO)")
    p.add_argument("--skip-dataloader", action="store_true", help="do not time the DataLoader loop (default: time it)")
    p.add_argument("--compile", action="store_true", help="time the step under torch.compile (default: off)")
    p.add_argument("--profile", action="store_true",
                   help="also profile 20 training steps per precision with torch.profiler (default: off)")
    p.add_argument("--nll-checkpoint", default=None,
                   help="measure log p(x) of this checkpoint in fp32 and bf16 instead of timing epochs (default: none)")
    p.add_argument("--nll-images", type=int, default=1000, help="--nll-checkpoint: test images (default: 1000)")
    p.add_argument("--nll-samples", type=int, default=5000,
                   help="--nll-checkpoint: importance samples k (default: 5000)")
    add_place_flags(p)
    p.add_argument("--json", default="output/bench.json",
                   help="where to write the figures (default: output/bench.json)")
    args = p.parse_args(argv)
    if min(args.repeats, args.batch_size, args.latent, *args.hidden, args.nll_images, args.nll_samples,
           args.iw_samples) < 1:
        p.error("--repeats, --batch-size, --latent, --hidden, --nll-images, --nll-samples and --iw-samples must be "
                "at least 1")
    if args.iw_samples > 1 and args.model != "vae":
        p.error("--iw-samples is the VAE's bound: add --model vae")
    return args


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    for precision in ("fp32", "bf16") if args.nll_checkpoint else args.precision:
        check_precision(precision, device)  # before anything is timed, not after the first precision's timing
    if args.nll_checkpoint:
        result = nll_precision(args, device)
    else:
        with cuda_tf32(True):  # float32 as train.py trains it: TF32 on CUDA
            result = time_epochs(args, device)
    result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if device.type == "cuda":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"peak memory: {result['peak_memory_mib']:.0f} MiB (process RSS)")
    payload = json.dumps(result, indent=1)
    atomic_write(args.json, lambda f: f.write(payload), mode="w")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
