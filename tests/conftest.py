import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402


@pytest.fixture(scope="session")
def mnist_dir():
    """The real, verified MNIST under the repository's data/ (fetched once if missing)."""
    path = os.path.join(ROOT, "data")
    data.ensure_mnist(path)
    return path
