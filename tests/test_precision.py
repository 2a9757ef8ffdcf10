"""--precision bf16: the matmuls in bfloat16, everything else float32; a run of its own, resumed bit
for bit, measured in float32."""
import json

import pytest
import torch

import evaluate
import models
import train
from models import ModelConfig, build_model, loss_terms, matmul_precision
from vaestudy.checkpoints import load_checkpoint
from vaestudy.cli import UserError
from vaestudy.data import load_splits
from vaestudy.device import check_precision
from vaestudy.runs import TrainConfig
from vaestudy.step import make_optimizer, make_step

pytestmark = pytest.mark.slow  # every test here trains, or starts a cluster, a browser or jobs

TINY = ["--latent", "2", "--limit", "512", "--batch-size", "128", "--hidden", "32", "--device", "cpu"]
FOLDER = "hidden_32_batch-size_128_limit_512"


def run(mnist_dir, out, *extra):
    train.main(["--model", "vae", *TINY, "--data-dir", mnist_dir, "--out", str(out), *extra])


def test_the_matmuls_run_in_bf16_and_all_else_in_float32():
    """Every nn.Linear sees bfloat16 inputs and weights; what the model hands back, the loss, its
    gradients and the optimizer's state are float32."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent=2, hidden=(16,)))
    from torch.utils._python_dispatch import TorchDispatchMode
    seen = []

    class MatmulDtypes(TorchDispatchMode):  # sees each op as it runs, after autocast has cast its inputs
        def __torch_dispatch__(self, op, types, args=(), kwargs=None):
            if op.overloadpacket in (torch.ops.aten.addmm, torch.ops.aten.mm):
                seen.append({a.dtype for a in args if isinstance(a, torch.Tensor)})
            return op(*args, **(kwargs or {}))

    train_config = TrainConfig(precision="bf16")
    optimizer = make_optimizer(model, train_config)
    x = torch.rand(8, 784)
    with matmul_precision("bf16", "cpu"), MatmulDtypes():
        x_hat, mu, logvar = model(x)
    assert len(seen) == 4 and all(dtypes == {torch.bfloat16} for dtypes in seen), seen
    assert (x_hat.dtype, mu.dtype, logvar.dtype) == (torch.float32,) * 3
    assert loss_terms(x, x_hat, mu, logvar)[0].dtype == torch.float32
    stats = make_step(model, optimizer, train_config)(x)
    assert stats.dtype == torch.float32
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(t.dtype == torch.float32 for s in optimizer.state.values() for k, t in s.items() if k != "step")


def test_a_bf16_run_learns_keeps_float32_weights_and_a_folder_of_its_own(mnist_dir, tmp_path):
    run(mnist_dir, tmp_path, "--epochs", "3")
    run(mnist_dir, tmp_path, "--epochs", "3", "--precision", "bf16")
    fp32, bf16 = (torch.load(tmp_path / "VAE" / folder / "VAE_latent_2.pt", weights_only=True)
                  for folder in (FOLDER, FOLDER + "_precision_bf16"))
    assert bf16["train_config"]["precision"] == "bf16" and fp32["train_config"]["precision"] == "fp32"
    assert bf16["history"]["train_loss"][-1] < bf16["history"]["train_loss"][0], "it learns"
    assert {t.dtype for t in bf16["model"].values()} == {torch.float32}
    assert bf16["model"]["decoder.0.weight"].ne(fp32["model"]["decoder.0.weight"]).any(), "another run"
    # the same run in the two precisions ends close: bf16 rounds, it does not change what is learnt
    assert abs(bf16["history"]["val_mse"][-1] - fp32["history"]["val_mse"][-1]) < 0.05 * fp32["history"]["val_mse"][-1]
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    rows = {r["variant"]: r for r in json.loads((tmp_path / "results.json").read_text())["summary"]}
    assert set(rows) == {"hidden 32, batch-size 128, limit 512", "hidden 32, batch-size 128, limit 512, precision bf16"}
    assert all(r["seeds"] == [0] for r in rows.values()), "one row each, never averaged together"


def test_resume_is_exact_in_bf16(mnist_dir, tmp_path):
    run(mnist_dir, tmp_path / "a", "--epochs", "3", "--precision", "bf16")
    run(mnist_dir, tmp_path / "b", "--epochs", "1", "--precision", "bf16")
    run(mnist_dir, tmp_path / "b", "--epochs", "3", "--precision", "bf16", "--resume")
    a, b = (torch.load(tmp_path / out / "VAE" / (FOLDER + "_precision_bf16") / "VAE_latent_2.pt", weights_only=True)
            for out in ("a", "b"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(a["history"][k] == b["history"][k] for k in a["history"] if k != "seconds")


def test_evaluate_measures_a_bf16_run_in_float32(mnist_dir, tmp_path):
    run(mnist_dir, tmp_path, "--epochs", "2", "--precision", "bf16")
    evaluate.main(["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier"])
    (entry,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    model = load_checkpoint(entry["checkpoint"])[1]
    test_x = load_splits(mnist_dir, 0, "cpu")["test"][0]
    with torch.no_grad():
        in_float32 = ((model(test_x, sample=False)[0].double() - test_x.double()) ** 2).mean().item()
        with matmul_precision("bf16", "cpu"):
            in_bf16 = ((model(test_x, sample=False)[0].double() - test_x.double()) ** 2).mean().item()
    assert abs(in_bf16 - in_float32) > 1e-5 * in_float32, "the two precisions can be told apart"
    assert entry["test"]["mse"] == pytest.approx(in_float32, rel=1e-6)


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # Turing, before bf16 units
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(UserError, match=r"^--precision bf16: Tesla T4 has no native bfloat16; use --precision fp32$"):
        check_precision("bf16", torch.device("cuda"))
    check_precision("fp32", torch.device("cuda"))
    check_precision("bf16", torch.device("cpu"))


def test_an_unknown_precision_is_refused_where_configs_are_made():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; use fp32 or bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        models.matmul_precision("fp8", "cpu")


def test_evaluate_can_estimate_the_nll_in_bf16_and_says_so(mnist_dir, tmp_path):
    train.main(["--model", "vae", "--recon", "bce", "--binarize", *TINY, "--epochs", "1", "--data-dir", mnist_dir,
                "--out", str(tmp_path)])
    common = ["--out", str(tmp_path), "--data-dir", mnist_dir, "--device", "cpu", "--no-classifier", "--nll-samples",
              "50"]
    evaluate.main(common)
    fp32 = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    evaluate.main([*common, "--nll-precision", "bf16"])
    bf16 = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert "nll_precision" not in fp32 and bf16["nll_precision"] == "bf16", "measured anew, and labelled"
    assert bf16["test_nll"] != fp32["test_nll"] and abs(bf16["test_nll"] - fp32["test_nll"]) < 0.5
    assert bf16["test"] == fp32["test"], "only the NLL is estimated in bf16"
    assert "| 50 (bf16) |" in (tmp_path / "results.md").read_text()
