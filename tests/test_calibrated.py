"""The calibrated Gaussian decoder (--recon gaussian, gaussian-optimal), the BCE from logits, the
bits per dimension of dequantized bytes, and the study's own validation split: each against a
formula computed independently of the code under test."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from models import ModelConfig, build_model, gaussian_log_likelihood, log_likelihood, loss_terms
from vaestudy.checkpoints import load_run
from vaestudy.data import N_VAL, load_splits, split_indices
from vaestudy.metrics import (
    bits_per_dim,
    dequantized,
    dequantized_bits_per_dim,
    gaussian_elbo_bits,
    log_px,
    per_image_errors,
    refitted_sigma2,
)
from vaestudy.runs import TrainConfig, checkpoint_path, variant_label
from vaestudy.step import make_optimizer, make_step

TINY = ["--latent", "2", "--limit", "256", "--batch-size", "64", "--hidden", "16", "--device", "cpu"]


def test_the_gaussian_log_likelihood_is_torch_distributions_normal():
    torch.manual_seed(0)
    mean, x = torch.rand(5, 784, dtype=torch.float64), torch.rand(5, 784, dtype=torch.float64)
    for log_sigma2 in (-4.0, 0.0, math.log(0.5)):
        expected = torch.distributions.Normal(mean, math.exp(0.5 * log_sigma2)).log_prob(x).sum(-1)
        got = gaussian_log_likelihood((x - mean).pow(2).sum(-1), torch.tensor(log_sigma2, dtype=torch.float64), 784)
        assert torch.allclose(got, expected, rtol=0, atol=1e-9)
    # the study's squared error is the Gaussian of variance 1/2, as log_likelihood("mse") says
    logits = torch.logit(mean)
    study = torch.distributions.Normal(mean, 0.5 ** 0.5).log_prob(x).sum(-1)
    assert torch.allclose(log_likelihood(logits, x, "mse"), study, atol=1e-9)
    learned = torch.distributions.Normal(mean, 0.1).log_prob(x).sum(-1)
    assert torch.allclose(log_likelihood(logits, x, "gaussian", torch.tensor(math.log(0.01))), learned, atol=1e-9)


def tiny_vae(recon, latent=2):
    torch.manual_seed(0)
    return build_model(ModelConfig(model="vae", latent=latent, hidden=(16,)), recon)


def test_the_optimal_variance_is_the_batchs_mse_and_its_gradient_the_profile_likelihoods():
    """With sigma^2 set to the batch's per-pixel MSE and held constant, the network's gradient is that of
    the profile loss, where sigma^2 = MSE(theta) moves with the network: D/2 (1 + log 2 pi MSE) per image."""
    x = torch.rand(32, 784)
    model = tiny_vae("gaussian-optimal")
    train_config = TrainConfig(recon="gaussian-optimal")
    torch.manual_seed(1)
    logits, mu, logvar = model.forward_logits(x)
    mse = (torch.sigmoid(logits) - x).pow(2).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    profile = (0.5 * 784 * (1 + torch.log(2 * math.pi * mse)) + kl).mean()
    expected = torch.autograd.grad(profile, list(model.parameters()))

    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.0), train_config)
    grads = {}
    for p in model.parameters():
        p.register_hook(lambda g, p=p: grads.__setitem__(p, g.clone()))
    torch.manual_seed(1)
    loss = step(x)[0]
    assert math.isclose(float(model.log_sigma2), float(mse.detach().log()), rel_tol=1e-6)
    assert math.isclose(float(loss), float(profile.detach()), rel_tol=1e-6)
    for p, g in zip(model.parameters(), expected):
        assert torch.allclose(grads[p], g, rtol=1e-4, atol=1e-7)
    assert "log_sigma2" in model.state_dict() and not any(p is model.log_sigma2 for p in model.parameters())


def test_the_learned_variance_is_trained_without_weight_decay():
    model = tiny_vae("gaussian")
    optimizer = make_optimizer(model, TrainConfig(recon="gaussian"))
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model.log_sigma2)] == 0.0
    assert {decays[id(p)] for p in model.parameters() if p is not model.log_sigma2} == {TrainConfig.weight_decay}
    study = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    assert study.log_sigma2 is None and len(make_optimizer(study, TrainConfig()).param_groups) == 1
    # its gradient is the Gaussian's: d/d log s2 of SE / (2 s2) + D/2 log s2 = D/2 - SE / (2 s2)
    x = torch.rand(8, 784)
    with torch.no_grad():
        x_hat, mu, logvar = model(x)
    loss = loss_terms(x, x_hat, mu, logvar, "gaussian", log_sigma2=model.log_sigma2)[0]
    (grad,) = torch.autograd.grad(loss, model.log_sigma2)
    se = (x_hat - x).pow(2).sum(1).mean()
    assert math.isclose(float(grad), float(392 - se / 2 * torch.exp(-model.log_sigma2.detach())), rel_tol=1e-5)


@pytest.mark.parametrize("recon", ["gaussian", "gaussian-optimal"])
def test_a_calibrated_run_trains_saves_and_rebuilds_its_variance(recon, mnist_dir, tmp_path):
    train.main(["--model", "vae", "--recon", recon, *TINY, "--epochs", "2", "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    config, train_config = ModelConfig(model="vae", latent=2, hidden=(16,)), TrainConfig(recon=recon, limit=256,
                                                                                          batch_size=64)
    path = checkpoint_path(str(tmp_path), config, train_config)
    assert f"recon_{recon}_" in path
    run = load_run(path)
    saved = torch.load(path, weights_only=True)["model"]["log_sigma2"]
    assert torch.equal(run.model.log_sigma2.detach(), saved) and float(saved) != 0.0, "trained, and read back"
    assert variant_label(run.variant).startswith(f"hidden 16, recon {recon}")


def test_the_autoencoder_is_refused_a_learned_variance(capsys):
    with pytest.raises(SystemExit):
        train.get_args(["--model", "ae", "--recon", "gaussian"])
    assert "the Autoencoder has no KL: add --model vae" in capsys.readouterr().err


def test_bce_is_computed_from_the_logits():
    """Where the sigmoid rounds to 1 in float32, BCE of its output loses the pixel's log p (PyTorch
    clamps that log at -100); from the logits it is exact: softplus(30) = 30.000000000000092."""
    logits, x = torch.tensor([[30.0, -2.0]]), torch.tensor([[0.0, 1.0]])
    loss = loss_terms(x, torch.sigmoid(logits), None, None, "bce", logits=logits)[0]
    expected = math.log1p(math.exp(30.0)) + math.log1p(math.exp(2.0))
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    from_probabilities = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
    assert float(from_probabilities) > 100, "what the sigmoid's output gives instead"


def test_bits_per_dim_of_a_density_constant_on_each_byte_is_that_distributions_code_length():
    """A density on [0, 1) equal to 256 P(b) on the bin of byte b: its dequantized bits per dimension are
    exactly -log2 P(bytes) per pixel, whatever u is; a uniform density gives 8."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(256))
    byte_images = rng.choice(256, size=(4, 784), p=p)
    x = torch.tensor(byte_images / 255.0, dtype=torch.float32)
    y = dequantized(x, seed=3)
    bins = torch.floor(y.double() * 256).long()
    assert torch.equal(bins, torch.tensor(byte_images)), "each byte stays in its own bin"
    assert (y * 256 - bins).std() > 0.2, "moved by a uniform draw within it"
    log_density = torch.log(256 * torch.tensor(p)[bins]).sum(-1)
    expected = -np.log2(p[byte_images]).mean(-1)
    assert np.allclose(bits_per_dim(log_density, 784).numpy(), expected, rtol=0, atol=1e-9)
    assert float(bits_per_dim(torch.zeros(()), 784)) == pytest.approx(8.0, abs=1e-12)


def exact_log_px(model, x, recon):
    """log of the integral of p(x|z) N(z; 0, 1) dz over a one-dimensional z, by the rectangle rule."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        logits = model.decoder(z)
        log_joint = torch.stack([log_likelihood(logits, image, recon, model.log_sigma2) for image in x], 1)
    log_joint = log_joint - 0.5 * (z ** 2 + math.log(2 * math.pi))
    return torch.logsumexp(log_joint, dim=0) + math.log(z[1, 0] - z[0, 0])


def test_the_estimate_of_a_gaussian_decoders_log_density_is_the_integral(mnist_dir):
    x = dequantized(load_splits(mnist_dir, 0, "cpu")["test"][0][:4], seed=0).double()
    model = tiny_vae("gaussian-optimal", latent=1).double().eval()
    with torch.no_grad():
        model.log_sigma2.fill_(math.log(0.3))  # wide enough that q(z|x) of an untrained encoder is a fair proposal
    exact = exact_log_px(model, x, "gaussian-optimal")
    estimate = log_px(model, x, k=5000, recon="gaussian-optimal", batch_size=2, chunk=1000)
    assert (estimate - exact).abs().max() < 0.05, (estimate, exact)


@pytest.mark.slow
def test_the_script_measures_bits_per_dim_and_refuses_other_decoders(mnist_dir, tmp_path, capsys):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location("bits_per_dim", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bits_per_dim.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    train.main(["--model", "vae", "--recon", "gaussian-optimal", *TINY, "--epochs", "1", "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    path = checkpoint_path(str(tmp_path), ModelConfig(model="vae", latent=2, hidden=(16,)),
                           TrainConfig(recon="gaussian-optimal", limit=256, batch_size=64))
    out = tmp_path / "bpd.json"
    script.main([path, "--samples", "5", "--images", "20", "--data-dir", mnist_dir, "--device", "cpu",
                 "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["images"] == 20 and row["samples"] == 5 and row["bits_per_dim"] <= row["bits_per_dim_k1"] + 0.05
    assert 0 < row["bits_per_dim"] < 20 and row["decoder_sigma"] == pytest.approx(
        math.exp(0.5 * float(load_run(path).model.log_sigma2)))
    train.main(["--model", "vae", *TINY, "--epochs", "1", "--data-dir", mnist_dir, "--out", str(tmp_path)])
    fixed = checkpoint_path(str(tmp_path), ModelConfig(model="vae", latent=2, hidden=(16,)),
                            TrainConfig(limit=256, batch_size=64))
    script.main([fixed, "--samples", "5", "--images", "200", "--data-dir", mnist_dir, "--device", "cpu",
                 "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["decoder_sigma"] == pytest.approx(0.5 ** 0.5) and row["refitted_sigma"] < 0.6, "fitted to its error"
    assert row["bits_per_dim_refitted_k1"] < row["bits_per_dim_k1"], "sigma² = 1/2 is not this network's best"
    assert row["elbo_floor"] <= row["bits_per_dim_refitted_k1"], "no scalar variance goes below the floor"
    assert row["elbo_floor"] == pytest.approx(8 + 0.5 * math.log2(2 * math.pi * math.e * row["test_mse_sampled"]))
    train.main(["--model", "vae", "--recon", "bce", *TINY, "--epochs", "1", "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    bce = checkpoint_path(str(tmp_path), ModelConfig(model="vae", latent=2, hidden=(16,)),
                          TrainConfig(recon="bce", limit=256, batch_size=64))
    with pytest.raises(Exception, match="has no Gaussian decoder"):
        script.main([bce, "--data-dir", mnist_dir, "--device", "cpu"])


@pytest.mark.slow
def test_the_elbo_in_bits_is_its_formula_from_mse_and_kl_and_the_refitted_variance_is_its_best(mnist_dir):
    """For a scalar-variance Gaussian decoder the k = 1 estimate of the dequantized bits per dimension is
    8 + [1/2 ln(2 pi sigma²) + MSE / (2 sigma²)] / ln 2 + KL / (784 ln 2), MSE at sampled z, up to the
    draws' noise; over sigma² it is least near the refitted variance, the network's own sampled MSE."""
    x = load_splits(mnist_dir, 0, "cpu")["test"][0][:2000]
    model = tiny_vae("gaussian-optimal").eval()
    y = dequantized(x, seed=0)
    with torch.no_grad():
        model.log_sigma2.fill_(math.log(0.05))
        squared_error, kl = per_image_errors(model, y, sample=True, seed=1)
        measured = float(dequantized_bits_per_dim(model, x, 1, "gaussian-optimal", seed=0))
    formula = gaussian_elbo_bits(float(squared_error.mean()) / 784, float(kl.mean()), 0.05, 784)
    assert measured == pytest.approx(formula, abs=0.01)
    refitted = float(refitted_sigma2(model, x, seed=0))
    assert refitted == pytest.approx(float(squared_error.mean()) / 784, rel=0.05)
    with torch.no_grad():
        bits = {factor: float(dequantized_bits_per_dim(model, x, 1, "gaussian-optimal", 0, sigma2=refitted * factor))
                for factor in (0.7, 1.0, 1.4)}
    assert bits[1.0] < bits[0.7] and bits[1.0] < bits[1.4]
    assert float(model.log_sigma2) == pytest.approx(math.log(0.05)), "the model keeps its own variance"
    assert gaussian_elbo_bits(0.01, 0.0, 0.01, 784) == pytest.approx(8 + 0.5 * math.log2(2 * math.pi * math.e * 0.01))


def test_the_study_split_is_numpys_permutation_with_seed_0():
    """The study's code splits with sklearn's train_test_split(range(60000), test_size=0.1,
    random_state=0), which draws numpy's RandomState(0).permutation(60000) and takes its first 6,000
    as the held-out part."""
    train_idx, val_idx = split_indices(60000, "study")
    perm = np.random.RandomState(0).permutation(60000)
    assert val_idx.tolist() == perm[:N_VAL].tolist() and train_idx.tolist() == perm[N_VAL:].tolist()
    assert set(val_idx.tolist()) != set(split_indices(60000, 0)[1].tolist()), "not this repository's split"


def test_the_study_split_is_a_variant_of_its_own(mnist_dir, tmp_path):
    args = train.get_args(["--model", "vae", "--split-seed", "study"])
    assert args.split_seed == "study"
    config = ModelConfig(model="vae", latent=20)
    assert checkpoint_path("o", config, TrainConfig(split_seed="study")) == "o/VAE/split-seed_study/VAE_latent_20.pt"
    with pytest.raises(SystemExit):
        train.get_args(["--split-seed", "studdy"])
