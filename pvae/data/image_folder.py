"""A folder of image files (PNG, JPEG, ...) as one ``uint8`` tensor ``[N, C, H, W]``.

Read with PIL, one file at a time, into one preallocated tensor: grey images give one
channel, colour images three (RGB). What cannot become one tensor (images of different
sizes, without ``resize``; 16-bit or floating-point images; files PIL cannot read, damaged
or truncated) is refused with the file's name and what to do. Hidden files (``.name``, such
as the ``._name.png`` metadata that macOS copies next to each image) are not images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "image_files", "read_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GREY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its subfolders, sorted by their path in it; hidden
    ones (``.name``) left out."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _open(path: Path):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # a damaged file surfaces as OSError, SyntaxError, ValueError...
        raise _unreadable(path, error) from None
    if image.mode not in _GREY_MODES | _COLOUR_MODES:
        raise ValueError(
            f"image {path} has mode {image.mode!r} (16-bit or floating-point values): save "
            "the images as 8-bit grey or RGB"
        )
    return image


def _check_resize(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    size = tuple(resize)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"resize must be (height, width), two positive integers, got {resize!r}")
    return size


def _sizes_agree(files: list[Path], modes_and_sizes) -> None:
    first_size = modes_and_sizes[0][1]
    for path, (_, size) in zip(files, modes_and_sizes, strict=True):
        if size != first_size:
            (w0, h0), (w, h) = first_size, size
            raise ValueError(
                f"images differ in size: {files[0].name} is {h0}x{w0} (height x width), "
                f"{path.name} is {h}x{w}: pass resize=(height, width) to bring them to one"
            )


def read_image_folder(folder: str | Path, resize=None) -> torch.Tensor:
    """Every image under ``folder`` as ``uint8`` ``[N, C, H, W]`` (C = 1 if all are grey).

    ``resize = (height, width)`` resizes each image (bilinear, antialiased by PIL);
    without it all images must share one size. Alpha channels are dropped.

    Example::

        >>> images = read_image_folder("digits/")  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        (torch.Size([120, 1, 28, 28]), torch.uint8)
    """
    folder, size = Path(folder), _check_resize(resize)
    files = image_files(folder)
    if not files:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its subfolders"
        )
    headers = []
    for path in files:  # a first pass over the headers only: modes and sizes
        with _open(path) as image:
            headers.append((image.mode, image.size))
    if size is None:
        _sizes_agree(files, headers)
    grey = all(mode in _GREY_MODES for mode, _ in headers)
    height, width = size if size is not None else headers[0][1][::-1]
    images = torch.empty(len(files), 1 if grey else 3, height, width, dtype=torch.uint8)
    for i, path in enumerate(files):
        images[i] = _pixels(path, "L" if grey else "RGB", size)
    return images


def _unreadable(path: Path, error: Exception) -> ValueError:
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return ValueError(f"cannot read image {path} ({reason}): remove or replace it")


def _pixels(path: Path, mode: str, size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image

    with _open(path) as image:
        try:
            converted = image.convert(mode)
            if size is not None and converted.size != size[::-1]:
                converted = converted.resize(size[::-1], Image.Resampling.BILINEAR)
            array = np.array(converted, dtype=np.uint8)  # a copy: PIL's buffer is read-only
        except Exception as error:
            raise _unreadable(path, error) from None
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
