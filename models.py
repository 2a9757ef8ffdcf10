"""The study's two models, fully connected Autoencoder and VAE, and their loss."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# the configuration lives with the run's (vaestudy/runs.py), where no PyTorch is needed to read flags
from vaestudy.runs import MODEL_NAMES, PRECISIONS, ModelConfig  # noqa: F401


def mlp(sizes):
    """Linear layers with a ReLU between each pair (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        # in place: ReLU's backward needs only its output, so its input need not be kept
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU(inplace=True)] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    def __init__(self, config, recon="mse"):
        super().__init__()
        self.config = config
        # the Gaussian decoder's variance, one scalar for all pixels (Rybkin et al. 2021): recon "gaussian" learns
        # log sigma^2 with the rest; "gaussian-optimal" sets it to its optimum for each batch, log of the batch's
        # per-pixel MSE, and keeps the last for evaluation. The study's "mse" fixes sigma^2 at 1/2.
        if recon == "gaussian":
            self.log_sigma2 = nn.Parameter(torch.zeros(()))
        elif recon == "gaussian-optimal":
            self.register_buffer("log_sigma2", torch.zeros(()))
        else:
            self.log_sigma2 = None
        widths = [config.input_dim, *config.hidden]
        self.encoder = mlp(widths + [self.code_size()])
        if config.code_relu:  # as the study built it; a code unit that is negative for every image stays 0 and dead
            self.encoder.append(nn.ReLU(inplace=True))
        self.decoder = mlp([config.latent, *reversed(widths)])

    def code_size(self):
        return self.config.latent

    def encode(self, x):
        """The code's mean and log-variance; a deterministic code has no variance (None)."""
        return at_least_float32(self.encoder(x)), None

    def logits(self, z):
        """The decoder's output before the sigmoid."""
        return at_least_float32(self.decoder(z))

    def decode(self, z):
        return torch.sigmoid(self.logits(z))

    def forward_logits(self, x, sample=True):
        """(logits, mu, logvar): the decoder's output before the sigmoid, for losses that take logits."""
        mu, logvar = self.encode(x)
        z = mu if logvar is None or not sample else reparameterize(mu, logvar)
        return self.logits(z), mu, logvar

    def forward(self, x, sample=True):
        logits, mu, logvar = self.forward_logits(x, sample)
        return torch.sigmoid(logits), mu, logvar


class VAE(Autoencoder):
    def code_size(self):
        return 2 * self.config.latent  # mean and log-variance of q(z|x)

    def encode(self, x):
        mu, logvar = at_least_float32(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar


def at_least_float32(t):
    """bf16 layer outputs (under matmul_precision) back in float32, so that everything after the
    matmuls (sigmoid, losses, KL, log weights and their sums) is float32; float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def matmul_precision(precision, device_type):
    """Where the encoder's and decoder's matrix multiplies run: fp32 as they are, bf16 under autocast
    (bfloat16 inputs and weights, float32 accumulation). Weights and their gradients stay float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def reparameterize(mu, logvar):
    """z = mu + sigma * eps: a sample of N(mu, sigma^2) through which gradients reach mu and sigma."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def build_model(config, recon="mse"):
    """The model a ModelConfig describes; recon (the run's TrainConfig.recon) adds the decoder's learned
    variance where it is "gaussian" or "gaussian-optimal"."""
    return {"ae": Autoencoder, "vae": VAE}[config.model](config, recon)


def kl_divergence(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, I)) per image, summed over latent dimensions (closed form)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def loss_terms(x, x_hat, mu, logvar, recon="mse", beta=1.0, logits=None, log_sigma2=None):
    """The training objective and what is logged.

    Returns (loss, squared_error, kl): loss is the batch mean of reconstruction + beta * KL, where
    reconstruction is summed over the 784 pixels of each image: the squared error (recon "mse"), the
    binary cross entropy from the decoder's logits ("bce"), or the negative log-density of a Gaussian
    of variance exp(log_sigma2) around x_hat ("gaussian"); squared_error and kl are per-image sums,
    shape (batch,).
    """
    squared_error = (x_hat - x).pow(2).sum(dim=1)
    kl = kl_divergence(mu, logvar) if logvar is not None else torch.zeros_like(squared_error)
    if recon == "mse":
        reconstruction = squared_error
    elif recon == "bce":  # from the logits: the sigmoid's output would lose log p where it rounds to 0 or 1
        reconstruction = (F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
                          if logits is not None else F.binary_cross_entropy(x_hat, x, reduction="none").sum(dim=1))
    elif recon in ("gaussian", "gaussian-optimal"):
        reconstruction = -gaussian_log_likelihood(squared_error, log_sigma2, x.shape[1])
    else:
        raise ValueError(f"unknown reconstruction loss {recon!r}")
    return (reconstruction + beta * kl).mean(), squared_error, kl


LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_likelihood(logits, x):
    """sum_j x_j l_j - softplus(l_j) over the last dimension: log p(x|z) of a Bernoulli decoder with
    logits l, which is minus F.binary_cross_entropy_with_logits summed, in fewer passes over the
    logits. softplus(l) = max(l, 0) + log(1 + exp(-|l|)), with log where PyTorch would use log1p:
    on the CPU its log1p and softplus take several times log's and exp's time per element (python
    bench.py --nll-checkpoint prints them), and the two differ by float32's rounding of
    1 + exp(-|l|), at most 6e-8 an element. Without gradients the passes reuse one temporary in place."""
    if torch.is_grad_enabled() and logits.requires_grad:  # autograd needs every intermediate
        return (logits * x).sum(-1) - logits.clamp(min=0).sum(-1) - torch.log(1 + torch.exp(-logits.abs())).sum(-1)
    scratch = logits.abs()  # the one allocation: each pass below writes into it
    tail = scratch.neg_().exp_().add_(1).log_().sum(-1)
    relu = torch.clamp(logits, min=0, out=scratch).sum(-1)
    return torch.mul(logits, torch.broadcast_to(x, logits.shape), out=scratch).sum(-1) - relu - tail


def gaussian_log_likelihood(squared_error, log_sigma2, pixels):
    """log N(x; x_hat, sigma^2 I) from the squared error |x - x_hat|^2 summed over `pixels` dimensions:
    -|x - x_hat|^2 / (2 sigma^2) - (pixels / 2) (log sigma^2 + log 2 pi)."""
    return -0.5 * squared_error * torch.exp(-log_sigma2) - 0.5 * pixels * (log_sigma2 + LOG_2PI)


def log_likelihood(logits, x, recon="bce", log_sigma2=None):
    """log p(x|z) summed over pixels, from the decoder's pre-sigmoid output. bce: Bernoulli, a
    normalised likelihood only of 0/1 pixels. mse: the Gaussian of variance 1/2 around the sigmoid's
    output, whose negative log is the summed squared error plus (784 / 2) log(pi). gaussian: the
    Gaussian of the decoder's variance exp(log_sigma2), learned or set (gaussian, gaussian-optimal)."""
    if recon == "bce":
        return bernoulli_log_likelihood(logits, x)
    squared_error = (torch.sigmoid(logits) - x).pow(2).sum(-1)
    if recon == "mse":
        return -squared_error - 0.5 * x.shape[-1] * math.log(math.pi)
    return gaussian_log_likelihood(squared_error, log_sigma2, x.shape[-1])


def log_weights(model, x, k, recon="bce", posterior=None, logits=None, with_logits=False, log_sigma2=None):
    """log p(x|z_i) + log p(z_i) - log q(z_i|x) for k draws z_i ~ q(z|x) per image, shape (k, batch):
    their log-mean-exp is the k-sample importance-weighted bound on log p(x) (Burda et al., 2016),
    its mean for k = 1 the ELBO. Gradients reach the model through the reparameterized draws.
    posterior: (mu, logvar) of x when the caller has them (encoded once for many calls); logits: a
    function of z (N, latent) giving the decoder's logits (N, pixels), by default model.logits.
    with_logits: also return the decoder's logits, shape (k, batch, pixels). log_sigma2: a Gaussian
    decoder's log-variance in place of the model's own."""
    mu, logvar = model.encode(x) if posterior is None else posterior
    eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_posterior = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
    decoded = (model.logits if logits is None else logits)(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
    log_sigma2 = model.log_sigma2 if log_sigma2 is None else log_sigma2
    log_w = log_likelihood(decoded, x, recon, log_sigma2) + log_prior - log_posterior
    return (log_w, decoded) if with_logits else log_w


def iw_bound(log_w):
    """log (1/k sum_i w_i) per image, from log weights of shape (k, batch)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
