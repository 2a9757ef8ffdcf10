"""The test log-likelihood: the importance-weighted estimate against log p(x) integrated on a grid,
the bound's rise with k, k = 1 against the loss's ELBO; dynamically binarized MNIST; the IWAE
objective."""
import json
import math
import os

import pytest
import torch

import evaluate
import models
import train
from models import ModelConfig, build_model, kl_divergence, log_weights
from vaestudy import report
from vaestudy.checkpoints import load_checkpoint
from vaestudy.data import load_splits
from vaestudy.metrics import log_px
from vaestudy.runs import TrainConfig
from vaestudy.step import make_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--latent", "2", "--limit", "256", "--batch-size", "64", "--hidden", "16", "--device", "cpu"]
BINARY = ["--model", "vae", "--recon", "bce", "--binarize"]


@pytest.fixture(scope="module")
def images(mnist_dir):
    return load_splits(mnist_dir, 0, "cpu", binarize=True)["test"][0][:6].double()


def latent_1_model():
    """A VAE small enough to integrate: latent 1, its decoder's output sharpened so that p(x|z)
    changes a lot with z and a poor bound is visibly below log p(x)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=1, hidden=(16,))).double().eval()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(2)
    return model


def exact_log_px(model, x):
    """log of the integral of p(x|z) N(z; 0, 1) dz, by the rectangle rule on a fine grid of z."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)[:, None]  # 4 times finer changes it by < 1e-5
    with torch.no_grad():
        logits = model.decoder(z)
        log_joint = torch.stack([models.log_likelihood(logits, image) for image in x],
                                1) - 0.5 * (z ** 2 + math.log(2 * math.pi))
    return torch.logsumexp(log_joint, dim=0) + math.log(z[1, 0] - z[0, 0])


def test_the_estimate_with_many_samples_is_log_px(images):
    model = latent_1_model()
    exact = exact_log_px(model, images)
    estimate = log_px(model, images, k=5000, batch_size=3, chunk=1000)
    # importance sampling's own noise at k = 5000 is a few hundredths of a nat here; a missing
    # log k or log q term would be off by nats
    assert (estimate - exact).abs().max() < 0.1, (estimate, exact)
    assert exact.max() < -500, "real images, far from trivially likely"


def test_the_bound_rises_with_k(images):
    model = latent_1_model()
    exact = exact_log_px(model, images).mean()
    bounds = [log_px(model, images, k, seed=1).mean() for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2] < exact + 0.2  # below log p(x) in expectation; 0.2: its noise
    assert exact - bounds[0] > 1, "the ELBO is a loose bound for this model: the test can tell k apart"


@pytest.mark.slow
def test_k_1_is_the_elbo_of_the_loss(images):
    """The mean of k = 1 log weights is the ELBO, E_q[log p(x|z)] - KL, which the loss minimises
    (with the KL in closed form) with bce: equal within 4 Monte Carlo standard errors."""
    model = latent_1_model()
    torch.manual_seed(2)
    draws = 20000
    log_w = log_weights(model, images, draws)  # (draws, images)
    with torch.no_grad():
        mu, logvar = model.encode(images)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(draws, *mu.shape, dtype=mu.dtype)
        reconstruction = -torch.nn.functional.binary_cross_entropy(model.decode(z), images.expand(draws, -1, -1),
                                                                    reduction="none").sum(-1).mean(0)
    elbo = reconstruction - kl_divergence(mu, logvar)
    standard_error = log_w.std(0) / math.sqrt(draws)
    assert ((log_w.mean(0) - elbo).abs() < 4 * standard_error + 1e-6).all()


def test_binarized_validation_and_test_images_are_one_fixed_draw(mnist_dir):
    a, b = load_splits(mnist_dir, 0, "cpu", binarize=True), load_splits(mnist_dir, 1, "cpu", binarize=True)
    assert torch.equal(a["test"][0], b["test"][0]) and set(a["test"][0].unique().tolist()) == {0.0, 1.0}
    grey = load_splits(mnist_dir, 0, "cpu")["test"][0]
    assert ((a["test"][0] == 1) <= (grey > 0)).all(), "only inked pixels can be drawn as 1"
    assert abs(a["test"][0].mean() - grey.mean()) < 0.002, "drawn with the pixels' intensities as probabilities"


def test_a_binarized_epochs_images_are_0_or_1_and_new_each_epoch(mnist_dir, tmp_path, monkeypatch):
    seen = []
    forward = models.Autoencoder.forward_logits  # what the training step calls

    def recording(self, x, sample=True):
        if self.training:
            seen.append(x.detach().clone())
        return forward(self, x, sample)

    monkeypatch.setattr(models.Autoencoder, "forward_logits", recording)
    train.main([*BINARY, *TINY, "--epochs", "2", "--batch-size", "256", "--data-dir", mnist_dir, "--out",
                str(tmp_path)])
    first, second = seen  # one batch of all 256 images per epoch, in another order each time
    assert set(torch.cat(seen).unique().tolist()) == {0.0, 1.0}
    assert first.sum() != second.sum(), "drawn anew, not binarized once"


@pytest.mark.slow
def test_resume_stays_bit_exact_with_binarize(mnist_dir, tmp_path):
    def run(out, epochs, *extra):
        train.main([*BINARY, *TINY, "--epochs", str(epochs), "--data-dir", mnist_dir, "--out", str(out), *extra])
        return torch.load(out / "VAE" / "hidden_16_recon_bce_batch-size_64_limit_256_binarize" / "VAE_latent_2.pt",
                          weights_only=True)
    whole = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed = run(tmp_path / "b", 3, "--resume")
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert all(whole["history"][k] == resumed["history"][k] for k in whole["history"] if k != "seconds")


def test_iw_samples_1_trains_exactly_as_before_and_k_5_is_a_run_of_its_own(mnist_dir, tmp_path):
    folder = "VAE/hidden_16_batch-size_64_limit_256"
    for out, extra in (("plain", []), ("one", ["--iw-samples", "1"]), ("five", ["--iw-samples", "5"])):
        train.main(["--model", "vae", *TINY, "--epochs", "1", "--data-dir", mnist_dir, "--out", str(tmp_path / out),
                    *extra])
    plain, one = (torch.load(tmp_path / out / folder / "VAE_latent_2.pt", weights_only=True) for out in ("plain",
                                                                                                         "one"))
    assert all(torch.equal(plain["model"][k], one["model"][k]) for k in plain["model"])
    five = torch.load(tmp_path / "five" / "VAE" / "hidden_16_batch-size_64_limit_256_iw-samples_5" / "VAE_latent_2.pt",
                      weights_only=True)
    assert not torch.equal(five["model"]["decoder.0.weight"], plain["model"]["decoder.0.weight"])


def test_the_iwae_step_is_minus_the_k_sample_bound_and_its_gradient(mnist_dir):
    """One step of --iw-samples 3 on a fixed batch, against the bound computed here from its
    formula with the same draws: the same loss and the same gradients, and one pass of the model
    (the logged squared error is the first draw's, the KL the closed form's)."""
    x = torch.bernoulli(load_splits(mnist_dir, 0, "cpu", limit=32)["train"][0])
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    reference = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    reference.load_state_dict(model.state_dict())
    state = torch.get_rng_state()
    log_w, logits = log_weights(reference, x, 3, "bce", with_logits=True)
    expected = -(torch.logsumexp(log_w, 0) - math.log(3)).mean()
    expected.backward()
    torch.set_rng_state(state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the step leaves its gradients, not a change
    stats = make_step(model, optimizer, TrainConfig(iw_samples=3, recon="bce"))(x)
    assert float(stats[0]) == pytest.approx(float(expected.detach()), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    with torch.no_grad():
        mu, logvar = reference.encode(x)
        squared_error = (torch.sigmoid(logits[0]) - x).pow(2).sum()
    assert float(stats[1]) == pytest.approx(float(squared_error), rel=1e-5), "the first draw's squared error"
    assert float(stats[2]) == pytest.approx(float(kl_divergence(mu, logvar).sum()), rel=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_the_fused_bernoulli_log_likelihood_is_bce_with_logits(grad):
    torch.manual_seed(0)
    logits = (torch.randn(7, 5, 784) * 6).requires_grad_(grad)  # far into both tails of the sigmoid
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(*torch.broadcast_tensors(logits, x),
                                                                     reduction="none").sum(-1)
    with torch.set_grad_enabled(grad):
        fused = models.bernoulli_log_likelihood(logits, x)
    assert torch.allclose(fused, expected, rtol=2e-6, atol=1e-3), (fused - expected).abs().max()
    if grad:
        g, = torch.autograd.grad(fused.sum(), logits)
        g_expected, = torch.autograd.grad(expected.sum(), logits)
        assert torch.allclose(g, g_expected, atol=1e-6)


@pytest.mark.parametrize("k, chunk", [(1234, None), (1234, 100), (7, 3), (1, None)])
def test_an_estimate_uses_exactly_k_draws_per_image(images, monkeypatch, k, chunk):
    """Whatever the chunking, every image gets k draws, no more, no fewer (a loop that skipped every
    other chunk passed every test while k was at most one chunk)."""
    from vaestudy import metrics
    drawn, log_weights_of = [], metrics.log_weights

    def counted(model, x, n, *args, **kwargs):
        drawn.append((len(x), n))
        return log_weights_of(model, x, n, *args, **kwargs)
    monkeypatch.setattr(metrics, "log_weights", counted)
    model = latent_1_model()
    estimate = log_px(model, images, k, batch_size=4, chunk=chunk)
    assert len(estimate) == len(images)
    draws = iter(drawn)
    for size in (4, 2):  # 6 images in batches of 4
        total = 0
        while total < k:
            images_in_batch, n = next(draws)
            assert images_in_batch == size
            total += n
        assert total == k
    assert next(draws, None) is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_fast_decoder_is_the_models_logits(precision):
    from vaestudy.metrics import FastDecoder
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=3, hidden=(32, 16))).eval()
    fast = FastDecoder(model, 40, precision, torch.device("cpu"))
    z = torch.randn(25, 3)  # fewer rows than it holds: the last chunk of draws
    with torch.no_grad(), models.matmul_precision(precision, "cpu"):
        expected = model.logits(z)
        got = fast(z).clone()
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6 if precision == "fp32" else 1e-2)


def test_the_chunk_rule_keeps_two_layers_in_half_the_cache(monkeypatch):
    from vaestudy import metrics
    monkeypatch.setattr(metrics, "last_level_cache_bytes", lambda: 32 * 2**20)
    assert metrics.chunk_rows(784, torch.device("cpu")) == 2674  # 2 x 2674 x 784 floats: 16 MiB
    monkeypatch.setattr(metrics, "last_level_cache_bytes", lambda: 256 * 2**10)
    assert metrics.chunk_rows(784, torch.device("cpu")) == 256, "at least a few hundred rows"
    assert metrics.chunk_rows(784, torch.device("meta")) == 2**16, "an accelerator gets rows enough to fill it"
    assert metrics.last_level_cache_bytes() > 0


@pytest.mark.parametrize("flags, message", [
    (["--model", "vae", "--binarize"], "--binarize is for the Bernoulli decoder: add --recon bce"),
    (["--model", "ae", "--iw-samples", "5"], "--iw-samples bounds the VAE's log-likelihood"),
    (["--model", "vae", "--iw-samples", "5", "--beta", "2"], "with beta 1"),
    (["--model", "vae", "--iw-samples", "0"], "--iw-samples must be at least 1"),
])
def test_settings_that_make_no_likelihood_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        train.get_args(flags)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_reports_the_test_nll_where_the_decoder_is_a_likelihood(mnist_dir, tmp_path):
    train.main([*BINARY, *TINY, "--epochs", "2", "--data-dir", mnist_dir, "--out", str(tmp_path)])
    train.main(["--model", "vae", *TINY, "--epochs", "2", "--data-dir", mnist_dir, "--out", str(tmp_path)])
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier",
                   "--nll-samples", "20"])
    results = json.loads((tmp_path / "results.json").read_text())
    by_variant = {e["variant"]: e for e in results["runs"]}
    binary, grey = by_variant["hidden 16, recon bce, batch-size 64, limit 256, binarize"], by_variant[
        "hidden 16, batch-size 64, limit 256"]
    assert grey.get("test_nll") is None and grey.get("test_elbo") is None
    assert binary["nll_samples"] == 20 and 0 < binary["test_nll"] < -binary["test_elbo"], "the bound is below log p(x)"
    model = load_checkpoint(binary["checkpoint"])[1]
    test_x = load_splits(mnist_dir, 0, "cpu", binarize=True)["test"][0]
    assert binary["test_nll"] == pytest.approx(-log_px(model, test_x, 20).mean().item(), rel=1e-6)
    rows = {r["variant"]: r for r in results["summary"]}
    assert rows[binary["variant"]]["test_nll"] == binary["test_nll"] and rows[grey["variant"]]["test_nll"] is None
    report = (tmp_path / "results.md").read_text()
    assert "test NLL (nats)" in report
    ours = [line for line in report.splitlines() if "this repository, `--hidden 16 --recon bce" in line]
    assert len(ours) == 1 and f"| 20 | {binary['test_nll']:.2f} (1 seed) |" in ours[0], "the benchmark table, its k"


def likelihood_row(nll, spread, seeds, **settings):
    return {"model": "VAE", "latent": 50, "settings": {"recon": "bce", "binarize": True, **settings},
            "seeds": list(range(seeds)), "epochs": [30] * seeds, "nll_samples": 5000,
            "test_nll": nll, "test_nll_std": spread}


def test_the_benchmark_table_sets_each_run_beside_the_published_numbers():
    table = report.likelihood_table([
        likelihood_row(91.25, 0.125, 3, batch_size=128),
        likelihood_row(89.5, 0.0, 1, batch_size=128, iw_samples=5),
        dict(likelihood_row(None, None, 1), settings={}),  # the study's VAE: no likelihood, no row
    ])
    lines = table.splitlines()[2:]
    assert [line.split(" | ")[-2] for line in lines] == ["86.76", "85.54", "84.78", "89.78", "91.25 ± 0.12 (3 seeds)",
                                                        "89.50 (1 seed)"]
    assert [line.split(" | ")[-1] for line in lines[-2:]] == ["+4.49 |", "+2.74 |"], "distance to Burda et al.'s VAE"
    assert lines[-1].startswith(
        "| IWAE, K = 5 | this repository, `--recon bce --binarize --batch-size 128 --iw-samples 5`")
    assert "| 784-784-784-50, ReLU | 30 epochs, batch 128 | 5000 |" in lines[-1]
    assert "| static binarization | 784-400-40, ReLU | 500 epochs | 200 |" in lines[3], "pythae's is other data"
    assert report.likelihood_table([dict(likelihood_row(None, None, 1), settings={})]) == ""
