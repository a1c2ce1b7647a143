"""A folder of images per class as local data: root/<class name>/<image files>.

Images are converted to RGB, resized to size x size, scaled to [0, 1] and flattened channel-first
(3, size, size), so models that need the image shape (cnn, resnet) can restore it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class ImageFolderError(ValueError):
    """The folder holds no class folders, no images, or an unreadable image. `peers.data`, which
    imports this module (never the other way round), reports it as its `DataError`."""


def load_image_folder(root: Path, size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X float32 (n, 3*size*size), y int64, class names in label order)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ImageFolderError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    features, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise ImageFolderError(f"{path}: not a readable image ({exc})") from None
            features.append(pixels.transpose(2, 0, 1).reshape(-1))
            labels.append(label)
    if not features:
        raise ImageFolderError(f"{root}: no images found in {', '.join(classes)}")
    return np.stack(features), np.asarray(labels, dtype=np.int64), classes
