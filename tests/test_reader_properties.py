"""Property-based tests of the readers of users' files: data files (load_array) and config
files (read_config_file, Config.from_dict).

Whatever the bytes, arrays, rows or YAML values, a reader returns a valid result or raises
one ValueError of one line that names the file, never a raw UnicodeDecodeError, KeyError,
zipfile.BadZipFile, EOFError or pickle error, and never runs code from the file.
"""

import io
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pvae.config import Config, read_config_file
from pvae.data import load_array

# PVAE_EXAMPLES=2000 hunts longer than the suite's 100 examples per property.
PROPERTY = settings(
    max_examples=int(os.environ.get("PVAE_EXAMPLES", 100)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(read, path: Path):
    """``read(path)``'s result, or None after checking its ValueError is one line naming
    the file; any other exception fails the test as it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on odd pickles are not errors
        try:
            return read(path)
        except ValueError as error:
            message = str(error)
            assert len(message.splitlines()) == 1, f"not one line: {message!r}"
            assert path.name in message, f"does not name the file: {message!r}"
            return None


# One folder for the module's files (pytest's tmp_path is per test, not per example): each
# example overwrites its file, and the folder goes when the tests end.
FOLDER = tempfile.TemporaryDirectory(prefix="pvae-properties-")


def written(name: str, content: bytes | str) -> Path:
    path = Path(FOLDER.name) / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def check_data_result(result) -> None:
    if result is None:
        return
    tensor, info = result
    assert tensor.dim() >= 2 and tensor.shape[0] == info.num_examples >= 1
    assert info.num_features >= 1
    if tensor.is_floating_point():
        assert bool(torch.isfinite(tensor).all())


# --- arbitrary bytes, as every format ---------------------------------------------------

# Arbitrary bytes, and bytes that begin as the real formats do (so the readers get past the
# first check): a NumPy header, a zip archive, a pickle.
PREFIXES = [b"", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"\x80\x02", b"a,b\n", b"\xef\xbb\xbf"]
garbage = st.builds(
    lambda prefix, tail: prefix + tail, st.sampled_from(PREFIXES), st.binary(max_size=300)
)


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".npz", ".pt"])
@PROPERTY
@given(content=garbage)
def test_arbitrary_bytes_are_read_or_refused_in_one_line(suffix, content):
    check_data_result(outcome(load_array, written("data" + suffix, content)))


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@PROPERTY
@given(
    fraction=st.floats(0, 1, exclude_max=True),
    compressed=st.booleans(),
    suffix=st.sampled_from([".npy", ".npz", ".pt"]),
)
def test_truncated_files_are_refused_in_one_line(fraction, compressed, suffix):
    x = np.arange(60, dtype=np.float32).reshape(6, 10)
    stream = io.BytesIO()
    if suffix == ".npy":
        np.save(stream, x)
    elif suffix == ".npz":
        (np.savez_compressed if compressed else np.savez)(stream, x=x)
    else:
        torch.save(torch.from_numpy(x), stream)
    result = outcome(load_array, written("cut" + suffix, cut(stream.getvalue(), fraction)))
    assert result is None, "a truncated file must not read as data"


# --- arbitrary numpy arrays ---------------------------------------------------------------

dtypes = st.one_of(
    hnp.scalar_dtypes(),  # bool, integers, floats, complex, datetime64, timedelta64
    hnp.byte_string_dtypes(),
    hnp.unicode_string_dtypes(),
    st.just(np.dtype(">f8")),
    st.just(np.dtype([("a", "<i4"), ("b", "<f4")])),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
arrays = st.one_of(
    dtypes.flatmap(lambda dtype: hnp.arrays(dtype, shapes)),
    # Object arrays hold plain values here: the reader must refuse them without unpickling.
    hnp.arrays(object, shapes, elements=st.none() | st.integers() | st.text(max_size=3)),
)


@PROPERTY
@given(array=arrays, archive=st.booleans())
def test_arbitrary_numpy_arrays_are_read_or_refused_in_one_line(array, archive):
    stream = io.BytesIO()
    if archive:
        np.savez(stream, x=array)
    else:
        np.save(stream, array, allow_pickle=True)
    result = outcome(load_array, written("x.npz" if archive else "x.npy", stream.getvalue()))
    check_data_result(result)
    if result is not None:
        assert array.dtype.kind in "buif" and np.isfinite(array.astype(np.float64)).all()
        assert result[0].shape[0] == array.shape[0] and result[0].numel() == array.size


@PROPERTY
@given(
    tensor=st.sampled_from(
        [torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool]
    ).flatmap(
        lambda dtype: hnp.array_shapes(min_dims=0, max_dims=3, min_side=0).map(
            lambda shape: torch.zeros(shape, dtype=dtype)
        )
    ),
    container=st.sampled_from(["tensor", "dict", "list", "nested"]),
    fill=st.sampled_from([0.0, 1.0, math.nan, math.inf]),
)
def test_arbitrary_pt_contents_are_read_or_refused_in_one_line(tensor, container, fill):
    if tensor.is_floating_point():
        tensor = tensor.fill_(fill)
    content = {"tensor": tensor, "dict": {"x": tensor, "n": 3}, "list": [tensor]}.get(
        container, {"a": {"b": tensor}}
    )
    stream = io.BytesIO()
    torch.save(content, stream)
    check_data_result(outcome(load_array, written("x.pt", stream.getvalue())))


# --- arbitrary CSV text -------------------------------------------------------------------

cells = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "NaN", "-inf", "1e39", "1_0", "NA", "x", "é", '"a,b"']),
    st.text(max_size=5),
)
rows = st.lists(st.lists(cells, min_size=0, max_size=4), max_size=6)


@PROPERTY
@given(
    header=st.none() | st.lists(st.text(max_size=6), min_size=1, max_size=4),
    rows=rows,
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]),
    line_end=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_arbitrary_csv_text_is_read_or_refused_in_one_line(header, rows, encoding, line_end):
    lines = ([",".join(header)] if header is not None else []) + [",".join(r) for r in rows]
    text = line_end.join(lines)
    path = written("t.csv", text.encode(encoding, errors="replace"))
    result = outcome(load_array, path)
    check_data_result(result)
    if result is not None:
        assert result[0].dtype == torch.float32 and result[1].num_features == len(result[1].columns)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x08\x00\x00\x00\x08\x08\x00\x00\x00\x00"


@PROPERTY
@given(
    content=st.builds(lambda p, t: p + t, st.sampled_from([b"", PNG]), st.binary(max_size=200)),
    suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif"]),
)
def test_arbitrary_bytes_as_an_image_file_are_read_or_refused_in_one_line(content, suffix):
    folder = Path(FOLDER.name) / "images"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / ("a" + suffix)).write_bytes(content)
    check_data_result(outcome(load_array, folder))


def test_spreadsheets_and_binary_files_named_csv_say_what_they_are(tmp_path):
    xlsx = tmp_path / "sheet.csv"
    with zipfile.ZipFile(xlsx, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(ValueError, match=r"sheet.csv is a zip archive .*export the sheet as CSV"):
        load_array(xlsx)
    (tmp_path / "old.csv").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))
    with pytest.raises(ValueError, match=r"old.csv is an Office document .*export the sheet"):
        load_array(tmp_path / "old.csv")
    (tmp_path / "b.csv").write_bytes(b"1,2\n\x00\x01")
    with pytest.raises(ValueError, match=r"b.csv is a binary file \(it holds NUL bytes\)"):
        load_array(tmp_path / "b.csv")


# --- config files ---------------------------------------------------------------------------

yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [field for field in Config.__dataclass_fields__]
keys = st.sampled_from(FIELDS) | st.text(max_size=10)
# Values that fit some field's type, so that the checks past the type checks run too.
plausible = st.sampled_from(
    [0, 1, 2, -1, 0.5, 1e-3, 1e9, True, False, None, "elbo", "dreg", "vamp", "mog", "gaussian",
     "bernoulli", "conv", "iaf", "cosine", [8], [8, 4], [0], [], {}, {"num_components": 3},
     {"num_flows": 0}, {"x": 1}, "cuda:7", "mnist", "nope"]
)  # fmt: skip


@PROPERTY
@given(values=st.dictionaries(keys, plausible | yaml_values, max_size=6))
def test_arbitrary_settings_give_a_config_or_one_line_naming_the_source(values):
    try:
        config = Config.from_dict(values, source="config file run.yaml")
    except ValueError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and "run.yaml" in message, message
    else:
        assert Config.from_dict(config.to_dict()) == config


@PROPERTY
@given(document=yaml_values | st.dictionaries(keys, plausible | yaml_values, max_size=6))
def test_arbitrary_yaml_files_are_read_or_refused_in_one_line(document):
    path = written("run.yaml", yaml.safe_dump(document, allow_unicode=True))

    def read(path):
        return Config.from_dict(read_config_file(path), source=f"config file {path}")

    outcome(read, path)


@pytest.mark.parametrize("prefix", [b"", b"z_dim: 3\n", b"\xff\xfe"])
@PROPERTY
@given(content=st.binary(max_size=200))
def test_arbitrary_bytes_as_a_config_file_are_read_or_refused_in_one_line(prefix, content):
    outcome(read_config_file, written("run.yaml", prefix + content))
