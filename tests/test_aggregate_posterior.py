"""The VAE's KL split into I(x; z) and KL(q(z) || p(z)), and its samples from a Gaussian fitted to the
aggregate posterior q(z), against independent formulas."""
import math

import pytest
import torch

from models import ModelConfig, build_model
from vaestudy import metrics


def test_the_kl_split_of_a_linear_gaussian_encoder_is_its_closed_form():
    """x ~ N(0, I) in 2 dimensions and q(z|x) = N(x, 1/2 I): I(x; z) = 2 x 1/2 log(1 + 1 / (1/2)) = log 3,
    q(z) = N(0, 3/2 I), so KL(q(z) || N(0, I)) = 2 x 1/2 (3/2 - 1 - log 3/2). 4,000 images stand for the
    continuous x; one draw of z per image leaves a Monte Carlo error of about 0.02 nats."""
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mutual, marginal = metrics.kl_split(x, torch.full_like(x, math.log(0.5)), torch.Generator().manual_seed(1))
    assert float(mutual) == pytest.approx(math.log(3), abs=0.05)
    assert float(marginal) == pytest.approx(0.5 - math.log(1.5), abs=0.015)


def test_the_kl_split_adds_up_to_the_mean_kl_and_is_exact_per_draw():
    """Three images in 2 dimensions, by torch.distributions: log q(z_i) = log of the mean of the three
    posteriors' densities at z_i, from the same draws as kl_split's (its generator, its seed)."""
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, -1.0], [-2.0, 0.5], [-0.5, -0.5]], dtype=torch.float64)
    mutual, marginal = metrics.kl_split(mu, logvar, torch.Generator().manual_seed(3))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    posteriors = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    own = posteriors.log_prob(z).sum(1)
    every = torch.stack([torch.distributions.Normal(mu[j], (0.5 * logvar[j]).exp()).log_prob(z).sum(1)
                         for j in range(3)], dim=1)
    aggregate = torch.logsumexp(every, dim=1) - math.log(3)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert float(mutual) == pytest.approx(float((own - aggregate).mean()), rel=1e-12)
    assert float(marginal) == pytest.approx(float((aggregate - prior).mean()), rel=1e-12)
    assert float(mutual + marginal) == pytest.approx(float((own - prior).mean()), rel=1e-12)


def test_the_mutual_information_of_n_images_is_at_most_log_n():
    """Posteriors far narrower than the distance between codes: each z names its image, I = log N."""
    mu = torch.randn(500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mutual, _ = metrics.kl_split(mu, torch.full_like(mu, -20.0), torch.Generator().manual_seed(0))
    assert float(mutual) == pytest.approx(math.log(500), abs=1e-6)
    mutual, marginal = metrics.kl_split(torch.zeros_like(mu), torch.zeros_like(mu), torch.Generator())
    assert abs(float(mutual)) < 1e-12 and abs(float(marginal)) < 1e-12, "every posterior the prior: both 0"


def test_the_aggregate_posterior_gaussian_has_the_codes_total_variance():
    """The fitted Gaussian's covariance is Cov(mu) + mean(sigma^2) (total variance), checked against
    draws z ~ q(z|x) of every image: 50 draws each."""
    torch.manual_seed(0)
    vae = build_model(ModelConfig(model="vae", latent=3, hidden=(16,)))
    x = torch.rand(2000, 784)
    mean, scale = metrics.latent_prior(vae, x, aggregate=True)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        draws = (mu + (0.5 * logvar).exp() * torch.randn(50, *mu.shape)).reshape(-1, 3).double()
    torch.testing.assert_close(mean.double(), draws.mean(0), atol=3e-3, rtol=0)
    torch.testing.assert_close((scale @ scale.T).double(), torch.cov(draws.T), atol=3e-3, rtol=2e-2)
    prior_mean, prior_scale = metrics.latent_prior(vae, x)
    assert torch.equal(prior_mean, torch.zeros(3)) and torch.equal(prior_scale, torch.eye(3)), "the prior by default"
