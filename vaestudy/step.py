"""One training step and one epoch over the device-resident split: what train.py repeats and
bench.py times."""
import torch

from models import iw_bound, log_weights, loss_terms, matmul_precision


def make_optimizer(model, train):
    # fused: one kernel per step for all parameters instead of a dozen small ops per tensor
    groups = [{"params": [p for name, p in model.named_parameters() if name != "log_sigma2"]}]
    if isinstance(model.log_sigma2, torch.nn.Parameter):  # no decay of the learned variance: it pulls sigma^2 to 1
        groups.append({"params": [model.log_sigma2], "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay, fused=True)


def make_step(model, optimizer, train, compiled=False):
    """step(x) trains on one batch x as the TrainConfig `train` says and returns [loss, summed squared
    error, summed KL] as a device tensor, so that nothing waits for the device."""
    forward = model.forward_logits
    if compiled:
        # one compile per run: Dynamo keys its cache on forward_logits's code, which every run shares, so a
        # sweep's runs (other latent sizes, the other model) piled recompiles onto one cache until its limit
        # (8) sent the rest of the sweep to eager, silently; and the batch's size is marked dynamic, so
        # that the epoch's short last batch is no recompile either
        torch._dynamo.reset()
        compiled_forward = torch.compile(model.forward_logits)

        def forward(x):
            torch._dynamo.maybe_mark_dynamic(x, 0)
            return compiled_forward(x)

    def step(x):
        if train.binarize:  # a new 0/1 draw of each image at each use, from the global RNG that checkpoints save
            x = torch.bernoulli(x)
        with matmul_precision(train.precision, x.device.type):  # the model hands back float32 either way
            if train.iw_samples > 1:  # the IWAE: one encoding and K decodings, nothing run twice
                mu, logvar = model.encode(x)
                log_w, logits = log_weights(model, x, train.iw_samples, train.recon, (mu, logvar), with_logits=True)
                logits = logits[0]  # the first draw's decoding, for the logged squared error
            else:
                logits, mu, logvar = forward(x)
        if train.recon == "gaussian-optimal":  # sigma^2's optimum for this batch, the MSE; at the optimum the loss's
            # gradient in sigma is 0, so using it as a constant gives the network the gradient of the optimum's loss
            with torch.no_grad():
                model.log_sigma2.copy_((torch.sigmoid(logits) - x).pow(2).mean().log())
        loss, squared_error, kl = loss_terms(x, torch.sigmoid(logits), mu, logvar, train.recon, train.beta, logits,
                                             model.log_sigma2)
        if train.iw_samples > 1:  # the bound replaces the ELBO; logged: the KL and the first draw's squared error
            loss = -iw_bound(log_w).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return torch.stack([loss.detach(), squared_error.detach().sum(), kl.detach().sum()])

    return step


def train_epoch(step, x, batch_size, generator, batch_done=None):
    """One pass over x in a random order; returns per-batch [loss, squared error sum, KL sum].

    The statistics stay on the device and are read once per epoch: reading them per batch
    would make the host wait for the accelerator at every step. batch_done(1), if given, is called
    after each batch is queued (a progress bar's update), with nothing read from the device.
    """
    order = torch.randperm(len(x), generator=generator).to(x.device)
    n_batches = -(-len(x) // batch_size)
    stats = torch.empty(n_batches, 3, device=x.device)
    for b in range(n_batches):
        stats[b] = step(x[order[b * batch_size:(b + 1) * batch_size]])
        if batch_done is not None:
            batch_done(1)
    return stats
