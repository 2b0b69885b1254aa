"""Rendered frames of stored instances (DICOMweb /rendered), with a per-process cache: viewers ask for the same
thumbnail and the same frame again and again while a user scrolls, and a hit costs neither the blob read nor
the decoding.

The cache is keyed by the instance's blob key with the rendering parameters. A blob key is never reused: an
instance stored again after a delete, by this process or any other sharing the index, gets a fresh key
(instances.store_instances adds 128 random bits), so an entry can never stand for different pixels and
needs no invalidation across processes. A deleted instance is never served from it either, because every
request looks the instance up in the index first and gets NotFound; its entries age out. The cache is
bounded in bytes (RENDERED_CACHE_BYTES, least recently used out first), and an image larger than a sixteenth
of it is not kept."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from dicomlake.dicom import pixels
from dicomlake.storage.blobs import BlobStore
from dicomlake.store.instances import InstanceRow

# 32 MiB per server process holds some 20,000 thumbnails of 64x64 (1.5 KB) or 1,000 JPEGs of 512x512.
RENDERED_CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Rendering:
    """How to render: one of `pixels.render`'s media types, an optional (width, height) box and a quality."""

    media_type: str
    viewport: tuple[int, int] | None
    quality: int


_Key = tuple[str, int, Rendering]


class RenderedCache:
    """A least-recently-used map from (blob key, frame, rendering) to image bytes, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._images: OrderedDict[_Key, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _Key) -> bytes | None:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def put(self, key: _Key, image: bytes) -> None:
        if len(image) * 16 > self.max_bytes:
            return
        with self._lock:
            old = self._images.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._images[key] = image
            self.size += len(image)
            while self.size > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self.size -= len(evicted)

    def __len__(self) -> int:
        return len(self._images)


cache = RenderedCache(RENDERED_CACHE_BYTES)


def render_frames(blobs: BlobStore, row: InstanceRow, numbers: list[int], rendering: Rendering) -> list[bytes]:
    """The frames `numbers` of the instance in `row`, rendered; PixelError if it cannot be rendered."""
    keys = [(row.blob_key, number, rendering) for number in numbers]
    images = [cache.get(key) for key in keys]
    if all(image is not None for image in images):
        return [image for image in images if image is not None]
    data = blobs.get(row.blob_key)
    out = []
    for key, image in zip(keys, images, strict=True):
        if image is None:
            image = pixels.render(data, key[1], rendering.media_type, rendering.viewport, rendering.quality)
            cache.put(key, image)
        out.append(image)
    return out
