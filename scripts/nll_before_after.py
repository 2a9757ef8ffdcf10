"""The k-sample NLL estimate as vaestudy.metrics.log_px computed it before it was brought near its
roofline (commit 005210c: BCE-with-logits on materialised logits, 500 draws a chunk, the encoder run
again for each chunk), copied here as the reference, against today's log_px on the same checkpoint,
images and seed: the per-image difference and each one's time, in fp32 and bf16.

    python scripts/nll_before_after.py CHECKPOINT [IMAGES [K]] [--json PATH]
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import LOG_2PI, iw_bound, matmul_precision  # noqa: E402
from vaestudy.checkpoints import load_run  # noqa: E402
from vaestudy.data import load_splits  # noqa: E402
from vaestudy.metrics import log_px, seeded_eval  # noqa: E402


def previous_log_weights(model, x, k):
    mu, logvar = model.encode(x)
    eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_posterior = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
    logits, x = torch.broadcast_tensors(model.logits(z), x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1) + log_prior - log_posterior


@torch.no_grad()
def previous_log_px(model, x, k, seed=0, batch_size=100, chunk=500, precision="fp32"):
    estimates = []
    with seeded_eval(model, seed, x.device), matmul_precision(precision, x.device.type):
        for xb in x.split(batch_size):
            log_w = torch.cat([previous_log_weights(model, xb, min(chunk, k - done)) for done in range(0, k, chunk)])
            estimates.append(iw_bound(log_w))
    return torch.cat(estimates)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--json")]
    out = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    if out:
        args.remove(out)
    checkpoint, n, k = args[0], int(args[1]) if len(args) > 1 else 1000, int(args[2]) if len(args) > 2 else 5000
    run = load_run(checkpoint, torch.device("cpu"))
    x = load_splits("data", run.train.split_seed, "cpu", fetch=False, binarize=True)["test"][0][:n]
    result = {"checkpoint": checkpoint, "images": n, "k": k, "threads": torch.get_num_threads()}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        before = previous_log_px(run.model, x, k, precision=precision).double()
        took_before, start = time.perf_counter() - start, time.perf_counter()
        after = log_px(run.model, x, k, precision=precision).double()
        took_after, difference = time.perf_counter() - start, -(after - before)  # in NLL: after minus before
        result[precision] = {"seconds_before": took_before, "seconds_after": took_after,
                             "nll_before": -before.mean().item(), "nll_after": -after.mean().item(),
                             "difference_mean": difference.mean().item(), "difference_std": difference.std().item(),
                             "difference_max_abs": difference.abs().max().item()}
        r = result[precision]
        print(f"{precision}: NLL {r['nll_before']:.4f} before, {r['nll_after']:.4f} after ({n} images, k = {k}); "
              f"per image, after minus before: mean {r['difference_mean']:+.6f} nats, standard deviation "
              f"{r['difference_std']:.6f}, largest {r['difference_max_abs']:.6f}; {took_before:.0f} s before, "
              f"{took_after:.0f} s after ({took_before / took_after:.2f}x faster)", flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
