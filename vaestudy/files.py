"""Files written whole or not at all: checkpoints, results and figures; and the versions they record."""
import os
import tempfile
from importlib.metadata import version

from vaestudy.cli import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write, mode="wb"):
    """Write via a temporary file in the same folder and rename it, so no reader ever sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror}")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise UserError(f"could not write {path}: {e.strerror or e}; the previous file is untouched")
        raise


def versions():
    import torch  # loaded already wherever a file is saved; here, so that this module loads without it

    # torchvision's from its metadata: importing it costs seconds, and only its version is needed
    return {"torch": str(torch.__version__), "torchvision": version("torchvision")}


def save_figure(fig, path, **kwargs):
    atomic_write(path, lambda f: fig.savefig(f, format="jpg", **kwargs))
