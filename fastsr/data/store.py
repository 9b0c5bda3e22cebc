"""The training images as the batch sources read them: files, sizes, and where their pixels come from.

Pixels come from the source files (decoded on each read) or from a decode-once cache made by
`fastsr prepare` (data.cache), whose memory-mapped `.npy` files let a batch source read just a crop's
region.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastsr.data.cache import Cache, open_cache
from fastsr.data.images import load_image, read_header
from fastsr.data.sources import Sample


@dataclass
class ImageStore:
    """The training images: source files, their sizes, and the cache files holding their pixels (if any)."""

    files: list[Path]
    sizes: list[tuple[int, int]]
    modes: list[str]  # Pillow modes of the source files ("cached" when read from a cache)
    cached: list[Path] | None = None
    # Open memory maps of cache files, by index: opening one (np.load parses the header) costs about
    # twice as much as reading a crop from it. Bounded, as each holds a file descriptor.
    maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:  # worker processes open their own maps
        return {**self.__dict__, "maps": {}}

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], cache: Cache | str | os.PathLike | None = None,
                     source: str = "SRC") -> ImageStore:
        """Sizes from the cache (an opened `Cache`, or its folder, opened here), or else from the files'
        headers (cheap: nothing is decoded); `source` names the data source in the message when the
        cache is missing."""
        files = [s.hr for s in samples]
        if cache is not None:
            cache = cache if isinstance(cache, Cache) else open_cache(cache, source)
            entries = cache.images(samples)
            return cls(files, [(e.height, e.width) for e in entries], ["cached"] * len(files), [e.path for e in entries])
        headers = [read_header(f) for f in files]
        return cls(files, [(h, w) for h, w, _ in headers], [m for _, _, m in headers])

    def read(self, index: int) -> np.ndarray:
        """Image `index` as uint8 HxWx3: a memory map of its cache file (nothing read until sliced), or decoded."""
        if self.cached is None:
            return load_image(self.files[index])
        if index not in self.maps:
            if len(self.maps) >= _max_open_maps():
                self.maps.pop(next(iter(self.maps)))  # the oldest
            self.maps[index] = np.load(self.cached[index], mmap_mode="r")
        return self.maps[index]


def _max_open_maps() -> int:
    """A quarter of the process's file-descriptor limit, between 16 and 4096."""
    return min(4096, max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))
