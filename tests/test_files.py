"""load_array: every format with tiny data written here, and every refusal's message."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pvae.data import load_array, read_image_folder


def one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


# --- .npy and .npz ---------------------------------------------------------------------


def test_npy_table_comes_back_as_it_is(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    tensor, info = load_array(tmp_path / "x.npy")
    assert torch.equal(tensor, torch.from_numpy(x))
    assert (info.num_examples, info.example_shape, info.dtype) == (5, (3,), torch.float32)
    assert not info.is_image and info.num_features == 3
    assert info.describe() == f"5 examples of 3 values (float32) from {tmp_path / 'x.npy'}"


def test_npy_images_stay_uint8_and_channels_last_become_channels_first(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (4, 10, 12), dtype=np.uint8)
    colour = rng.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    np.save(tmp_path / "colour.npy", colour)
    tensor, info = load_array(tmp_path / "grey.npy")
    assert tensor.dtype == torch.uint8 and torch.equal(tensor[:, 0], torch.from_numpy(grey))
    assert info.image_shape == (1, 10, 12) and info.example_shape == (1, 10, 12)
    tensor, info = load_array(tmp_path / "colour.npy")
    assert info.image_shape == (3, 10, 12)
    assert torch.equal(tensor, torch.from_numpy(colour.transpose(0, 3, 1, 2).copy()))


def test_small_two_dimensional_examples_are_tables_not_images(tmp_path):
    np.save(tmp_path / "windows.npy", np.zeros((6, 20, 3), dtype=np.float32))  # time x sensor
    _, info = load_array(tmp_path / "windows.npy")
    assert not info.is_image and info.example_shape == (20, 3)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.arange(5.0), r"shape \(5,\): need one row per example.*reshape it to \(-1, 1\)"),
        (np.zeros((0, 3)), "holds no examples"),
        (np.array([["a", "b"]]), "holds <U1 values, not numbers"),
        (np.array([[1 + 2j]]), "not numbers"),
    ],
)
def test_npy_arrays_that_are_not_examples_of_numbers_are_refused(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    one_line_error(lambda: load_array(tmp_path / "bad.npy"), match)


def test_npy_object_arrays_and_foreign_files_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    one_line_error(lambda: load_array(tmp_path / "objects.npy"), "holds Python objects")
    (tmp_path / "text.npy").write_text("not numpy")
    one_line_error(
        lambda: load_array(tmp_path / "text.npy"), "not a readable .npy file .no NumPy header"
    )


def test_npz_gives_its_one_array_or_the_named_one(tmp_path):
    x, y = np.ones((3, 2)), np.zeros((4, 5), dtype=np.int64)
    np.savez(tmp_path / "one.npz", features=x)
    np.savez(tmp_path / "two.npz", x=x, y=y)
    assert torch.equal(load_array(tmp_path / "one.npz")[0], torch.from_numpy(x))
    tensor, info = load_array(tmp_path / "two.npz", key="y")
    assert torch.equal(tensor, torch.from_numpy(y)) and info.dtype == torch.int64
    one_line_error(lambda: load_array(tmp_path / "two.npz"), r"holds 2 arrays \(x, y\).*key=")
    one_line_error(lambda: load_array(tmp_path / "two.npz", key="z"), "no array 'z'.*x, y")
    np.savez(tmp_path / "objects.npz", a=np.array([None], dtype=object))
    one_line_error(lambda: load_array(tmp_path / "objects.npz"), "'a' holds Python objects")
    (tmp_path / "bad.npz").write_bytes(b"PK not really")
    one_line_error(
        lambda: load_array(tmp_path / "bad.npz"), "not a readable .npz archive .no zip header"
    )


# --- .csv ------------------------------------------------------------------------------


def write(path, text):
    path.write_text(text)
    return path


def test_csv_with_a_header_gives_float32_columns_and_their_names(tmp_path):
    path = write(tmp_path / "t.csv", "age,height\n31,1.80\n-2.5,1e3\n")
    tensor, info = load_array(path)
    assert torch.equal(tensor, torch.tensor([[31.0, 1.80], [-2.5, 1000.0]]))
    assert info.columns == ("age", "height") and info.dtype == torch.float32
    assert info.format == "csv" and info.example_shape == (2,) and not info.is_image


def test_csv_without_a_header_is_all_data(tmp_path):
    tensor, info = load_array(write(tmp_path / "t.csv", "1,2,3\n4,5,6\n"))
    assert tensor.tolist() == [[1, 2, 3], [4, 5, 6]] and info.columns == ("0", "1", "2")


def test_csv_columns_are_chosen_by_name_or_number(tmp_path):
    path = write(tmp_path / "t.csv", "id,city,x,y\n1,Paris,0.5,2\n2,Rome,1.5,3\n")
    tensor, info = load_array(path, columns=["x", "y"])
    assert tensor.tolist() == [[0.5, 2.0], [1.5, 3.0]] and info.columns == ("x", "y")
    assert load_array(path, columns=[3, 0])[0].tolist() == [[2.0, 1.0], [3.0, 2.0]]


@pytest.mark.parametrize(
    "text, columns, match",
    [
        (
            "id,city\n1,Paris\n",
            None,
            r"t.csv, line 2, column 'city': 'Paris' is not a number.*columns=\[\.\.\.\]",
        ),  # fmt: skip
        ("1.0,Paris\n2.0,Rome\n", None, r"line 1, column '1': 'Paris' is not a number"),
        ("a,b\n1,2\n3\n", None, "line 3: 1 values where line 1 has 2"),
        ("a,b\n1,\n", None, r"line 2, column 'b' is empty: fill in or drop missing values"),
        ("a,b\n", None, "has a header but no rows"),
        ("", None, r"is empty \(0 bytes\)"),
        ("a,b\n1,2\n", ["c"], "no column 'c': its columns are a, b"),
        ("1,2\n3,4\n", ["a"], r"no column 'a': its columns are numbers 0\.\.1"),
        ("1,2\n3,4\n", [5], r"has columns 0\.\.1, not 5"),
    ],
)
def test_csv_files_that_are_not_numeric_tables_are_refused(tmp_path, text, columns, match):
    path = write(tmp_path / "t.csv", text)
    one_line_error(lambda: load_array(path, columns=columns), match)


def test_csv_files_in_other_encodings_are_read_their_numbers_are_ascii(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("température,poids €\n1.5,2\n".encode("cp1252"))
    tensor, info = load_array(latin)
    assert tensor.tolist() == [[1.5, 2.0]] and info.columns == ("température", "poids €")
    (tmp_path / "utf16.csv").write_bytes("a,b\r\n1,2\r\n".encode("utf-16"))  # with a BOM
    assert load_array(tmp_path / "utf16.csv")[0].tolist() == [[1.0, 2.0]]
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfa,b\n1,2\n")  # Excel's "CSV UTF-8"
    assert load_array(tmp_path / "bom.csv")[1].columns == ("a", "b")


def test_csv_errors_name_the_files_own_line_and_column(tmp_path):
    # blank lines, a spreadsheet's empty rows and a quoted line break all count as lines
    path = write(tmp_path / "t.csv", 'a,b\n\n1,2\n,\n"x\ny",3\n4,5e39\n')
    one_line_error(lambda: load_array(path, columns=["b"]), "t.csv, line 7, column 'b': "
                   "'5e39' is too large for float32")  # fmt: skip
    one_line_error(lambda: load_array(path), r"t.csv, line 5, column 'a': 'x\\ny' is not a")
    tensor, _ = load_array(write(tmp_path / "ok.csv", "a,b\n1,2\n,\n3,4\n"))
    assert tensor.tolist() == [[1, 2], [3, 4]]  # the row of empty cells is a blank line


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(8), "an Office document .*export the sheet"),
        (b"\x93NUMPY\x01\x00", "is a NumPy .npy file, not CSV text: .*name it .npy"),
        (b"\x1f\x8b\x08\x00", "is gzip-compressed, not CSV text: decompress it"),
        (b"a,b\n1,2\x00\n", r"binary file \(it holds NUL bytes\)"),
    ],
)
def test_binary_files_named_csv_say_what_they_are(tmp_path, content, match):
    (tmp_path / "t.csv").write_bytes(content)
    one_line_error(lambda: load_array(tmp_path / "t.csv"), match)


def test_damaged_and_misnamed_array_files_are_refused(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-8])
    one_line_error(lambda: load_array(tmp_path / "cut.npy"), r"cut.npy is truncated: .*\(4, 3\)")
    np.savez(tmp_path / "a.npz", x=x)
    (tmp_path / "a.npy").write_bytes((tmp_path / "a.npz").read_bytes())
    one_line_error(lambda: load_array(tmp_path / "a.npy"), "np.savez is read as .npz: rename")
    (tmp_path / "b.npz").write_bytes(data)
    one_line_error(lambda: load_array(tmp_path / "b.npz"), "np.save is read as .npy: rename")
    (tmp_path / "p.npy").write_bytes(pickle.dumps(x))
    one_line_error(lambda: load_array(tmp_path / "p.npy"), "Python pickle.*never unpickles")
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(lambda: load_array(tmp_path / "empty.pt"), r"empty.pt is empty \(0 bytes\)")


def test_big_endian_arrays_are_read_and_arrays_without_values_or_torch_types_refused(tmp_path):
    np.save(tmp_path / "be.npy", np.arange(6, dtype=">f4").reshape(3, 2))
    tensor, info = load_array(tmp_path / "be.npy")
    assert tensor.tolist() == [[0, 1], [2, 3], [4, 5]] and info.dtype == torch.float32
    np.save(tmp_path / "none.npy", np.zeros((3, 0)))
    one_line_error(lambda: load_array(tmp_path / "none.npy"), "examples without values")
    np.save(tmp_path / "long.npy", np.zeros((3, 2), dtype=np.longdouble))
    one_line_error(lambda: load_array(tmp_path / "long.npy"), "torch has no type for")


def test_nan_and_inf_in_arrays_are_refused_at_the_files_index(tmp_path):
    x = np.zeros((3, 10, 10, 3), dtype=np.float32)  # channels-last images: index as saved
    x[2, 4, 5, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    one_line_error(lambda: load_array(tmp_path / "x.npy"), r"first at index \(2, 4, 5, 1\)")
    torch.save({"x": torch.tensor([[1.0], [float("-inf")]])}, tmp_path / "x.pt")
    one_line_error(lambda: load_array(tmp_path / "x.pt"), r"first at index \(1, 0\) \(row 1")


# --- .pt -------------------------------------------------------------------------------


def test_pt_gives_a_tensor_or_the_one_tensor_of_a_dict(tmp_path):
    x = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    torch.save(x, tmp_path / "x.pt")
    torch.save({"images": x, "note": "three rows"}, tmp_path / "d.pt")
    torch.save({"a": x, "b": x.float()}, tmp_path / "two.pt")
    assert torch.equal(load_array(tmp_path / "x.pt")[0], x)
    tensor, info = load_array(tmp_path / "d.pt")
    assert torch.equal(tensor, x) and info.dtype == torch.uint8
    assert load_array(tmp_path / "two.pt", key="b")[0].dtype == torch.float32
    one_line_error(lambda: load_array(tmp_path / "two.pt"), r"holds 2 tensors \(a, b\).*key=")
    one_line_error(lambda: load_array(tmp_path / "x.pt", key="a"), "one tensor, not a dict")


class Pickled:
    pass


def test_pt_files_of_code_or_other_objects_are_refused(tmp_path):
    with open(tmp_path / "code.pt", "wb") as stream:
        pickle.dump(Pickled(), stream)
    one_line_error(lambda: load_array(tmp_path / "code.pt"), "Python objects other than tensors")
    torch.save({"n": 3}, tmp_path / "none.pt")
    one_line_error(lambda: load_array(tmp_path / "none.pt"), "holds a dict without tensors")
    (tmp_path / "text.pt").write_text("1,2\n")
    one_line_error(lambda: load_array(tmp_path / "text.pt"), "not a file of tensors torch can")
    torch.save([torch.zeros(2, 2)], tmp_path / "list.pt")
    one_line_error(lambda: load_array(tmp_path / "list.pt"), "holds a list: save a tensor")


# --- folders of images -----------------------------------------------------------------


def save_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return array


def test_a_folder_of_grey_images_is_uint8_in_sorted_order_with_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        name: save_png(tmp_path / name, rng.integers(0, 256, (10, 12), dtype=np.uint8))
        for name in ["b.png", "a.png", "cats/c.png"]
    }
    (tmp_path / "README.txt").write_text("not an image: ignored")
    tensor, info = load_array(tmp_path)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 1, 10, 12)
    for i, name in enumerate(["a.png", "b.png", "cats/c.png"]):
        assert torch.equal(tensor[i, 0], torch.from_numpy(arrays[name]))
    assert info.image_shape == (1, 10, 12) and info.format == "folder" and info.is_image


def test_hidden_files_such_as_macos_metadata_are_not_images(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((9, 9), dtype=np.uint8))
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert load_array(tmp_path)[0].shape == (1, 1, 9, 9)


def test_a_folder_with_colour_images_gives_rgb_for_all(tmp_path):
    rng = np.random.default_rng(1)
    grey = save_png(tmp_path / "a.png", rng.integers(0, 256, (9, 8), dtype=np.uint8))
    colour = save_png(tmp_path / "b.png", rng.integers(0, 256, (9, 8, 3), dtype=np.uint8))
    tensor, info = load_array(tmp_path)
    assert info.image_shape == (3, 9, 8)
    assert torch.equal(tensor[0], torch.from_numpy(grey).expand(3, 9, 8))  # grey -> R = G = B
    assert torch.equal(tensor[1], torch.from_numpy(colour).permute(2, 0, 1))


def test_images_of_different_sizes_are_refused_unless_resized(tmp_path):
    rng = np.random.default_rng(2)
    save_png(tmp_path / "a.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
    big = save_png(tmp_path / "b.png", rng.integers(0, 256, (20, 16), dtype=np.uint8))
    one_line_error(
        lambda: load_array(tmp_path),
        r"differ in size: a.png is 10x12 \(height x width\), b.png is 20x16: pass resize=",
    )
    tensor, info = load_array(tmp_path, resize=(10, 8))
    assert tensor.shape == (2, 1, 10, 8) and info.image_shape == (1, 10, 8)
    expected = np.array(Image.fromarray(big).resize((8, 10), Image.Resampling.BILINEAR))
    assert torch.equal(tensor[1, 0], torch.from_numpy(expected))
    assert torch.equal(read_image_folder(tmp_path, resize=(10, 8)), tensor)


@pytest.mark.parametrize("resize", [(10,), (0, 5), (2.5, 3)])
def test_bad_resize_is_refused(tmp_path, resize):
    save_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    one_line_error(lambda: load_array(tmp_path, resize=resize), "resize must be .height, width.")


def test_folders_without_readable_8bit_images_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_array(tmp_path / "empty"), r"no image files \(.png, .jpg")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    one_line_error(lambda: load_array(tmp_path / "broken"), r"cannot read image .*x.png")
    save_png(tmp_path / "cut" / "a.png", np.zeros((16, 16), dtype=np.uint8))
    png = (tmp_path / "cut" / "a.png").read_bytes()
    (tmp_path / "cut" / "a.png").write_bytes(png[: len(png) // 2])
    one_line_error(lambda: load_array(tmp_path / "cut"), r"cannot read image .*a.png")
    deep = np.full((4, 4), 40000, dtype=np.uint16)
    save_png(tmp_path / "deep" / "x.png", deep)  # PIL's mode for uint16: I;16
    one_line_error(lambda: load_array(tmp_path / "deep"), "mode 'I;16'.*8-bit grey or RGB")


# --- paths and options -----------------------------------------------------------------


def test_missing_paths_unknown_formats_and_misplaced_options_are_refused(tmp_path):
    one_line_error(lambda: load_array(tmp_path / "nope.npy"), "no file or folder at .*nope.npy")
    write(tmp_path / "x.json", "[1, 2]")
    one_line_error(lambda: load_array(tmp_path / "x.json"), r"cannot read .json: give a .npy")
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    one_line_error(lambda: load_array(tmp_path / "x.npy", columns=["a"]), "columns= applies to")
    one_line_error(lambda: load_array(tmp_path / "x.npy", key="a"), "key= applies to npz and pt")
    one_line_error(lambda: load_array(tmp_path / "x.npy", resize=(2, 2)), "resize= applies to")
