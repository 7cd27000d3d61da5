"""Image sources, beside the text sources: the same data configs (``kind: images``), a fixed
order, loaded lazily.

  skimage  -- the real photos shipped inside scikit-image (offline; ``names`` picks and orders them)
  folder   -- every image file under ``path`` (sorted), e.g. an ImageNet split on a cluster
  hub      -- a ``datasets`` image dataset (``hub_id``, ``hub_split``, ``image_field``)
Images are handed to the model's own image processor (the context's ``tokenizer`` slot for a
vision model), which resizes and normalises them as the model was trained.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "coins", "hubble_deep_field",
                  "immunohistochemistry", "moon", "page", "text", "colorwheel", "retina")
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # compared lower-cased: .JPG, .PNG, .JPEG count too
MAX_PIXELS = 100_000_000  # a larger image is skipped (PIL's decompression-bomb guard, said in one line)


@dataclass(frozen=True)
class ImageSource:
    name: str
    cfg: Mapping[str, Any]

    def images(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, H x W x 3 uint8 RGB array) in a fixed order."""
        kind, limit = self.cfg.get("source", "skimage"), self.cfg.get("max_images")
        gen = {"skimage": _skimage, "folder": _folder, "hub": _hub}.get(kind)
        if gen is None:
            raise PipelineError(f"image data '{self.name}': unknown source {kind!r} (skimage, folder, hub)")
        for i, item in enumerate(gen(self.cfg)):
            if limit is not None and i >= int(limit):
                return
            yield item

    def documents(self) -> Iterator[str]:  # the text interface: an image set has no text
        raise PipelineError(f"data '{self.name}' holds images: use an image stage (vit_*) or a text dataset")


def rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        img = (255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-8)).astype(np.uint8)
    return img


def _skimage(cfg: Mapping[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    try:
        from skimage import data
    except ImportError as err:
        raise PipelineError("scikit-image is not installed; run `make setup`") from err
    for name in cfg.get("names") or SKIMAGE_PHOTOS:
        if not hasattr(data, name):
            raise PipelineError(f"scikit-image has no photo {name!r}; known: {', '.join(SKIMAGE_PHOTOS)}")
        yield name, rgb(getattr(data, name)())


def _folder(cfg: Mapping[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    from PIL import Image

    root = Path(str(cfg.get("path", "")))
    if not root.is_dir():
        raise PipelineError(f"image folder {root} does not exist (set path: to a local image folder)")
    skipped: list[str] = []
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES):
        try:
            with Image.open(f) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"{im.width} x {im.height} pixels")
                arr = np.asarray(im.convert("RGB"))  # decodes the whole file: a truncated one fails here
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # not an image, truncated, empty, huge
            skipped.append(f"{f.relative_to(root)} ({type(err).__name__}: {str(err).splitlines()[0][:60]})")
            continue
        yield str(f.relative_to(root)), rgb(arr)
    if skipped:
        print(f"[images] skipped {len(skipped)} unreadable file(s) in {root}: {'; '.join(skipped[:3])}"
              + (" ..." if len(skipped) > 3 else ""), flush=True)


def _hub(cfg: Mapping[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    import datasets

    ds = datasets.load_dataset(cfg["hub_id"], cfg.get("hub_config"), split=cfg.get("hub_split", "validation"))
    field = cfg.get("image_field", "image")
    for i, row in enumerate(ds):
        yield f"{cfg['hub_id']}[{i}]", rgb(np.asarray(row[field].convert("RGB")))
