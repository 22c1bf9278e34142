"""A source's image paths, checked: relative, inside the image root, and naming a file that exists.

Sources name images relative to an image root (`--image-root`, or the MIMIC-CXR root). A path is
refused, by name, when it is empty, absolute (POSIX or a Windows drive), has a '..' component,
leads out of the root through a symlink, or names no existing file. The checked path is written
in POSIX form relative to the root, '.' components removed: that is what `SourceImage.path` holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath

from data_pipeline.construct.source_study import SourceError

__all__ = ["relative_image_path", "ImageRoot"]


def relative_image_path(raw: object, origin: str, field: str) -> str:
    """`raw` as a POSIX path relative to an image root; SourceError when it cannot be one."""
    if not isinstance(raw, str) or not raw.strip():
        raise SourceError(origin, field, f"an image path must be a non-empty string, got {raw!r}")
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).drive:
        raise SourceError(origin, field, f"{raw!r} is an absolute path; give it relative to the image root")
    path = PurePosixPath(raw.replace("\\", "/"))
    if ".." in path.parts:
        raise SourceError(origin, field, f"{raw!r} has a '..' component (it would leave the image root)")
    if not path.parts:
        raise SourceError(origin, field, f"{raw!r} names the image root itself, not an image")
    return path.as_posix()


class ImageRoot:
    """The folder a source's image paths are relative to (its real path resolved once)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(path)
        self._real = os.path.realpath(self.path)

    def __str__(self) -> str:
        return self.path

    def existing(self, raw: object, origin: str, field: str) -> str:
        """`raw` checked (`relative_image_path`), inside the root after symlinks, naming an existing file."""
        relative = relative_image_path(raw, origin, field)
        target = os.path.join(self.path, relative)
        real = os.path.realpath(target)
        if real != self._real and not real.startswith(self._real + os.sep):
            raise SourceError(origin, field, f"{raw!r} resolves to {real}, outside the image root {self.path}")
        if not os.path.isfile(target):
            raise SourceError(origin, field, f"no such image file: {target}")
        return relative

    def first_existing(self, candidates: Sequence[str], origin: str, field: str) -> str:
        """The first of `candidates` naming an existing file, checked by `existing`; SourceError naming
        every path tried when none does. A candidate refused for its form ('..', absolute) stops the
        search at once: only a missing file lets the next one be tried."""
        relatives = []
        for candidate in candidates:
            relative = relative_image_path(candidate, origin, field)
            if os.path.isfile(os.path.join(self.path, relative)):
                return self.existing(relative, origin, field)
            relatives.append(relative)
        tried = ", ".join(os.path.join(self.path, relative) for relative in relatives)
        raise SourceError(origin, field, f"no such image file: {tried}")
