"""The measurements that go beyond the study: active units, the classifier, the Frechet distance."""
import pytest
import torch

from models import ModelConfig, build_model
from vaestudy import classifier, figures, metrics
from vaestudy.checkpoints import Run


def test_active_units_on_hand_made_means():
    torch.manual_seed(0)
    n = 5000
    means = torch.stack([torch.randn(n) * 1.0,  # variance 1: active
                         torch.randn(n) * 0.2,  # variance 0.04: active
                         torch.randn(n) * 0.05,  # variance 0.0025: inactive
                         torch.full((n,), 3.0)], dim=1)  # constant, however far from 0: inactive
    assert metrics.active_units(means) == 2
    assert metrics.active_units(means, threshold=0.001) == 3


def test_dead_units_on_a_hand_made_code_matrix():
    codes = torch.ones(1000, 5)
    codes[:, 0] = 0  # always zero: dead
    codes[:995, 1] = 0  # zero for 99.5% of images: dead
    codes[:985, 2] = 0  # zero for 98.5%: alive, if barely
    codes[:, 3] = 1e-30  # tiny but never exactly zero: alive
    assert metrics.dead_units(codes) == 2
    assert metrics.dead_units(codes, fraction=0.98) == 3
    assert metrics.dead_units(torch.randn(100, 4)) == 0


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    sd_a, sd_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    got = classifier.frechet_from_moments(mu_a.double(), torch.diag(sd_a ** 2).double(),
                                          mu_b.double(), torch.diag(sd_b ** 2).double())
    assert got == pytest.approx(expected.item(), rel=1e-9)


def test_frechet_distance_general_covariances():
    """tr((A^1/2 B A^1/2)^1/2) equals the sum of square roots of the eigenvalues of A B."""
    g = torch.Generator().manual_seed(0)
    m_a, m_b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov_a, cov_b = m_a @ m_a.T + 0.1 * torch.eye(6, dtype=torch.float64), m_b @ m_b.T
    mu_a, mu_b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    cross = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    expected = ((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    assert classifier.frechet_from_moments(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected.item(), rel=1e-7)


def test_frechet_distance_of_identical_and_shifted_feature_sets():
    feats = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1))
    assert abs(classifier.frechet_distance(feats, feats)) < 1e-6
    assert classifier.frechet_distance(feats, feats + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)


@pytest.mark.slow
def test_classifier_training_improves_accuracy(mnist_dir):
    from vaestudy.data import load_splits
    splits = load_splits(mnist_dir, 0, "cpu", limit=2000)
    torch.manual_seed(0)
    untrained = classifier.accuracy(classifier.DigitCNN(), *splits["val"])
    trained = classifier.train_classifier(*splits["train"], epochs=2)
    assert untrained < 0.3 and classifier.accuracy(trained, *splits["val"]) > 0.7


def test_cached_classifier_is_reused_and_checked(mnist_dir, tmp_path):
    from vaestudy.cli import UserError
    from vaestudy.data import load_splits
    splits = load_splits(mnist_dir, 0, "cpu", limit=300)
    path = tmp_path / "classifier.pt"
    _, acc = classifier.load_or_train(str(path), splits, 0, epochs=1)
    saved = path.read_bytes()
    _, again = classifier.load_or_train(str(path), splits, 0)
    assert again == acc and path.read_bytes() == saved
    with pytest.raises(UserError, match="split seed 0, not 3"):
        classifier.load_or_train(str(path), splits, 3)
    path.write_bytes(saved[:100])
    with pytest.raises(UserError, match="classifier.pt is not a readable classifier"):
        classifier.load_or_train(str(path), splits, 0)
    path.write_bytes(saved)
    for key in ("split_seed", "test_accuracy"):
        ckpt = torch.load(path, weights_only=True)
        del ckpt[key]
        torch.save(ckpt, path)
        with pytest.raises(UserError, match="classifier.pt is not a readable classifier.*delete it"):
            classifier.load_or_train(str(path), splits, 0)
        path.write_bytes(saved)


def test_autoencoder_prior_is_fitted_to_its_codes():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="ae", latent=3, hidden=(16,)))
    x = torch.rand(4000, 784)
    codes = metrics.encode_means(model, x)
    mean, scale = metrics.latent_prior(model, x)
    torch.testing.assert_close(mean, codes.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scale @ scale.T, torch.cov(codes.T), atol=1e-5, rtol=1e-3)
    vae = build_model(ModelConfig(model="vae", latent=3, hidden=(16,)))
    mean, scale = metrics.latent_prior(vae, x)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(scale, torch.eye(3))


@pytest.mark.parametrize("latents", [[2], [2, 5]])
def test_latent_space_figure(tmp_path, latents):
    from PIL import Image
    torch.manual_seed(0)
    runs = [Run(None, {}, build_model(ModelConfig(latent=n, hidden=(16,)))) for n in latents]
    x, labels = torch.rand(300, 784), torch.arange(300) % 10
    figures.plot_latent_space("VAE", runs, x, labels, str(tmp_path / "latent_space.jpg"))
    with Image.open(tmp_path / "latent_space.jpg") as image:
        assert image.format == "JPEG" and image.size == (420 * len(latents), 450)


def test_a_classifier_file_carrying_code_is_refused_not_run(mnist_dir, tmp_path):
    import os

    from vaestudy.cli import UserError
    from vaestudy.data import load_splits
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "classifier.pt"
    torch.save({"format": classifier.CLASSIFIER_FORMAT, "model": Payload(), "split_seed": 0, "test_accuracy": 1.0},
               path)
    with pytest.raises(UserError, match="classifier.pt is not a readable classifier"):
        classifier.load_or_train(str(path), load_splits(mnist_dir, 0, "cpu", limit=100), 0)
    assert not marker.exists(), "the file's code was run"


def test_kl_active_units_and_the_units_near_either_threshold():
    """Five latent dimensions made by hand: posterior means of known variance and known log-variances,
    so that each count follows from the definitions (independently of the helpers)."""
    import math

    from vaestudy.metrics import kl_active_units, units_near_thresholds

    class Encoder(torch.nn.Module):  # x -> (mu, logvar) with columns set by hand
        def __init__(self, mu, logvar):
            super().__init__()
            self.mu, self.logvar = mu, logvar

        def encode(self, x):
            return self.mu, self.logvar

    n = 10000
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)[:, None].double()
    sd = torch.tensor([0.0, 0.08, 0.15, 0.3, 1.0]).double()  # variance of mu: 0, 0.0064, 0.0225, 0.09, 1
    mu = signs * sd  # mean 0, variance about sd^2
    logvar = torch.zeros(n, 5).double()
    logvar[:, 0] = math.log(0.98)  # KL of dim 0 alone: 0.5 (0.98 - 1 - log 0.98), 1e-4 nats
    model = Encoder(mu, logvar)
    splits = {"test": (torch.zeros(n, 1), None)}
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(0)
    assert kl_active_units(model, splits, 0) == int((kl > 0.01).sum()) == 3  # dims 2, 3, 4 (KL 0.011, 0.045, 0.5)
    # near a threshold: dim 1 by its variance (0.0064; KL 0.0032), dim 2 by its KL (0.011; variance 0.0225)
    assert units_near_thresholds(model, splits, 0) == 2
