"""Users' own data from files: ``.npy``, ``.npz``, ``.csv``, ``.pt`` and folders of images.

:func:`load_array` reads any of them into one tensor with a row per example, and says what
it read (:class:`ArrayInfo`: the shape of one example, its dtype, whether it is images and
their channels, height and width). Bytes stay bytes: 8-bit images come back as ``uint8``
(a quarter of float32's memory), to be scaled by the ``transform`` that training applies
per minibatch; numbers from a CSV file come back as float32. NaN and infinite values are
refused at the file's own line and column (a CSV's) or index (an array's).

A damaged or foreign file (empty, truncated, binary, a spreadsheet renamed ``.csv``, a
pickle) gets one ``ValueError`` line that names the file, what is wrong and what to do; code
is never unpickled (``allow_pickle=False``, ``torch.load(weights_only=True)``). A CSV file
that is not UTF-8 is read as Windows-1252 (or Latin-1): numbers are ASCII in every one of
them, so only a header's or text cell's letters depend on the guess.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import io
import math
import os
import warnings
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
    if kind != "folder" and kind not in _UNREADABLE:
        what = path.suffix or "files without a suffix"
        raise ValueError(f"{path}: cannot read {what}: give a {_FORMATS}")
    _check_options(path, kind, key=key, columns=columns, resize=resize)
    if kind == "folder":
        return _read_image_folder(path, resize)
    with _classified(path, kind):
        _check_signature(path, kind)
        if kind == "csv":
            return _read_csv(path, columns)
        read = {"npy": _read_npy, "npz": _read_npz, "pt": _read_pt}[kind]
        return _array_result(path, kind, read(path, key))


def _check_options(path: Path, kind: str, **options) -> None:
    applies = {"key": ("npz", "pt"), "columns": ("csv",), "resize": ("folder",)}
    for option, value in options.items():
        if value is not None and kind not in applies[option]:
            where = " and ".join(applies[option])
            raise ValueError(f"{path}: {option}= applies to {where} data only, not to {kind}")


class _Refused(ValueError):
    """A refusal of ours: one line that names the file, what is wrong and what to do."""


@contextlib.contextmanager
def _classified(path: Path, kind: str):
    """The one place where what a damaged file makes numpy, zipfile, csv or torch raise
    (garbage bytes surface as almost any exception type) becomes one line naming the file."""
    try:
        yield
    except _Refused:
        raise
    except OSError as error:
        raise _Refused(f"cannot read {path}: {error.strerror or _first_line(error)}") from None
    except Exception as error:
        what, fix = _UNREADABLE[kind]
        reason = _first_line(error)
        if kind == "pt" and "weights only" in reason.lower():  # torch's unpickler said no
            what = "holds Python objects other than tensors, which pvae never unpickles"
            raise _Refused(f"{path} {what} (they could run code): {fix}") from None
        raise _Refused(f"{path} {what} (damaged or truncated? {reason}): {fix}") from None


def _first_line(error: BaseException, limit: int = 160) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_signature(path: Path, kind: str) -> None:
    """Refuse empty files, and files whose first bytes say they are something else (a
    spreadsheet renamed .csv, a pickle named .npy, ...), before any reader guesses."""
    with open(path, "rb") as stream:
        head = stream.read(16)
    if not head:
        raise _Refused(f"{path} is empty (0 bytes): {_UNREADABLE[kind][1]}")
    found = next((what for magic, what in _SIGNATURES.items() if head.startswith(magic)), None)
    if kind == "csv" and found is not None:
        raise _Refused(f"{path} is {found}, not CSV text: {_CSV_ADVICE.get(found, _CSV_TEXT)}")
    if kind in _EXPECTED and not head.startswith(_EXPECTED[kind]):
        what, fix = _UNREADABLE[kind]
        if found == _ZIP and kind == "npy":
            fix = "an archive of np.savez is read as .npz: rename it"
        elif found == _NPY and kind == "npz":
            fix = "a file of np.save is read as .npy: rename it"
        elif found == _PICKLE:
            fix = f"pvae never unpickles data (it could run code); {fix}"
        header = {"npy": "no NumPy header", "npz": "no zip header"}.get(kind, "unknown format")
        raise _Refused(f"{path} {what} ({header}; {found or 'unknown contents'}): {fix}")


_ZIP = "a zip archive (an .xlsx or .ods spreadsheet, an .npz or .pt file)"
_NPY = "a NumPy .npy file"
_PICKLE = "a Python pickle"
_OFFICE = "an Office document (an .xls spreadsheet?)"
# File signatures (first bytes) of what people give instead of a data file.
_SIGNATURES = {
    b"PK\x03\x04": _ZIP,
    b"PK\x05\x06": _ZIP,
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": _OFFICE,
    b"\x93NUMPY": _NPY,
    **{b"\x80" + bytes([protocol]): _PICKLE for protocol in range(2, 6)},
    b"\x1f\x8b": "gzip-compressed",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
}
# torch.save writes a zip archive (a pickle, protocol 2, before torch 1.6).
_EXPECTED = {"npy": b"\x93NUMPY", "npz": (b"PK\x03\x04", b"PK\x05\x06"), "pt": (b"PK", b"\x80")}
_CSV_TEXT = "give a text file of comma-separated numbers, one row per example"
_CSV_ADVICE = {
    _ZIP: "export the sheet as CSV (File > Save As > CSV) and give that file",
    _OFFICE: "export the sheet as CSV (File > Save As > CSV) and give that file",
    _NPY: "it is NumPy's format: name it .npy",
    "gzip-compressed": "decompress it first (gunzip)",
}
_UNREADABLE = {
    "npy": ("is not a readable .npy file", "save the array again with np.save"),
    "npz": ("is not a readable .npz archive", "save the arrays again with np.savez"),
    "pt": (
        "is not a file of tensors torch can load safely",
        "save a tensor or a dict of tensors with torch.save",
    ),
    "csv": ("is not a readable CSV file", _CSV_TEXT + " (UTF-8)"),
}


def _array_result(path: Path, kind: str, array) -> tuple[torch.Tensor, ArrayInfo]:
    """A tensor from a numeric array with a row per example, images channels-first."""
    tensor = _as_tensor(path, array)
    shape = tuple(tensor.shape)
    if tensor.dim() < 2:
        raise _Refused(
            f"{path} holds an array of shape {shape}: need one row per example, "
            "[num_examples, ...]; for one value per example reshape it to (-1, 1)"
        )
    if shape[0] == 0:
        raise _Refused(f"{path} holds no examples (shape {shape})")
    if math.prod(shape[1:]) == 0:
        raise _Refused(f"{path} holds examples without values (shape {shape}): need [N, ...]")
    _check_finite(path, tensor)  # before the layout changes, so the index is the file's
    tensor, image_shape = _image_layout(tensor)
    example_shape = tuple(tensor.shape[1:])
    info = ArrayInfo(str(path), kind, tensor.shape[0], example_shape, tensor.dtype, image_shape)
    return tensor, info


_TENSOR_INTEGERS = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_tensor(path: Path, array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        if not (array.is_floating_point() or array.dtype in _TENSOR_INTEGERS):
            dtype = str(array.dtype).removeprefix("torch.")
            raise _Refused(f"{path} holds {dtype} values, not real numbers: {_NUMERIC}")
        if array.layout != torch.strided:
            raise _Refused(f"{path} holds a {array.layout} tensor: save x.to_dense()")
        return array
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise _Refused(f"{path} holds {array.dtype} values, not numbers: {_NUMERIC}")
    if not array.dtype.isnative:  # a big-endian file: the same numbers in this machine's order
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError:  # float128, say: torch has no such type
        raise _Refused(
            f"{path} holds {array.dtype} values, which torch has no type for: "
            "convert them to float32 or float64"
        ) from None


_NUMERIC = "convert them to a numeric (integer or floating) array first"


def _check_finite(path: Path, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = int(bad.flatten().to(torch.uint8).argmax())
        index = tuple(int(i) for i in np.unravel_index(first, tuple(x.shape)))
        raise _Refused(
            f"{path} holds {int(bad.sum())} NaN or infinite values, the first at index "
            f"{index} (row {index[0]}, counting from 0): drop or impute them first"
        )


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


def _read_npy(path: Path, key: None = None) -> np.ndarray:  # key: for npz and pt only
    with open(path, "rb") as stream:
        _check_npy_header(stream, os.fstat(stream.fileno()).st_size, str(path))
        stream.seek(0)
        return np.lib.format.read_array(stream, allow_pickle=False)


def _check_npy_header(stream, size: int, what: str) -> None:
    """Refuse from its header alone a .npy of Python objects (reading it would unpickle,
    which can run code) or one shorter than its header promises (a truncated copy)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise _Refused(
            f"{what} holds Python objects (dtype {dtype}), which pvae never unpickles (that "
            "could run code): save a numeric array (np.save(path, x.astype(np.float32)))"
        )
    needed, held = math.prod(shape) * dtype.itemsize, size - stream.tell()
    if held < needed:
        raise _Refused(
            f"{what} is truncated: its header promises {shape} values of {dtype} ({needed} "
            f"bytes), it holds {held} bytes: copy or save it again"
        )


def _one_of(path: Path, named: dict, key: str | None, what: str):
    if key is not None:
        if key not in named:
            raise _Refused(f"{path} has no {what} {key!r}: it holds {', '.join(named)}")
        return key, named[key]
    if len(named) != 1:
        held = ", ".join(named)
        raise _Refused(f"{path} holds {len(named)} {what}s ({held}): choose one with key=")
    return next(iter(named.items()))


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        members = {
            info.filename.removesuffix(".npy"): info
            for info in archive.infolist()
            if info.filename.endswith(".npy")
        }
        if not members:
            raise _Refused(
                f"{path} is a zip archive without NumPy arrays in it: export a spreadsheet "
                "(.xlsx, .ods) as CSV, or save arrays with np.savez"
            )
        name, member = _one_of(path, members, key, "array")
        with archive.open(member) as stream:
            _check_npy_header(stream, member.file_size, f"{path}: array {name!r}")
        with archive.open(member) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)


def _read_pt(path: Path, key: str | None) -> torch.Tensor:
    # weights_only: tensors and plain containers, never code; _classified reports a refusal,
    # without torch's notes on the pickle's protocol.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, torch.Tensor):
        if key is not None:
            raise _Refused(f"{path} holds one tensor, not a dict: drop key={key!r}")
        return loaded
    if isinstance(loaded, dict):
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise _Refused(f"{path} holds a dict without tensors: {_UNREADABLE['pt'][1]}")
        return _one_of(path, tensors, key, "tensor")[1]
    raise _Refused(f"{path} holds a {type(loaded).__name__}: save a tensor or a dict of them")


def _read_csv(path: Path, columns: Sequence[str | int] | None) -> tuple[torch.Tensor, ArrayInfo]:
    rows, lines = _csv_rows(path)
    if not rows:
        raise _Refused(f"{path} holds no rows: need one row per example of numeric columns")
    header = rows[0] if _has_header(rows) else None
    body, body_lines = (rows[1:], lines[1:]) if header is not None else (rows, lines)
    width = len(rows[0])
    names = [cell.strip() or str(i) for i, cell in enumerate(header or [""] * width)]
    for row, line in zip(body, body_lines, strict=True):
        if len(row) != width:
            raise _Refused(
                f"{path}, line {line}: {len(row)} values where line {lines[0]} has {width}: "
                "every row needs the same number of columns (quote values with commas)"
            )
    if not body:
        raise _Refused(f"{path} has a header but no rows of data")
    chosen = _chosen_columns(path, names, columns, header is not None)
    values = np.empty((len(body), len(chosen)), dtype=np.float32)
    for j, column in enumerate(chosen):
        cells = [row[column] for row in body]
        values[:, j] = _numeric_column(path, names[column], cells, body_lines)
    chosen_names = tuple(names[c] for c in chosen)
    info = ArrayInfo(str(path), "csv", len(body), (len(chosen),), torch.float32, None, chosen_names)
    return torch.from_numpy(values), info


def _csv_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """The rows that hold something, and the line each starts on (1-based, as editors
    count: blank lines and quoted line breaks count)."""
    reader = csv.reader(io.StringIO(_csv_text(path), newline=""))
    rows, lines, end = [], [], 0
    for row in reader:
        if any(cell.strip() for cell in row):  # blank lines, and a spreadsheet's ",,,"
            rows.append(row)
            lines.append(end + 1)
        end = reader.line_num
    return rows, lines


def _csv_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM dropped), UTF-16 with a BOM (Excel's "Unicode text"),
    else Windows-1252 or Latin-1, which every byte decodes. Numbers are ASCII in all of
    them, so the encoding only changes how a header or a text cell is shown."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    if b"\x00" in raw:
        raise _Refused(
            f"{path} is a binary file (it holds NUL bytes), not CSV text: {_CSV_TEXT} "
            "(UTF-16 text without a byte-order mark: save it as UTF-8)"
        )
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


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
                raise _Refused(f"{path} has columns 0..{len(names) - 1}, not {column}")
            chosen.append(column)
        elif has_header and column in names:
            chosen.append(names.index(column))
        else:
            shown = ", ".join(n if n.isprintable() else repr(n) for n in names)
            offered = shown if has_header else f"numbers 0..{len(names) - 1}"
            raise _Refused(f"{path} has no column {column!r}: its columns are {offered}")
    return chosen


def _numeric_column(path: Path, name: str, cells: list[str], lines: list[int]) -> np.ndarray:
    """float32 values of one column, or an error at the file's line and the column's name."""
    bad = next(((i, c) for i, c in enumerate(cells) if not _is_number(c)), None)
    if bad is not None:
        where = f"{path}, line {lines[bad[0]]}, column {name!r}"
        if not bad[1].strip():
            raise _Refused(f"{where} is empty: fill in or drop missing values first")
        raise _Refused(
            f"{where}: {bad[1]!r} is not a number: drop the column, or choose the numeric "
            "columns with columns=[...]"
        )
    numbers = np.array([float(cell) for cell in cells], dtype=np.float64)
    with np.errstate(over="ignore"):  # too large for float32: refused below, by its line
        values = numbers.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        why = "is too large for float32" if math.isfinite(numbers[i]) else "is not a finite number"
        raise _Refused(
            f"{path}, line {lines[i]}, column {name!r}: {cells[i].strip()!r} {why}: drop or "
            "impute missing (NaN) and infinite values first"
        )
    return values


def _read_image_folder(folder: Path, resize) -> tuple[torch.Tensor, ArrayInfo]:
    from pvae.data.image_folder import read_image_folder

    images = read_image_folder(folder, resize)
    shape = tuple(images.shape[1:])
    info = ArrayInfo(str(folder), "folder", images.shape[0], shape, images.dtype, shape)
    return images, info
