"""File helpers shared by every layer: content hashes, writes that never leave a partial file, image previews."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def replaced_on_success(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `target` to write; renamed over `target` only when the block succeeds, so a
    reader never sees a partial file and a failure leaves nothing behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_png(image, path: str | os.PathLike) -> Path:
    """An 8-bit grey PNG of a magnitude image, scaled to its 99.5th percentile (a few bright pixels do not
    darken the rest)."""
    import numpy as np
    from PIL import Image

    image = np.asarray(image, np.float32)
    top = float(np.percentile(image, 99.5)) or 1.0
    Image.fromarray((np.clip(image / top, 0, 1) * 255).astype(np.uint8)).save(path)
    return Path(path)
