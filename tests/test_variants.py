"""A run's identity is its whole configuration: variants never overwrite or mix with one another."""
import json

import pytest
import torch

import evaluate
import train
import visualize
from models import ModelConfig, build_model
from vaestudy.checkpoints import FORMAT_1
from vaestudy.cli import UserError
from vaestudy.files import versions
from vaestudy.runs import (
    TrainConfig,
    checkpoint_path,
    planned_runs,
    train_config,
    variant,
    variant_flags,
    variant_folder,
    variant_label,
)

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs


def test_default_names_are_the_studys_and_every_other_setting_names_a_folder():
    default = TrainConfig()
    assert checkpoint_path("output", ModelConfig(model="vae", latent=20), default) == "output/VAE/VAE_latent_20.pt"
    assert checkpoint_path("output", ModelConfig(model="ae", latent=5), TrainConfig(seed=1)) == \
        "output/Autoencoder/Autoencoder_latent_5_seed_1.pt"
    vae = ModelConfig(model="vae", latent=20)
    assert checkpoint_path("output", vae, TrainConfig(beta=0.5)) == "output/VAE/beta_0.5/VAE_latent_20.pt"
    wide = ModelConfig(model="vae", latent=20, hidden=(512, 256))
    assert checkpoint_path("o", wide, TrainConfig(recon="bce", lr=1e-4, seed=2)) == \
        "o/VAE/hidden_512-256_recon_bce_lr_0.0001/VAE_latent_20_seed_2.pt"
    relu = ModelConfig(model="ae", latent=2, code_relu=True)
    assert variant_label(variant(relu, default)) == "code-relu"
    assert variant_label(variant(wide, TrainConfig(beta=2, limit=100))) == "hidden 512 256, beta 2.0, limit 100"
    # exact floats: two nearby settings never share a folder
    assert variant_folder("o", "vae", variant(vae, TrainConfig(beta=0.1))) != \
        variant_folder("o", "vae", variant(vae, TrainConfig(beta=0.1000001)))


def test_a_variants_flags_train_that_variant_again():
    """Tables name a variant by its train.py flags (variant_flags): read back from results.json, as
    evaluate does, they must parse to the very same run."""
    config = ModelConfig(model="vae", latent=50, hidden=(512, 256))
    settings = TrainConfig(recon="bce", lr=3e-4, binarize=True, iw_samples=5, batch_size=128)
    read_back = json.loads(json.dumps(dict(variant(config, settings))))
    flags = variant_flags(read_back)
    assert flags == "--hidden 512 256 --recon bce --batch-size 128 --lr 0.0003 --binarize --iw-samples 5"
    assert planned_runs(train.get_args(["--model", "vae", "--latent", "50", *flags.split()])) == [(config, settings)]
    assert variant_flags({}) == ""


def test_beta_names_no_autoencoder_variant():
    settings = {**vars(TrainConfig()), "beta": 4.0}
    assert train_config(ModelConfig(model="ae", latent=2), settings) == TrainConfig()
    assert train_config(ModelConfig(model="vae", latent=2), settings) == TrainConfig(beta=4.0)


def tiny(mnist_dir, out, *extra):
    """The issue's commands: VAE, latent 2, one epoch on 2048 images."""
    train.main(["--model", "vae", "--latent", "2", "--epochs", "1", "--limit", "2048", "--data-dir", mnist_dir,
                "--out", str(out), "--device", "cpu", *extra])


def test_variants_keep_their_own_files_rows_and_figures(mnist_dir, tmp_path):
    tiny(mnist_dir, tmp_path)
    first = tmp_path / "VAE" / "limit_2048" / "VAE_latent_2.pt"
    before = first.read_bytes()
    tiny(mnist_dir, tmp_path, "--beta", "4")
    tiny(mnist_dir, tmp_path, "--hidden", "64", "--seed", "1")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pt")) == [
        "VAE/beta_4.0_limit_2048/VAE_latent_2.pt", "VAE/hidden_64_limit_2048/VAE_latent_2_seed_1.pt",
        "VAE/limit_2048/VAE_latent_2.pt"]
    assert first.read_bytes() == before, "running variants never touches another run's file"

    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["variant"], tuple(r["seeds"])) for r in results["summary"]}
    assert rows == {("limit 2048", (0,)), ("beta 4.0, limit 2048", (0,)), ("hidden 64, limit 2048", (1,))}
    assert set(results["selection"]) == {"VAE (limit 2048)", "VAE (beta 4.0, limit 2048)",
                                         "VAE (hidden 64, limit 2048)"}
    table = (tmp_path / "results.md").read_text()
    assert "| model | variant | latent | seeds |" in table and "| VAE | beta 4.0, limit 2048 | 2 | 1 |" in table

    visualize.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu"])
    folders = ["limit_2048", "beta_4.0_limit_2048", "hidden_64_limit_2048"]
    curves = [(tmp_path / "VAE" / f / "val_MSE.jpg").read_bytes() for f in folders]
    assert len(set(curves)) == 3, "each variant draws its own curves, in its own folder"
    assert not list((tmp_path / "VAE").glob("val_MSE.jpg")), "no variant took the study's file names"


def main_checkpoint(path, latent=2, **overrides):
    """A finished checkpoint as the previous main's train.py wrote it (its config had no code_relu,
    its args no code_relu flag), with random weights of the study's architecture."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=latent))
    config = {"model": "vae", "latent": latent, "hidden": [784, 784], "input_dim": 784}
    args = {"model": "vae", "latent": latent, "epochs": 1, "batch_size": 1024, "lr": 1e-3, "weight_decay": 1e-2,
            "beta": 1.0, "recon": "mse", "hidden": [784, 784], "seed": 0, "split_seed": 0, "data_dir": "data",
            "out": "output", "device": "auto", "resume": False, "limit": None, "compile": False, **overrides}
    history = {k: [0.05] for k in ("train_loss", "train_mse", "train_kl", "val_mse", "val_kl", "seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT_1, "model": model.state_dict(), "optimizer": {}, "config": config,
                "args": args, "epoch": 1, "history": history, "split_seed": 0, "rng": {}, "versions": versions()}, path)
    return path


def test_a_checkpoint_of_the_previous_main_lands_in_the_default_row(mnist_dir, tmp_path):
    old = main_checkpoint(tmp_path / "VAE" / "VAE_latent_2.pt")
    tiny(mnist_dir, tmp_path, "--beta", "4")
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["variant"], r["seeds"]) for r in results["summary"]] == [("default", [0]), ("beta 4.0, limit 2048", [0])]
    assert results["selection"]["VAE"]["selected"] == 2
    visualize.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu"])
    default = tmp_path / "VAE" / "comparison_1.jpg"
    beta = tmp_path / "VAE" / "beta_4.0_limit_2048" / "comparison_1.jpg"
    assert default.exists() and beta.exists() and default.read_bytes() != beta.read_bytes()
    assert (tmp_path / "VAE" / "class_results_MSE.jpg").exists()
    assert old.exists()


def test_another_run_at_a_runs_path_is_refused_not_overwritten(mnist_dir, tmp_path):
    # the previous main wrote a beta-4 run to the study's path; the study's run must not replace it
    old = main_checkpoint(tmp_path / "VAE" / "VAE_latent_2.pt", beta=4.0)
    before = old.read_bytes()
    for extra in ([], ["--resume"]):
        with pytest.raises(UserError,
                           match=r"VAE_latent_2.pt holds another run \(VAE \(beta 4.0\) latent 2 seed 0\); move it"):
            train.main(["--model", "vae", "--latent", "2", "--epochs", "1", "--data-dir", mnist_dir,
                        "--out", str(tmp_path), "--device", "cpu", *extra])
    assert old.read_bytes() == before
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    (row,) = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert row["variant"] == "beta 4.0", "its row is read from its contents, not its name"


def test_two_files_of_one_run_are_counted_once(mnist_dir, tmp_path, capsys):
    canonical = main_checkpoint(tmp_path / "VAE" / "beta_4.0" / "VAE_latent_2.pt", beta=4.0)
    main_checkpoint(tmp_path / "VAE" / "VAE_latent_2.pt", beta=4.0)  # a copy under a pre-variant name
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [e["checkpoint"] for e in results["runs"]] == [str(canonical)]
    assert "the same run as" in capsys.readouterr().err


def test_train_py_defaults_are_the_studys_configuration():
    """TrainConfig's fields are all train.py flags with the same defaults: one definition of the study."""
    args = train.get_args(["--model", "vae"])
    assert train_config(ModelConfig(model="vae", latent=2), vars(args) | {"seed": 0}) == TrainConfig()
    assert ModelConfig(model="vae", latent=2, hidden=tuple(args.hidden), code_relu=args.code_relu) == \
        ModelConfig(model="vae", latent=2)


def test_the_defaults_are_the_studys_values():
    """The study's configuration written out, not read back from the code that defines it."""
    args = train.get_args([])
    assert (args.model, args.latent, args.epochs, args.batch_size, args.lr, args.weight_decay, args.beta, args.recon,
            args.hidden, args.code_relu, args.seed, args.split_seed, args.limit) == \
        ("both", [2, 5, 10, 20, 50, 100], 50, 1024, 1e-3, 0.01, 1.0, "mse", [784, 784], False, [0], 0, None)
    assert TrainConfig() == TrainConfig(beta=1.0, recon="mse", batch_size=1024, lr=1e-3, weight_decay=0.01, limit=None,
                                        split_seed=0, seed=0)
    assert ModelConfig() == ModelConfig(model="vae", latent=20, hidden=(784, 784), input_dim=784, code_relu=False)
