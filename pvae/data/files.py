"""Users' own data from files: ``.npy``, ``.npz``, ``.csv``, ``.pt`` and folders of images.

:func:`load_array` reads any of them into one tensor with a row per example, and says what
it read (:class:`ArrayInfo`: the shape of one example, its dtype, whether it is images and
their channels, height and width). Bytes stay bytes: 8-bit images come back as ``uint8``
(a quarter of float32's memory), to be scaled by the ``transform`` that training applies
per minibatch; numbers from a CSV file come back as float32. Every refusal says what is
wrong with the file and what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["ArrayInfo", "load_array"]

_FORMATS = ".npy, .npz, .csv, .pt or a folder of images"
_NUMERIC_KINDS = "buif"  # bool, unsigned, signed, floating
_MIN_IMAGE_SIDE = 8  # arrays with smaller sides are taken as tables, not pictures


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What :func:`load_array` read: one example's shape and dtype, and whether it is images.

    ``image_shape`` is ``(channels, height, width)`` for images (the tensor is then
    ``[N, C, H, W]``), else ``None``; ``columns`` are the names of a CSV file's columns.
    """

    source: str
    format: str
    num_examples: int
    example_shape: tuple[int, ...]
    dtype: torch.dtype
    image_shape: tuple[int, int, int] | None = None
    columns: tuple[str, ...] | None = None

    @property
    def is_image(self) -> bool:
        return self.image_shape is not None

    @property
    def num_features(self) -> int:
        """Values per example (the ``x_dim`` of a VAE on the flattened data)."""
        return math.prod(self.example_shape)

    def describe(self) -> str:
        """One line, e.g. ``120 images of 1x28x28 (uint8) from digits/``."""
        if self.is_image:
            c, h, w = self.image_shape
            what = f"images of {c}x{h}x{w}"
        else:
            what = f"examples of {'x'.join(map(str, self.example_shape))} values"
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.num_examples} {what} ({dtype}) from {self.source}"


def load_array(
    path: str | Path,
    *,
    key: str | None = None,
    columns: Sequence[str | int] | None = None,
    resize: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, ArrayInfo]:
    """Read a data file or an image folder into a tensor ``[N, ...]`` and describe it.

    * ``.npy``: the array; ``.npz``: its one array, or the one named ``key``;
    * ``.pt``: a tensor, or a dict holding one (or the one named ``key``);
    * ``.csv``: numeric columns (a first row that is not all numbers is the header), all of
      them or those named (or numbered from 0) in ``columns``; float32;
    * a folder: every image file in it and its subfolders, in sorted order, as ``uint8``
      ``[N, C, H, W]``: C = 1 when every image is grey, else 3 (RGB; alpha dropped); all
      of one size, or resized to ``resize = (height, width)``.

    Arrays of 2 or 3 dimensions per example, (H, W), (C, H, W) or (H, W, C) with C in
    {1, 3} and sides of at least 8, are taken as images; channels-last ones are permuted to
    channels-first, the layout of torch and of pvae's conv networks.

    Example::

        >>> x, info = load_array("features.csv")  # doctest: +SKIP
        >>> info.describe()  # doctest: +SKIP
        '500 examples of 12 values (float32) from features.csv'
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no file or folder at {path}: give a {_FORMATS}")
    kind = "folder" if path.is_dir() else path.suffix.lower().lstrip(".")
    readers = {"npy": _read_npy, "npz": _read_npz, "pt": _read_pt, "csv": _read_csv}
    if kind != "folder" and kind not in readers:
        what = path.suffix or "files without a suffix"
        raise ValueError(f"{path}: cannot read {what}: give a {_FORMATS}")
    _check_options(path, kind, key=key, columns=columns, resize=resize)
    if kind == "folder":
        return _read_image_folder(path, resize)
    if kind == "csv":
        return _read_csv(path, columns)
    if kind in ("npz", "pt"):
        return _array_result(path, kind, readers[kind](path, key))
    return _array_result(path, kind, _read_npy(path))


def _check_options(path: Path, kind: str, **options) -> None:
    applies = {"key": ("npz", "pt"), "columns": ("csv",), "resize": ("folder",)}
    for option, value in options.items():
        if value is not None and kind not in applies[option]:
            where = " and ".join(applies[option])
            raise ValueError(f"{path}: {option}= applies to {where} data only, not to {kind}")


def _array_result(path: Path, kind: str, array) -> tuple[torch.Tensor, ArrayInfo]:
    """A tensor from a numeric array with a row per example, images channels-first."""
    tensor = _as_tensor(path, array)
    if tensor.dim() < 2:
        shape = tuple(tensor.shape)
        raise ValueError(
            f"{path} holds an array of shape {shape}: need one row per example, "
            "[num_examples, ...]; for one value per example reshape it to (-1, 1)"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{path} holds no examples (shape {tuple(tensor.shape)})")
    tensor, image_shape = _image_layout(tensor)
    example_shape = tuple(tensor.shape[1:])
    info = ArrayInfo(str(path), kind, tensor.shape[0], example_shape, tensor.dtype, image_shape)
    return tensor, info


def _as_tensor(path: Path, array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        kind = "f" if array.is_floating_point() else "c" if array.is_complex() else "i"
        tensor = array
    else:
        kind, tensor = array.dtype.kind, None
    if kind not in _NUMERIC_KINDS:
        raise ValueError(
            f"{path} holds {array.dtype} values, not numbers: convert them to a numeric "
            "(integer or floating) array first"
        )
    return tensor if tensor is not None else torch.from_numpy(np.ascontiguousarray(array))


def _image_layout(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int] | None]:
    shape = tuple(x.shape[1:])
    if len(shape) == 2 and min(shape) >= _MIN_IMAGE_SIDE:
        return x.unsqueeze(1), (1, *shape)
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= _MIN_IMAGE_SIDE:
        return x, shape
    if len(shape) == 3 and shape[2] in (1, 3) and min(shape[:2]) >= _MIN_IMAGE_SIDE:
        x = x.permute(0, 3, 1, 2).contiguous()
        return x, tuple(x.shape[1:])
    return x, None


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as stream:
        if stream.read(6) != b"\x93NUMPY":  # else numpy tries the file as a pickle
            raise ValueError(f"{path} is not a .npy file (no NumPy header): save it with np.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:  # object arrays need pickle, which could run code
        raise ValueError(
            f"{path} holds Python objects, not a numeric array ({error}): save a numeric "
            "array (np.save(path, x.astype(np.float32)))"
        ) from None
    except OSError as error:
        raise ValueError(f"{path} is not a readable .npy file ({error})") from None


def _one_of(path: Path, named: dict, key: str | None, what: str):
    if key is not None:
        if key not in named:
            raise ValueError(f"{path} has no {what} {key!r}: it holds {', '.join(named)}")
        return named[key]
    if len(named) != 1:
        held = ", ".join(named) if named else "none"
        raise ValueError(f"{path} holds {len(named)} {what}s ({held}): choose one with key=")
    return next(iter(named.values()))


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error})") from None
    with archive:
        name = _one_of(path, {name: name for name in archive.files}, key, "array")
        try:
            return archive[name]
        except ValueError as error:  # an object array
            raise ValueError(
                f"{path}: array {name!r} holds Python objects, not numbers ({error}): save "
                "numeric arrays"
            ) from None


def _read_pt(path: Path, key: str | None) -> torch.Tensor:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, or not a torch file at all
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} is not a file of tensors torch can load safely ({first}): save a tensor "
            "or a dict of tensors with torch.save"
        ) from None
    if isinstance(loaded, torch.Tensor):
        if key is not None:
            raise ValueError(f"{path} holds one tensor, not a dict: drop key={key!r}")
        return loaded
    if isinstance(loaded, dict):
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        return _one_of(path, tensors, key, "tensor")
    raise ValueError(f"{path} holds a {type(loaded).__name__}: save a tensor or a dict of them")


def _read_csv(path: Path, columns: Sequence[str | int] | None) -> tuple[torch.Tensor, ArrayInfo]:
    with open(path, newline="", encoding="utf-8-sig") as stream:  # -sig: Excel's BOM
        rows = [row for row in csv.reader(stream) if row]
    if not rows:
        raise ValueError(f"{path} is empty: need one row per example of numeric columns")
    header = rows[0] if _has_header(rows) else None
    body = rows[1:] if header is not None else rows
    width = len(rows[0])
    names = [cell.strip() or str(i) for i, cell in enumerate(header or [""] * width)]
    for number, row in enumerate(body, start=2 if header else 1):
        if len(row) != width:
            raise ValueError(
                f"{path}, line {number}: {len(row)} values where the first line has {width}: "
                "every line needs the same number of columns"
            )
    if not body:
        raise ValueError(f"{path} has a header but no rows of data")
    chosen = _chosen_columns(path, names, columns, header is not None)
    values = np.empty((len(body), len(chosen)), dtype=np.float32)
    for j, column in enumerate(chosen):
        values[:, j] = _numeric_column(path, names[column], [row[column] for row in body])
    chosen_names = tuple(names[c] for c in chosen)
    info = ArrayInfo(str(path), "csv", len(body), (len(chosen),), torch.float32, None, chosen_names)
    return torch.from_numpy(values), info


def _has_header(rows: list[list[str]]) -> bool:
    """The first row names columns if it is all words, or if it has a word where the second
    row has a number (a text column, word over word, says nothing either way)."""
    first = [_is_number(cell) for cell in rows[0]]
    if not any(first):
        return True
    second = [_is_number(cell) for cell in rows[1]] if len(rows) > 1 else []
    return any(not a and b for a, b in zip(first, second, strict=False))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _chosen_columns(path: Path, names: list[str], columns, has_header: bool) -> list[int]:
    if columns is None:
        return list(range(len(names)))
    chosen = []
    for column in columns:
        if isinstance(column, int) and not isinstance(column, bool):
            if not 0 <= column < len(names):
                raise ValueError(f"{path} has columns 0..{len(names) - 1}, not {column}")
            chosen.append(column)
        elif has_header and column in names:
            chosen.append(names.index(column))
        else:
            offered = ", ".join(names) if has_header else f"numbers 0..{len(names) - 1}"
            raise ValueError(f"{path} has no column {column!r}: its columns are {offered}")
    return chosen


def _numeric_column(path: Path, name: str, cells: list[str]) -> np.ndarray:
    try:
        return np.asarray(cells, dtype=np.float64).astype(np.float32)
    except ValueError:
        pass
    row, bad = next((i, c) for i, c in enumerate(cells) if not _is_number(c))
    if not bad.strip():
        raise ValueError(
            f"{path}: column {name!r} has an empty cell (data row {row + 1}): fill in or drop "
            "missing values first"
        )
    raise ValueError(
        f"{path}: column {name!r} is not numeric (data row {row + 1}: {bad!r}): drop it, or "
        "choose the numeric columns with columns=[...]"
    )


def _read_image_folder(folder: Path, resize) -> tuple[torch.Tensor, ArrayInfo]:
    from pvae.data.image_folder import read_image_folder

    images = read_image_folder(folder, resize)
    shape = tuple(images.shape[1:])
    info = ArrayInfo(str(folder), "folder", images.shape[0], shape, images.dtype, shape)
    return images, info
