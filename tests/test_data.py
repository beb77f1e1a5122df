"""Every loader on fixture files in torchvision's exact on-disk layout, and the errors for missing data."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from bench import data
from bench.data import DataError

RNG = np.random.default_rng(0)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format of the MNIST files: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, data."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_arrays(n_train=12, n_test=5):
    return {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }


def check_mnist(ds: data.Dataset, arrays: dict):
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.equal(ds.train_images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(ds.test_labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert ds.train_images.dtype == torch.uint8 and len(ds.digest) == 64


def test_digits_is_deterministic_mnist_shaped_and_real():
    a, b = data.load("digits"), data.load("digits")
    assert a.digest == b.digest
    assert a.train_images.shape == (1437, 1, 28, 28) and a.test_images.shape == (360, 1, 28, 28)
    assert a.train_images.dtype == torch.uint8 and a.num_classes == 10
    assert torch.equal(a.train_labels.bincount(), b.train_labels.bincount())
    assert a.train_images[:, :, :4].max() == 0  # the 4-pixel border of MNIST
    assert a.train_images.max() == 255 and a.train_images.float().mean() > 10


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_from_data_root(tmp_path, monkeypatch, name, folder):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    arrays = mnist_arrays()
    for fname, array in arrays.items():
        (raw / fname).write_bytes(idx_bytes(array))
    monkeypatch.setenv("BENCH_DATA", str(tmp_path))
    check_mnist(data.load(name), arrays)


def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    arrays = mnist_arrays()
    for fname, array in arrays.items():
        (debian / f"{fname}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    ds = data.load("fashion-mnist", root)
    check_mnist(ds, arrays)
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # staged in torchvision's layout


class FixtureCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 with the md5 checks lifted (fixture files cannot match the real checksums)."""

    train_list = [[f, None] for f, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[f, None] for f, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


def test_cifar10_from_pickles(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": RNG.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": list(RNG.integers(0, 10, 3))}
        batches[fname] = batch
        (folder / fname).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setitem(data.TORCHVISION, "cifar10", FixtureCIFAR10)
    ds = data.load("cifar10", tmp_path)
    assert ds.image_shape == (3, 32, 32) and len(ds.train_images) == 15 and len(ds.test_images) == 3
    # the pickle rows are channel-major (R plane, G plane, B plane) of 32×32
    expected = torch.from_numpy(batches["data_batch_1"]["data"][0].reshape(3, 32, 32))
    assert torch.equal(ds.train_images[0], expected)
    assert ds.test_labels.tolist() == [int(v) for v in batches["test_batch"]["labels"]]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_data_offline_names_every_way_to_provide_it(tmp_path, monkeypatch, name):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(DataError) as e:
        data.load(name, tmp_path)
    message = str(e.value)
    assert (
        f"dataset {name!r} is not available (files missing or failing their checksums; BENCH_OFFLINE=1 is set)"
        in message
    )
    assert str(tmp_path) in message and "BENCH_DATA" in message and "download" in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


def test_failed_download_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_OFFLINE")

    class NoNetworkMNIST(torchvision.datasets.MNIST):
        def download(self):
            raise OSError("Network is unreachable")

    monkeypatch.setitem(data.TORCHVISION, "mnist", NoNetworkMNIST)
    with pytest.raises(DataError, match="download failed: OSError: Network is unreachable"):
        data.load("mnist", tmp_path)


def test_truncated_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for fname, array in mnist_arrays().items():
        (raw / fname).write_bytes(idx_bytes(array)[:-7])  # cut short
    with pytest.raises(DataError, match="could not be read"):
        data.load("mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; known datasets: digits, mnist"):
        data.load("svhn")


def test_each_dataset_fixes_its_likelihood_convention():
    from bench.data import DATASETS, OBSERVATIONS

    assert set(OBSERVATIONS) == set(DATASETS)
    assert {OBSERVATIONS[n] for n in ("digits", "mnist", "fashion-mnist")} == {"bernoulli"}
    assert OBSERVATIONS["cifar10"] == "discretized-logistic"  # 8-bit values: a discrete decoder, never a density


def test_corrupted_file_is_a_clear_error(tmp_path):
    """Right size, wrong content (a bad magic number, as bit rot or a wrong file would give)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for fname, array in mnist_arrays().items():
        content = bytearray(idx_bytes(array))
        content[2] = 0x42  # the idx type code
        (raw / fname).write_bytes(bytes(content))
    with pytest.raises(DataError, match="could not be read"):
        data.load("mnist", tmp_path)


def test_interrupted_download_leaves_nothing_loadable(tmp_path):
    """A download cut off mid-file leaves a partial archive and no images: offline, the error names the ways to get
    the data instead of failing inside the decompressor."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    full = gzip.compress(idx_bytes(mnist_arrays()["train-images-idx3-ubyte"]))
    (raw / "train-images-idx3-ubyte.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError) as e:
        data.load("mnist", tmp_path)
    assert "BENCH_DATA" in str(e.value) and str(tmp_path) in str(e.value)
