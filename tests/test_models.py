import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from models import VAE, Autoencoder, ModelConfig, build_model, kl_divergence, loss_terms, reparameterize


@pytest.mark.parametrize("kind", ["ae", "vae"])
@pytest.mark.parametrize("hidden", [(784, 784), (64,), (128, 32)])
def test_shapes_and_range(kind, hidden):
    model = build_model(ModelConfig(model=kind, latent=5, hidden=hidden))
    x = torch.rand(7, 784)
    x_hat, mu, logvar = model(x)
    assert x_hat.shape == (7, 784) and mu.shape == (7, 5)
    assert (logvar is None) == (kind == "ae")
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    assert model.decode(torch.randn(3, 5)).shape == (3, 784)


def test_study_architecture():
    """Encoder 784 -> 784 -> 784 -> latent (x2 for the VAE), decoder mirrored, ReLU between."""
    vae = VAE(ModelConfig(model="vae", latent=20))
    linear = lambda seq: [(m.in_features, m.out_features) for m in seq if isinstance(m, torch.nn.Linear)]
    assert linear(vae.encoder) == [(784, 784), (784, 784), (784, 40)]
    assert linear(vae.decoder) == [(20, 784), (784, 784), (784, 784)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in vae.encoder) == 2


def test_autoencoder_code_has_no_activation():
    torch.manual_seed(0)
    model = Autoencoder(ModelConfig(model="ae", latent=8, hidden=(32,)))
    code, _ = model.encode(torch.rand(256, 784))
    assert (code < 0).any(), "a ReLU on the code would make every entry >= 0"


def test_vae_eval_without_sampling_is_deterministic():
    model = VAE(ModelConfig(latent=4, hidden=(16,)))
    x = torch.rand(5, 784)
    assert torch.equal(model(x, sample=False)[0], model(x, sample=False)[0])
    assert not torch.equal(model(x, sample=True)[0], model(x, sample=True)[0])


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_divergence(mu, logvar), torch_kl(q, p).sum(1))
    assert torch.allclose(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_loss_reductions_by_hand():
    """Sum over the 784 pixels and latent dims of each image, mean over the batch."""
    torch.manual_seed(1)
    x, x_hat = torch.rand(3, 784), torch.rand(3, 784)
    mu, logvar = torch.randn(3, 2), torch.randn(3, 2)
    se = [sum((float(x_hat[i, j]) - float(x[i, j])) ** 2 for j in range(784)) for i in range(3)]
    kl = [sum(0.5 * (float(mu[i, d]) ** 2 + math.exp(float(logvar[i, d])) - 1 - float(logvar[i, d]))
              for d in range(2)) for i in range(3)]
    loss, squared_error, kl_t = loss_terms(x, x_hat, mu, logvar, "mse", beta=0.5)
    assert squared_error.tolist() == pytest.approx(se, rel=1e-5)
    assert kl_t.tolist() == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(sum(s + 0.5 * k for s, k in zip(se, kl)) / 3, rel=1e-5)
    bce = [sum(-(float(x[i, j]) * math.log(float(x_hat[i, j])) + (1 - float(x[i, j])) * math.log(1 - float(x_hat[i,
                                                                                                                 j])))
               for j in range(784)) for i in range(3)]
    loss_bce, _, _ = loss_terms(x, x_hat, mu, logvar, "bce", beta=1.0)
    assert float(loss_bce) == pytest.approx(sum(b + k for b, k in zip(bce, kl)) / 3, rel=1e-4)
    ae_loss, _, ae_kl = loss_terms(x, x_hat, mu, None)
    assert float(ae_loss) == pytest.approx(sum(se) / 3, rel=1e-5) and not ae_kl.any()


def test_gradients_flow_through_reparameterization():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent=3, hidden=(16,)))
    x = torch.rand(4, 784)
    mu, logvar = model.encode(x)
    mu.retain_grad(), logvar.retain_grad()
    z = reparameterize(mu, logvar)
    F.mse_loss(model.decode(z), x).backward()  # reconstruction alone: noise path must carry grads
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    model.zero_grad()
    loss, _, _ = loss_terms(x, *model(x))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_reparameterized_samples_have_mean_mu_and_variance_exp_logvar():
    """Over n draws, the sample mean is within 5 standard errors of mu (sigma / sqrt(n)) and the
    sample variance within 5 of sigma^2 (sigma^2 sqrt(2 / (n - 1)) for a Gaussian); a slip such as
    exp(logvar) for the standard deviation, or a missing 0.5, is tens of standard errors away."""
    torch.manual_seed(0)
    n = 200_000
    mu = torch.tensor([-1.5, 0.0, 2.0, 0.3])
    logvar = torch.tensor([-2.0, 0.7, 1.5, -0.5])  # none at 0, where exp(logvar) = exp(logvar / 2)
    z = reparameterize(mu.expand(n, 4), logvar.expand(n, 4))
    variance = logvar.exp()
    assert ((z.mean(0) - mu).abs() < 5 * (variance / n).sqrt()).all()
    assert ((z.var(0) - variance).abs() < 5 * variance * math.sqrt(2 / (n - 1))).all()


def test_config_round_trip():
    config = ModelConfig(model="ae", latent=7, hidden=(32, 16))
    assert ModelConfig(**config.to_dict()) == config
    with pytest.raises(ValueError):
        ModelConfig(model="gan")


def test_code_relu_is_the_studys_autoencoder():
    torch.manual_seed(0)
    study = build_model(ModelConfig(model="ae", latent=8, hidden=(32,), code_relu=True))
    linear = build_model(ModelConfig(model="ae", latent=8, hidden=(32,)))
    linear.load_state_dict(study.state_dict())  # same weights: a ReLU has none
    x = torch.rand(256, 784)
    code, _ = study.encode(x)
    assert (code >= 0).all() and (code == 0).any(), "a ReLU code is never negative"
    torch.testing.assert_close(code, linear.encode(x)[0].clamp(min=0))
    assert study(x)[0].shape == (256, 784)
    with pytest.raises(ValueError, match="--code-relu is for the Autoencoder: add --model ae"):
        ModelConfig(model="vae", code_relu=True)
