"""The measuring helpers shared by training, evaluation and figures: all without gradients, in eval
mode, and in float32 unless log_px is asked for bf16."""
import contextlib
import glob
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from models import LOG_2PI, iw_bound, log_weights, loss_terms, matmul_precision
from vaestudy.device import cuda_tf32, sync
from vaestudy.runs import defines_likelihood

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active when Var_x(E[z|x]) exceeds this
DEAD_FRACTION = 0.99  # a ReLU code unit is dead when it is exactly 0 for at least this share of images
N_GENERATED = 10000  # decoded samples per model for the Frechet distance, as many as test images


@contextlib.contextmanager
def seeded_eval(model, seed, device):
    """The model in eval mode, full float32 matmuls on CUDA (not the TF32 of training, within which
    each epoch's validation runs), and the global RNG seeded from `seed`, all restored afterwards: a
    measurement draws from its own stream and never moves the training's random state."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), cuda_tf32(False):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def per_image_errors(model, x, sample=False, seed=0, batch_size=10000):
    """Squared error (summed over pixels) and KL of each image of x. With sample=True the VAE
    decodes one z ~ q(z|x) per image (from seed's stream); otherwise it decodes z = mu."""
    with seeded_eval(model, seed, x.device):
        parts = [loss_terms(xb, *model(xb, sample=sample))[1:] for xb in x.split(batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def encode_means(model, x, batch_size=10000):
    """The code of every image: the Autoencoder's code, or the mean of the VAE's q(z|x)."""
    return torch.cat([model.eval().encode(xb)[0] for xb in x.split(batch_size)])


@torch.no_grad()
def reconstruct(model, x, batch_size=10000):
    return torch.cat([model.eval()(xb, sample=False)[0] for xb in x.split(batch_size)])


@torch.no_grad()
def encode_posteriors(model, x, batch_size=10000):
    """(mu, logvar) of every image, float64: the VAE's q(z|x), or the Autoencoder's code and None."""
    parts = [model.eval().encode(xb) for xb in x.split(batch_size)]
    mu = torch.cat([p[0] for p in parts]).double()
    return mu, None if parts[0][1] is None else torch.cat([p[1] for p in parts]).double()


def fitted_gaussian(model, x):
    """(mean, scale) of the full-covariance Gaussian moment-matched to the codes of the images x: the
    Autoencoder's codes, or the VAE's aggregate posterior q(z) = 1/N sum_n q(z|x_n), whose covariance
    is the posterior means' covariance plus the mean posterior variance (the law of total variance)."""
    mu, logvar = encode_posteriors(model, x)
    latent = mu.shape[1]
    cov = torch.cov(mu.T).reshape(latent, latent)
    if logvar is not None:
        cov = cov + torch.diag(logvar.exp().mean(0))
    jitter = 1e-6 * cov.diagonal().mean() * torch.eye(latent, device=mu.device, dtype=cov.dtype)
    return mu.mean(0).float(), torch.linalg.cholesky(cov + jitter).float()


def latent_prior(model, train_x, aggregate=False):
    """(mean, scale) of the Gaussian that decoded samples come from, z = mean + scale @ eps, eps ~ N(0, I):
    the VAE's prior N(0, I), which its KL term pulls its codes towards; for the Autoencoder, which has
    no prior, and for the VAE with `aggregate`, a full-covariance Gaussian fitted to the training codes
    (fitted_gaussian). The Autoencoder's samples and the VAE's prior samples are therefore not drawn on
    the same terms; the VAE's aggregate samples are drawn on the Autoencoder's."""
    latent, device = model.config.latent, train_x.device
    if model.config.model == "vae" and not aggregate:
        return torch.zeros(latent, device=device), torch.eye(latent, device=device)
    return fitted_gaussian(model, train_x)


@torch.no_grad()
def generate(model, train_x, n, seed, aggregate=False):
    mean, scale = latent_prior(model, train_x, aggregate)
    eps = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed)).to(mean.device)
    return torch.cat([model.eval().decode(mean + zb @ scale.T) for zb in eps.split(10000)])


def kl_split(mu, logvar, generator, chunk=1000):
    """The mean KL(q(z|x) || p(z)) over N images x, split as Hoffman and Johnson (2016) do into the
    mutual information I(x; z) between the image index and its code, under the joint of x uniform
    over the images and z ~ q(z|x), and the marginal KL(q(z) || p(z)) of the aggregate posterior
    q(z) = 1/N sum_n q(z|x_n) from the prior N(0, I): mean KL = I(x; z) + KL(q(z) || p(z)). Both
    are expectations over z, estimated with one draw z_n ~ q(z|x_n) per image; log q(z_n) is exact,
    a log-mean-exp over all N posteriors. I(x; z) of N images is at most log N (x carries no more).
    mu, logvar: (N, latent) float64. Returns (mutual information, marginal KL) in nats."""
    n, latent = mu.shape
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    z = mu + (0.5 * logvar).exp() * eps
    log_q_given_own = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(1)
    log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(1)
    # log q(z_i | x_j) = -0.5 sum_d [(z_id - mu_jd)^2 / var_jd + logvar_jd + log 2 pi], the square expanded
    # so that the N x N pairs are two matrix products, `chunk` rows of z at a time
    precision = (-logvar).exp()
    constant = (mu.pow(2) * precision + logvar).sum(1) + latent * LOG_2PI
    log_aggregate = torch.cat([
        torch.logsumexp(-0.5 * (zc.pow(2) @ precision.T - 2 * zc @ (mu * precision).T + constant), dim=1)
        for zc in z.split(chunk)]) - math.log(n)
    return (log_q_given_own - log_aggregate).mean(), (log_aggregate - log_prior).mean()


@torch.no_grad()
def kl_split_of(model, x, seed):
    """kl_split of the VAE's posteriors of the images x, its draws from a seeded stream of their own."""
    mu, logvar = encode_posteriors(model, x)
    return kl_split(mu, logvar, torch.Generator().manual_seed(seed))


def last_level_cache_bytes():
    """The size of the CPU's largest cache (Linux's sysfs), or 8 MiB where it cannot be read."""
    sizes = {}
    for folder in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(folder, "level")) as f, open(os.path.join(folder, "size")) as g:
                level, size = int(f.read()), g.read().strip()
            sizes[level] = int(size[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[size[-1]]
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return sizes[max(sizes)] if sizes else 8 * 2**20


def chunk_rows(width, device):
    """Decoder rows per pass of log_px. On the CPU, as many as keep a layer's input and output
    (rows x width floats each) within half the last-level cache, so that the matmuls and the
    log-likelihood read from the cache rather than memory (32 MiB here: 2,674 rows of 784); on a GPU
    2**16, enough rows to fill it."""
    if device.type != "cpu":
        return 2**16
    return max(256, min(2**14, last_level_cache_bytes() // 2 // (2 * width * 4)))


class FastDecoder:
    """model.logits for many same-sized calls without gradients, when the decoder is a stack of
    Linear and ReLU layers (ours): each layer writes into an output allocated once, so that the
    estimate's thousands of calls allocate nothing, and the weights are cast to bf16 once (autocast
    casts them at every call)."""

    def __init__(self, model, rows, precision, device):
        self.dtype = torch.bfloat16 if precision == "bf16" else next(model.parameters()).dtype
        self.layers = [(m.weight.to(self.dtype).t(), m.bias.to(self.dtype)) if isinstance(m, torch.nn.Linear)
                       else None for m in model.decoder]
        self.outputs = [torch.empty(rows, w.shape[1], device=device, dtype=self.dtype)
                        for w, _ in filter(None, self.layers)]
        # bf16 logits are copied into float32 for the likelihood; float32 ones are used where they are
        self.logits = torch.empty(rows, self.outputs[-1].shape[1], device=device) if precision == "bf16" else None

    @staticmethod
    def fits(model):
        return all(isinstance(m, (torch.nn.Linear, torch.nn.ReLU)) for m in model.decoder)

    def __call__(self, z):
        h, outputs = z.to(self.dtype), iter(self.outputs)
        for layer in self.layers:
            if layer is None:
                h.relu_()
            else:
                h = torch.addmm(layer[1], h, layer[0], out=next(outputs)[:len(h)])
        return h if self.logits is None else self.logits[:len(h)].copy_(h)


@torch.no_grad()
def log_px(model, x, k, recon="bce", seed=0, batch_size=100, chunk=None, progress=None, precision="fp32",
           log_sigma2=None):
    """The k-sample importance-weighted estimate of log p(x) for each image, in nats (Burda et al.,
    2016): log (1/k sum_i p(x|z_i) p(z_i) / q(z_i|x)), z_i ~ q(z|x). It is a lower bound that rises
    with k towards log p(x); k = 1 is the ELBO. Each image is encoded once; its k draws go through
    the decoder `chunk` at a time (by default as many as make chunk_rows rows with the batch), so
    memory stays bounded on any device; the draws come from a seeded stream of their own.
    precision "bf16" runs the encoder's and decoder's matmuls in bfloat16; the log weights and their
    log-sum-exp stay float32 (python bench.py --nll-checkpoint measures what it changes). log_sigma2: a
    Gaussian decoder's log-variance in place of the model's own."""
    estimates, rows = [], chunk_rows(max(model.config.hidden + (model.config.input_dim,)), x.device)
    draws = chunk or max(1, rows // min(batch_size, len(x)))

    def decode(z):  # any decoder: model.logits under the precision's autocast
        with matmul_precision(precision, x.device.type):
            return model.logits(z)

    fits = FastDecoder.fits(model)
    logits = FastDecoder(model, draws * min(batch_size, len(x)), precision, x.device) if fits else decode
    with seeded_eval(model, seed, x.device):
        for xb in x.split(batch_size):
            with matmul_precision(precision, x.device.type):
                posterior = model.encode(xb)
            log_w = torch.cat([log_weights(model, xb, min(draws, k - done), recon, posterior, logits,
                                           log_sigma2=log_sigma2)
                               for done in range(0, k, draws)])
            estimates.append(iw_bound(log_w))
            if progress is not None:  # its clock must see the work done, not queued: a wait per 100 images
                sync(x.device)
                progress.update(len(xb))
    return torch.cat(estimates)


def active_dims(means, threshold=ACTIVE_THRESHOLD):
    """The latent dimensions whose posterior means vary across images by more than the threshold,
    most varied first."""
    variance = means.double().var(dim=0)
    return [int(d) for d in variance.argsort(descending=True) if variance[d] > threshold]


def active_units(means, threshold=ACTIVE_THRESHOLD):
    return len(active_dims(means, threshold))


def dead_units(codes, fraction=DEAD_FRACTION):
    """How many code dimensions are exactly zero for at least `fraction` of the images (N, latent)."""
    return int(((codes == 0).double().mean(dim=0) >= fraction).sum())


@torch.no_grad()
def kl_by_dimension(model, x):
    """The mean over images x of KL(q(z_d|x) || N(0, 1)) for each latent dimension d, in nats (float64)."""
    mu, logvar = (torch.cat(t).double() for t in zip(*(model.eval().encode(xb) for xb in x.split(10000))))
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).mean(0)


def top_dimension_kl(model, splits, seed):
    """The KL of the VAE's busiest latent dimension: the largest over dimensions of the mean over test
    images of KL(q(z_d|x) || N(0, 1)), in nats. Beside the total KL it says how concentrated the rate is."""
    return kl_by_dimension(model, splits["test"][0]).max()


KL_THRESHOLD = 0.01  # nats: a dimension whose mean KL is below it carries almost nothing of the images


def kl_active_units(model, splits, seed):
    """Active units counted by rate rather than by the spread of the posterior means: dimensions whose
    mean KL over the test images exceeds KL_THRESHOLD."""
    return int((kl_by_dimension(model, splits["test"][0]) > KL_THRESHOLD).sum())


def units_near_thresholds(model, splits, seed):
    """How fragile the two counts of active units are: the dimensions within a factor of 2 of either
    threshold (the posterior means' variance near ACTIVE_THRESHOLD, or the mean KL near KL_THRESHOLD),
    which a small change of training could move across it."""
    x = splits["test"][0]
    variance, kl = encode_means(model, x).double().var(dim=0), kl_by_dimension(model, x)
    near = ((variance > ACTIVE_THRESHOLD / 2) & (variance < ACTIVE_THRESHOLD * 2)) | (
        (kl > KL_THRESHOLD / 2) & (kl < KL_THRESHOLD * 2))
    return int(near.sum())


def active_units_train(model, splits, seed):
    """active_units on the 54,000 training images, where Burda et al. (2016) measured them."""
    return active_units(encode_means(model, splits["train"][0]))


def kl_active_units_train(model, splits, seed):
    """kl_active_units on the training images."""
    return int((kl_by_dimension(model, splits["train"][0]) > KL_THRESHOLD).sum())


def decoder_sigma(model, splits, seed):
    """The Gaussian decoder's standard deviation per pixel, learned or set to its optimum (recon
    gaussian, gaussian-optimal); the study's fixed one is sqrt(1/2) = 0.71."""
    return model.log_sigma2.detach().exp().sqrt()


BYTE_LEVELS = 256  # a pixel's values, 0..255


def bits_per_dim(log_density, pixels):
    """Bits per pixel of a byte image from the log-density (nats) of its uniform dequantization
    y = (x + u) / 256 in [0, 1)^pixels: the density on [0, 256)^pixels is log_density - pixels log 256,
    which lower-bounds the log-probability of the bytes (Theis et al. 2016), so this is an upper bound
    on their code length: -(log_density - pixels log 256) / (pixels log 2)."""
    return -(log_density - pixels * math.log(BYTE_LEVELS)) / (pixels * math.log(2))


def gaussian_elbo_bits(mse, kl, sigma2, pixels):
    """The ELBO of a Gaussian decoder of one variance sigma2 for every pixel, in bits per dimension of
    dequantized bytes, from its per-pixel squared error at sampled z and its KL (nats per image):
    8 + [1/2 ln(2 pi sigma2) + mse / (2 sigma2)] / ln 2 + kl / (pixels ln 2). Over sigma2 its
    reconstruction part is least at sigma2 = mse, where it is 8 + 1/2 log2(2 pi e mse): with kl = 0,
    the floor that no scalar variance can go below at that error."""
    reconstruction = 0.5 * math.log(2 * math.pi * sigma2) + mse / (2 * sigma2)
    return math.log2(BYTE_LEVELS) + reconstruction / math.log(2) + kl / (pixels * math.log(2))


@torch.no_grad()
def refitted_sigma2(model, x, seed=0):
    """The decoder variance that maximises this network's ELBO of the images x, its weights as they
    are: their per-pixel squared error, decoding one z ~ q(z|x) per image (float64)."""
    squared_error, _ = per_image_errors(model, x, sample=True, seed=seed)
    return squared_error.double().mean() / x.shape[1]


def dequantized(x, seed):
    """Grey pixels k/255 as their bytes k, each moved by u ~ U[0, 1) and divided by 256, from a seeded
    stream of their own."""
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    return ((x * 255).round() + u) / BYTE_LEVELS


def dequantized_bits_per_dim(model, x, k, recon, seed=0, progress=None, sigma2=None):
    """The Gaussian decoder's bits per dimension on images x (grey, k/255), from the k-sample bound on
    the log-density of their dequantization: an upper bound on the bits per pixel (float64 mean).
    sigma2: measure the network with this decoder variance in place of its own (refitted_sigma2)."""
    log_sigma2 = None if sigma2 is None else torch.as_tensor(sigma2, dtype=torch.float32, device=x.device).log()
    log_density = log_px(model, dequantized(x, seed), k, "gaussian" if sigma2 is not None else recon, seed=seed,
                         progress=progress, log_sigma2=log_sigma2)
    return bits_per_dim(log_density.double(), x.shape[1]).mean()


def finite_or_none(value):
    """JSON and tables get None for a non-finite number, never a NaN that looks like a result."""
    value = float(value)
    return value if math.isfinite(value) else None


def measure(model, x, labels, sample=False, seed=0):
    """Per-pixel MSE overall and for each class (digit) 0-9, and the mean KL per image. The per-class
    sums are a matmul with the labels' one-hot matrix, in float64: the same on every run of a GPU,
    where index_add_'s atomic adds come in any order."""
    squared_error, kl = per_image_errors(model, x, sample=sample, seed=seed)
    mse = squared_error / x.shape[1]
    one_hot = torch.nn.functional.one_hot(labels, 10).double()
    per_digit = (one_hot.T @ mse.double()) / one_hot.sum(0)
    return {"mse": finite_or_none(mse.mean()), "mse_per_digit": [finite_or_none(v) for v in per_digit.tolist()],
            "kl": finite_or_none(kl.mean())}


@dataclass(frozen=True)
class Metric:
    """One measurement of a run, declared once. Everything else follows from the declaration: what
    evaluate.py measures and stores in results.json, the summary over seeds, every table's column,
    the headline table, results.md's list of terms, and the plot against latent size.

    A metric that `measure`s is computed here from the run's model alone, `measure(model, splits,
    seed)`, on the runs that `runs` names, and stored in the run's entry under its key; the others
    are measured by evaluate.measure_run itself (they share its passes over the data) and `read`
    from the entry."""
    key: str  # its name in results.json
    label: str  # its column in every table
    digits: int  # decimals shown
    glossary: str  # what it is, in one line of results.md's terms
    lower_is_better: Optional[bool] = None  # None for a count or a rate, where neither is better
    # the runs it applies to: "all", "vae", "ae", "likelihood" (runs.defines_likelihood) or "gaussian" (a decoder
    # variance of their own: recon gaussian or gaussian-optimal)
    runs: str = "all"
    measure: Optional[Callable] = None
    read: Optional[Callable] = None  # from a run's entry; by default entry[key]
    headline: bool = False  # a column of the README's headline table
    plot: Optional[tuple] = None  # (y label, title) of its plot against latent size
    integer: bool = False  # a count: integer ticks on its plot

    def applies(self, config, train):
        return {"all": True, "vae": config.model == "vae", "ae": config.model == "ae",
                "likelihood": defines_likelihood(config, train),
                "gaussian": train.recon in ("gaussian", "gaussian-optimal")}[self.runs]

    def value(self, entry):
        return self.read(entry) if self.read else entry.get(self.key)


METRICS = (
    Metric("test_mse", "test MSE", 4, "per-pixel squared error on the 10,000 test images, decoding z = mu (the VAE) "
           "or the code (the Autoencoder)", lower_is_better=True, read=lambda e: e["test"]["mse"], headline=True),
    Metric("test_mse_sampled", "test MSE, sampled z", 4, "the VAE's test MSE decoding one z drawn from q(z|x) per "
           "image, as the study measured it", lower_is_better=True, runs="vae",
           read=lambda e: e.get("test_sampled", {}).get("mse"), headline=True),
    Metric("val_mse", "val MSE", 4, "test MSE's measure on the 6,000 validation images, which select the latent "
           "size", lower_is_better=True, read=lambda e: e["val"]["mse"]),
    Metric("test_kl", "KL (nats)", 2, "the VAE's KL(q(z|x) || N(0, I)) per test image: the rate, the nats its code "
           "carries", runs="vae", read=lambda e: e["test"]["kl"] if e["model"] == "VAE" else None, headline=True),
    Metric("mutual_information", "I(x; z) (nats)", 2, "the part of the KL that tells the test images apart: the "
           "mutual information between an image and its code, at most log 10,000 = 9.21 nats (Hoffman and Johnson "
           "2016)", runs="vae"),
    Metric("marginal_kl", "KL(q(z) || p(z)) (nats)", 2, "the rest of the KL: how far the codes of all test images "
           "together, the aggregate posterior q(z), lie from the prior N(0, I)", runs="vae"),
    Metric("top_dim_kl", "top dim. KL (nats)", 2, "the KL of the VAE's busiest latent dimension: the largest mean "
           "test KL of any one dimension", runs="vae", measure=top_dimension_kl),
    Metric("test_nll", "test NLL (nats)", 2, "minus the k-sample importance-weighted estimate of log p(x) per "
           "binarized test image (Burda et al. 2016)", lower_is_better=True, runs="likelihood"),
    Metric("test_elbo", "test ELBO (nats)", 2, "the evidence lower bound per binarized test image: the NLL's bound "
           "at k = 1", lower_is_better=False, runs="likelihood"),
    Metric("active_units", "active units", 1, f"latent dimensions whose posterior mean varies over the test images "
           f"by more than {ACTIVE_THRESHOLD} (Burda et al. 2016)", runs="vae", headline=True,
           plot=(f"active units (Var of posterior mean > {ACTIVE_THRESHOLD})", "VAE: active latent units"),
           integer=True),
    Metric("kl_active_units", "KL-active units", 1, f"latent dimensions whose mean KL over the test images exceeds "
           f"{KL_THRESHOLD} nats: active units counted by rate", runs="vae", measure=kl_active_units, integer=True),
    Metric("units_near_threshold", "units near a threshold", 1, "latent dimensions within a factor of 2 of either "
           "threshold of the two active-unit counts: how many a small change could move across", runs="vae",
           measure=units_near_thresholds, integer=True),
    Metric("active_units_train", "active units (train)", 1, "active units measured on the 54,000 training images, "
           "as Burda et al. (2016) did", runs="vae", measure=active_units_train, integer=True),
    Metric("kl_active_units_train", "KL-active units (train)", 1, "KL-active units measured on the training images",
           runs="vae", measure=kl_active_units_train, integer=True),
    Metric("decoder_sigma", "decoder sigma", 4, "the Gaussian decoder's standard deviation per pixel, learned or "
           "set to its optimum, the root of the batch's MSE (the study's is fixed at 0.71)", runs="gaussian",
           measure=decoder_sigma),
    Metric("dead_units", "dead units", 1, f"Autoencoder code dimensions that are exactly 0 for at least "
           f"{DEAD_FRACTION:.0%} of the test images", runs="ae",
           plot=(f"dead units (exactly 0 for >= {DEAD_FRACTION:.0%} of test images)", "Autoencoder: dead code units"),
           integer=True),
    Metric("classifier_accuracy", "classifier acc.", 4, "a small classifier's accuracy on the test images' "
           "reconstructions: does the code keep the class (the digit, the article of clothing)?",
           lower_is_better=False, headline=True,
           plot=("accuracy on test reconstructions", "Does the code keep the class?")),
    Metric("frechet_distance", "Frechet dist.", 2, "Frechet distance between the classifier's features of 10,000 "
           "decoded samples (the VAE's z from its prior N(0, I), the Autoencoder's from a full-covariance Gaussian "
           "fitted to its training codes) and of the test images", lower_is_better=True,
           plot=("Frechet distance to test features (lower is better)", "Quality of decoded samples")),
    Metric("frechet_aggregate", "Frechet dist., q(z) fit", 2, "the VAE's Frechet distance with its samples' z drawn "
           "instead from a full-covariance Gaussian fitted to its training images' codes, the aggregate posterior "
           "q(z) (the Autoencoder's protocol)", lower_is_better=True, runs="vae"),
)
