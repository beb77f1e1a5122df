"""Datasets: uint8 image tensors (N, C, H, W) with a fixed train/test split, labels and a content digest.

Registry names: digits (scikit-learn's bundled 8×8 digits, offline), mnist, fashion-mnist, cifar10 (torchvision's
loaders and on-disk layouts). Sources for the torchvision datasets, in order: the data root (`BENCH_DATA`, default
data/ in the user cache, ~/.cache/genbench/data on Linux) in torchvision's layout; for Fashion-MNIST Debian's
`dataset-fashion-mnist` package, staged into the root; then torchvision's download (skipped when `BENCH_OFFLINE=1`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.storage import atomic_write, bytes_digest

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# The torchvision classes behind the datasets, by name (torchvision is imported only when one is loaded: its import
# costs seconds, which every `bench` process would pay); tests swap in subclasses that accept fixture files.
TORCHVISION: dict[str, str | type] = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _torchvision_class(name: str) -> type:
    cls = TORCHVISION[name]
    if isinstance(cls, str):
        import torchvision.datasets

        cls = getattr(torchvision.datasets, cls)
    return cls


# The likelihood convention of each dataset (README, "Likelihood conventions"): the MNIST family is modelled as
# dynamically binarised pixels (Bernoulli decoders, NLL comparable with Burda et al. 2016), CIFAR-10 as 8-bit values
# (a discretised decoder, so bits/dim is comparable with the literature). Never a continuous density.
OBSERVATIONS = {
    "digits": "bernoulli",
    "mnist": "bernoulli",
    "fashion-mnist": "bernoulli",
    "cifar10": "discretized-logistic",
}


class DataError(RuntimeError):
    """The data could not be provided; the message says every way to provide it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_images: torch.Tensor  # (N, C, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    source: str  # where the arrays came from, for the logged dataset input
    digest: str  # sha256 over all four arrays (and the validation carve, when there is one)
    validation_images: torch.Tensor | None = None  # carved out of the training split (`carve`); None: no carve

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def observation(self) -> str:
        """The VAEs' observation model on this dataset: "bernoulli" or "discretized-logistic"."""
        return OBSERVATIONS.get(self.name, "discretized-logistic")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        if name == VALIDATION and self.validation_images is not None:
            return self.validation_images, torch.zeros(len(self.validation_images), dtype=torch.long)
        raise ValueError(f"unknown split {name!r}; known splits: train, test" + (", validation" * self.carved))

    @property
    def carved(self) -> bool:
        return self.validation_images is not None


VALIDATION = "validation"
VALIDATION_SEED = 0  # the carve is part of the data, not of a run: one fixed seed


def carve(dataset: Dataset, n: int) -> Dataset:
    """The dataset with `n` training images set aside as the validation split (a seeded random choice, the rest in
    their order): no model trains on them and no metric is scored on them; they select the best checkpoint. n = 0:
    the dataset as it is."""
    if n == 0:
        return dataset
    if not 0 < n < len(dataset.train_images) // 2:
        raise DataError(
            f"{dataset.name}: eval.validation_images = {n} must be below half of the {len(dataset.train_images)} "
            "training images (the validation split is carved out of them)"
        )
    order = torch.randperm(len(dataset.train_images), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held, kept = order[:n], order[n:].sort().values
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[kept].contiguous(),
        train_labels=dataset.train_labels[kept],
        validation_images=dataset.train_images[held].contiguous(),
        digest=bytes_digest([dataset.digest, f"validation {n} seed {VALIDATION_SEED}"]),
    )


def make_dataset(name: str, train: tuple, test: tuple, num_classes: int, source: str) -> Dataset:
    """Build a Dataset from (images, labels) pairs, checking shapes and dtypes and computing the digest."""
    arrays = [torch.as_tensor(a) for a in (*train, *test)]
    train_images, train_labels, test_images, test_labels = arrays
    for images in (train_images, test_images):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"{name}: images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"{name}: train and test images differ in shape")
    arrays = (train_images, train_labels.long(), test_images, test_labels.long())
    digest = bytes_digest(part for a in arrays for part in (str(tuple(a.shape)), a.contiguous().numpy().tobytes()))
    return Dataset(
        name,
        train_images.contiguous(),
        train_labels.long(),
        test_images.contiguous(),
        test_labels.long(),
        num_classes,
        source,
        digest,
    )


def data_root() -> Path:
    if os.environ.get("BENCH_DATA"):
        return Path(os.environ["BENCH_DATA"]).expanduser()
    from bench.storage import user_cache

    return user_cache() / "data"


def load(name: str, root: Path | None = None, validation: int = 0) -> Dataset:
    """The dataset `name`, with `validation` training images carved out as its validation split (`carve`)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return carve(DATASETS[name](root or data_root()), validation)


# ---------------------------------------------------------------------------------------------------------- loaders


def load_digits(root: Path) -> Dataset:
    """scikit-learn's 1,797 real 8×8 digits (values 0..16), upscaled to 20×20 and centred in 28×28 like MNIST.

    Deterministic stratified split: 1,437 train / 360 test (test_size=0.2, random_state=0).
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)  # (1797, 1, 20, 20)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4))  # (1797, 1, 28, 28)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=bunch.target)
    return make_dataset(
        "digits",
        (images[idx_train], labels[idx_train]),
        (images[idx_test], labels[idx_test]),
        10,
        "sklearn.datasets.load_digits",
    )


def load_mnist(root: Path) -> Dataset:
    """MNIST, 60,000 train / 10,000 test 1×28×28 (torchvision layout under the data root, or download)."""
    return _load_torchvision("mnist", root)


def load_fashion_mnist(root: Path) -> Dataset:
    """Fashion-MNIST, 60,000 train / 10,000 test 1×28×28 (data root, Debian's dataset-fashion-mnist, or download)."""
    _stage_debian_fashion_mnist(root)
    return _load_torchvision("fashion-mnist", root)


def load_cifar10(root: Path) -> Dataset:
    """CIFAR-10, 50,000 train / 10,000 test 3×32×32 (torchvision's python pickles under the data root, or download)."""
    return _load_torchvision("cifar10", root)


DATASETS: dict[str, Callable[[Path], Dataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


def _stage_debian_fashion_mnist(root: Path) -> None:
    """Gunzip Debian's Fashion-MNIST files into torchvision's layout (their .gz md5s differ from torchvision's)."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in MNIST_FILES):
        return
    if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in MNIST_FILES):
        return
    for f in MNIST_FILES:  # atomic: an interrupted copy never looks like a finished file
        atomic_write(raw / f, functools.partial(_gunzip, DEBIAN_FASHION_MNIST / f"{f}.gz"))


def _gunzip(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as a, open(dst, "wb") as b:
        shutil.copyfileobj(a, b)


def _load_torchvision(name: str, root: Path) -> Dataset:
    cls = _torchvision_class(name)
    try:
        train, test = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except Exception as e:
        if not (isinstance(e, RuntimeError) and "not found" in str(e)):  # files that exist but cannot be parsed
            raise DataError(
                f"{name}: the files under {root} could not be read ({type(e).__name__}: {e}); "
                f"delete them and provide the dataset again"
            ) from None
        train = test = None  # torchvision: "Dataset not found" (CIFAR-10: "not found or corrupted", md5 checks)
    if train is None:
        problem = "files missing or failing their checksums; BENCH_OFFLINE=1 is set"
        if os.environ.get("BENCH_OFFLINE") != "1":
            try:
                train, test = cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
            except Exception as e:
                problem = (
                    f"files missing; download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                )
        if train is None:
            raise DataError(_missing_message(name, root, problem))
    return make_dataset(name, _arrays(train), _arrays(test), len(train.classes), f"torchvision.datasets.{cls.__name__}")


def _arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(ds.data)
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # MNIST (N,H,W); CIFAR (N,H,W,C)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _missing_message(name: str, root: Path, problem: str) -> str:
    layout = {
        "mnist": f"{root}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte (uncompressed)",
        "fashion-mnist": f"{root}/FashionMNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte (uncompressed)",
        "cifar10": f"{root}/cifar-10-batches-py/ (the python pickles, md5-checked)",
    }[name]
    ways = [f"put the files at {layout}", "or set BENCH_DATA to a directory that holds them in that layout"]
    if name == "fashion-mnist":
        ways.append(f"or `apt-get install dataset-fashion-mnist` (files in {DEBIAN_FASHION_MNIST})")
    ways.append("or allow torchvision's download (network access, BENCH_OFFLINE unset)")
    return f"dataset {name!r} is not available ({problem}); to provide it: " + "; ".join(ways)
