import getpass
import os
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vaestudy import data  # noqa: E402


def require(reason):
    """A real part a test needs is missing: skip with the reason, except in CI (CI=true), where
    the part is installed by .ci/run and its absence is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs it, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir():
    """The real, verified MNIST under the repository's data/ (fetched once if missing)."""
    path = os.path.join(ROOT, "data")
    data.ensure_dataset(path)
    return path


@pytest.fixture(scope="session")
def fashion_dir(mnist_dir):
    """The real, verified Fashion-MNIST beside MNIST, from Debian's package dataset-fashion-mnist
    (which .ci/run installs); without it, and offline, the tests that need it skip."""
    from vaestudy.cli import UserError
    from vaestudy.datasets import FASHION_MNIST
    try:
        data.ensure_dataset(mnist_dir, FASHION_MNIST)
    except UserError as e:
        require(f"no Fashion-MNIST: {e} (apt-get install dataset-fashion-mnist)")
    return mnist_dir


# every device PyTorch sees here: the CPU, and CUDA where there is a GPU, so that pytest on a GPU
# machine runs the same pipeline tests on it
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_conf(tmp_path_factory):
    """A real one-node SLURM cluster (scripts/local_slurm.sh) for the session: its SLURM_CONF. It
    runs in a folder and on ports of its own, so a cluster the machine has is left alone."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_DIR": str(folder), "SLURM_CTLD_PORT": str(free_port()),
           "SLURM_SLURMD_PORT": str(free_port())}
    script = os.path.join(ROOT, "scripts", "local_slurm.sh")
    try:
        started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        started = None
    if started is None or started.returncode != 0:
        reason = "timed out" if started is None else (started.stderr.strip().splitlines() or ["no message"])[-1]
        require(f"no local SLURM cluster: {reason}")
    conf = started.stdout.strip().split("=", 1)[1]
    try:
        yield conf
    finally:  # jobs first, so that none outlives its cluster
        subprocess.run(["scancel", "--user", getpass.getuser()], env={**env, "SLURM_CONF": conf}, capture_output=True)
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True)
