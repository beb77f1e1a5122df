"""Images from users: a .npy/.npz array or a folder of image files, read as they are on disk (a folder's odd-sized
images resized to its common size, said in the protocol), and made uint8 (N, C, H, W)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class SampleError(ValueError):
    """The samples cannot be scored under the protocol; the message says what is wrong and what to do."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
RESIZER = "PIL bicubic"  # what resizes a folder's odd-sized images to its most common size (as clean-fid resizes)


@dataclass
class Loaded:
    """Images as read: the array, and how many of a folder's images were resized to `size` (H, W) by RESIZER."""

    array: np.ndarray
    resized: int = 0
    size: tuple[int, int] | None = None


def read_samples(path: Path) -> np.ndarray:
    """The array in a .npy or .npz file, or the images of a folder (`load_images`)."""
    return load_images(path).array


def load_images(path: Path) -> Loaded:
    """The array in a .npy or .npz file (key `samples`, or its only array), or the images of a folder (PNG, JPEG,
    WebP, BMP or TIFF, sorted by name; or its class subfolders'), as they are on disk but for resizing."""
    path = Path(path)
    if not path.exists():
        raise SampleError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == ".npy":
        try:
            return Loaded(np.load(path, allow_pickle=False))
        except (ValueError, OSError) as e:
            raise SampleError(f"{path}: not a readable .npy array ({e})") from None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "samples" in keys:
                    return Loaded(archive["samples"])
                if len(keys) == 1:
                    return Loaded(archive[keys[0]])
        except (ValueError, OSError) as e:
            raise SampleError(f"{path}: not a readable .npz archive ({e})") from None
        raise SampleError(f"{path}: an .npz with several arrays {keys} and none named 'samples'; name it 'samples'")
    raise SampleError(f"{path}: give a .npy or .npz array of images, or a folder of image files")


def _read_folder(folder: Path) -> Loaded:
    """The images of a folder (`FolderImages`), read whole."""
    images = FolderImages.scan(folder)
    return Loaded(images.array(), images.resized, images.size)


class FolderImages:
    """A folder's images, read a batch at a time through a DataLoader rather than whole: the files sorted by name, or
    its class subfolders' (each sorted by name, the subfolders in name order) when it holds only folders, as
    torchvision's ImageFolder lays them out. `scan` reads only the files' headers (and palette images), so a
    folder's size, channels and odd-sized files are known before any pixel is decoded. Images of another size than
    the folder's most common one are resized to it (RESIZER); grey images in a folder with colour ones are made RGB
    (each channel the grey value). `digest` is the sha256 of the uint8 (N, C, H, W) pixels, as an array's would be,
    set by each full pass of `batches`."""

    def __init__(self, folder: Path, files: list[Path], size: tuple[int, int], channels: int, resized: int):
        self.folder, self.files, self.size, self.channels, self.resized = folder, files, size, channels, resized
        self.digest: str | None = None

    @classmethod
    def scan(cls, folder: Path) -> FolderImages:
        from PIL import Image, UnidentifiedImageError

        folder = Path(folder)
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        if entries and all(p.is_dir() for p in entries):  # class subfolders
            files = [f for d in entries for f in sorted(p for p in d.iterdir() if not p.name.startswith("."))]
        else:
            files = entries
        others = [p.name for p in files if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise SampleError(
                f"{folder}: not images ({', '.join(IMAGE_SUFFIXES)}): {', '.join(others[:5])}"
                f"{' ...' if len(others) > 5 else ''} (give a folder of images, or a folder of class folders of images)"
            )
        if not files:
            raise SampleError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        sizes, grey = Counter(), 0
        for p in files:
            try:
                with Image.open(p) as im:  # the header only, but for palette images (grey or colour by their pixels)
                    sizes[(im.height, im.width)] += 1
                    grey += (_pixels(im).ndim == 2) if im.mode == "P" else im.mode not in _COLOUR_MODES
            except (UnidentifiedImageError, OSError) as e:
                raise SampleError(f"{p}: not a readable image ({type(e).__name__})") from None
        size = max(sizes, key=lambda hw: (sizes[hw], hw))  # the most common (H, W); ties: the largest
        return cls(folder, files, size, 1 if grey == len(files) else 3, len(files) - sizes[size])

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image as read."""
        return self.channels, self.size[0], self.size[1]

    def __getitem__(self, i: int) -> torch.Tensor:
        """The i-th image as uint8 (C, H, W): resized to the folder's size, grey made RGB in a colour folder."""
        from PIL import Image, UnidentifiedImageError

        p = self.files[i]
        try:
            with Image.open(p) as im:
                a = _pixels(im)
        except (UnidentifiedImageError, OSError) as e:
            raise SampleError(f"{p}: not a readable image ({type(e).__name__})") from None
        if a.dtype != np.uint8:
            raise SampleError(f"{p}: {a.dtype} pixels; give 8-bit images")
        if a.shape[:2] != self.size:
            a = np.asarray(Image.fromarray(a).resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC))
        if a.ndim == 2:
            a = a[None] if self.channels == 1 else np.repeat(a[None], 3, axis=0)
        else:
            a = a.transpose(2, 0, 1)
        return torch.tensor(a)  # a copy: PIL's arrays are read-only

    def batches(self, batch_size: int):
        """uint8 (B, C, H, W) batches in file order, decoded by a DataLoader; sets `digest` after a full pass."""
        import hashlib

        from torch.utils.data import DataLoader

        h = hashlib.sha256()
        for batch in DataLoader(self, batch_size=batch_size, shuffle=False, num_workers=0):
            h.update(batch.numpy().tobytes())
            yield batch
        self.digest = h.hexdigest()

    def array(self) -> np.ndarray:
        """Every image at once, uint8 (N, C, H, W), or (N, H, W) for a grey folder."""
        out = torch.cat(list(self.batches(256))).numpy()
        return out[:, 0] if self.channels == 1 else out


def _pixels(im) -> np.ndarray:
    """An image's 8-bit pixel values, (H, W) grey or (H, W, 3) colour: a palette image ("P") as the colours its
    indices stand for (grey when the palette is grey), not the indices; an alpha channel dropped; 1-bit as 0/255;
    CMYK and other colour modes as RGB."""
    if im.mode == "P":
        im = im.convert("RGB")
        rgb = np.asarray(im)
        return rgb[..., 0] if (rgb == rgb[..., :1]).all() else rgb
    if im.mode in ("1", "LA"):
        im = im.convert("L")
    elif im.mode not in ("L", "RGB") and im.mode in _COLOUR_MODES:
        im = im.convert("RGB")
    return np.asarray(im)


_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def image_shape_of(array: np.ndarray, what: str) -> tuple[int, int, int]:
    """(C, H, W) of an image array without a dataset to say it: (N, H, W) is grey; (N, C, H, W) when its second axis
    is 1 or 3 channels, else (N, H, W, C) when its last one is."""
    if array.ndim == 3:
        return 1, array.shape[1], array.shape[2]
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return array.shape[1], array.shape[2], array.shape[3]
    if array.ndim == 4 and array.shape[3] in (1, 3):
        return array.shape[3], array.shape[1], array.shape[2]
    raise SampleError(f"{what}: an array of shape {tuple(array.shape)} is not a batch of 1- or 3-channel images")


def as_images(array: np.ndarray, image_shape: tuple[int, int, int], what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from an (N, C, H, W), (N, H, W, C) or, for one channel, (N, H, W) array of uint8 values, or
    of floats in [0, 1] (rounded to 8 bits as a model's samples are)."""
    c, h, w = image_shape
    expected = f"(N, {c}, {h}, {w}) or (N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
    shape = tuple(array.shape)
    if array.ndim == 3 and c == 1 and shape[1:] == (h, w):
        array = array[:, None]
    elif array.ndim == 4 and shape[1:] == (h, w, c) and shape[1:] != (c, h, w):
        array = array.transpose(0, 3, 1, 2)
    elif not (array.ndim == 4 and shape[1:] == (c, h, w)):
        raise SampleError(
            f"{what}: samples of shape {shape}, but the dataset's images are {c}x{h}x{w}: give {expected}"
        )
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise SampleError(f"{what}: float samples must lie in [0, 1] (or give uint8 0-255)")
        return torch.from_numpy(np.ascontiguousarray(np.round(array * 255.0)).astype(np.uint8))
    raise SampleError(f"{what}: samples of dtype {array.dtype}; give uint8 (0-255) or floats in [0, 1]")
