"""Image paths from released annotation files -> paths under a local image root.

Rules of `resolve_image_path(path, image_root, remap_from=anchors)`:
  1. A relative path is taken relative to `image_root`.
  2. An absolute path already inside `image_root` (lexically) is kept, as
     its part relative to the root.
  3. Any other absolute path (from the machine the files were released on,
     e.g. ``/mnt/data/xyz/mimic_cxr/files/p10/.../a.jpg``) is remapped: the
     anchors are tried in the order given, and for the first anchor that
     equals one of the path's folder names (exact, case-sensitive match; the
     file name itself never matches), the path is cut at that anchor's LAST
     occurrence and the part from the anchor on is placed under `image_root`
     (here ``<root>/mimic_cxr/files/p10/.../a.jpg``). The order lets the
     caller say which dataset folder the root holds; the last occurrence
     drops foreign mount prefixes that reuse the name (``/x/mimic_cxr/mimic_cxr/files``).
     An absolute path with no anchor is refused.
  4. A path with any ``..`` component is refused, as is one that, after
     following symlinks, lies outside the root (a symlink pointing out).
The result is ``abspath(image_root) / relative part`` without symlinks
resolved; it need not exist unless `require_exists=True`.

A released study names its images twice: the top-level `image` list holds
absolute paths from the authors' machine, `data_dict.cxrtrek_data.image` the
same images relative to an image root. `choose_image_list` prefers the
relative list and falls back to the absolute one (remapped by rule 3) only
when the relative list is empty, and says which it used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePath

__all__ = ["DEFAULT_REMAP_ANCHORS", "ImagePathError", "resolve_image_path", "choose_image_list",
           "IMAGE_LISTS"]

# What `choose_image_list` can answer, in the order build summaries print them.
IMAGE_LISTS = ("relative", "absolute", "none")

DEFAULT_REMAP_ANCHORS: tuple[str, ...] = (
    "mimic_cxr",
    "mimic-cxr-jpg",
    "files",
    "chexpert",
    "CheXpert-v1.0",
)


class ImagePathError(ValueError):
    """An image path that cannot be placed safely under the image root."""


def resolve_image_path(
    path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    remap_from: Sequence[str] = DEFAULT_REMAP_ANCHORS,
    require_exists: bool = False,
) -> Path:
    """The local path of a released image path (rules in the module docstring).

    Raises ImagePathError for an empty path, a ``..`` component, an absolute
    path outside the root without an anchor, a symlink escaping the root, or
    (with `require_exists`) a path that is not an existing file.
    """
    raw = os.fspath(path)
    if not raw.strip():
        raise ImagePathError("empty image path")
    root = Path(os.path.abspath(image_root))
    relative = _relative_part(PurePath(raw), root, tuple(remap_from))
    if ".." in relative.parts:
        raise ImagePathError(f"{raw}: '..' components are not allowed (would escape {root})")
    if not relative.parts:
        raise ImagePathError(f"{raw}: names the image root itself, not an image")
    resolved = root / relative
    if not resolved.resolve().is_relative_to(root.resolve()):
        raise ImagePathError(
            f"{raw}: resolves to {resolved.resolve()}, outside the image root {root} "
            "(a symlink points out of the root)"
        )
    if require_exists and not resolved.is_file():
        raise ImagePathError(f"{raw}: no such image file {resolved}")
    return resolved


def _relative_part(path: PurePath, root: Path, anchors: tuple[str, ...]) -> PurePath:
    """The part of `path` to place under `root` (rules 1-3 of the module docstring)."""
    if not path.is_absolute():
        return path
    if path.is_relative_to(root):
        return path.relative_to(root)
    folders = path.parts[1:-1]  # without the anchor "/" and the file name.
    for anchor in anchors:
        if anchor in folders:
            last = len(folders) - 1 - folders[::-1].index(anchor)
            return PurePath(*path.parts[1 + last :])
    raise ImagePathError(
        f"{path}: absolute path outside the image root {root} and with none of the "
        f"anchor folders {list(anchors)} to remap it from"
    )


def choose_image_list(
    relative: Sequence[str],
    absolute: Sequence[str] | None,
    image_root: str | os.PathLike,
    *,
    remap_from: Sequence[str] = DEFAULT_REMAP_ANCHORS,
) -> tuple[tuple[str, ...], str]:
    """(paths relative to `image_root`, which list they came from) for one study.

    which: "relative" (`cxrtrek_data.image`, used whenever it is non-empty), "absolute" (the
    top-level list, each path placed under the root by `resolve_image_path`; only when the
    relative list is empty), or "none" (the study names no image). ImagePathError names the
    absolute path that cannot be placed under the root.
    """
    if relative:
        return tuple(relative), "relative"
    if absolute:
        root = Path(os.path.abspath(image_root))
        placed = [resolve_image_path(path, root, remap_from=remap_from) for path in absolute]
        return tuple(str(p.relative_to(root)) for p in placed), "absolute"
    return (), "none"
