"""The dataset folder layout shared with the original am-segmentation (see docs/architecture.md).

Every path the pipeline reads or writes is named here, so stages agree on where things live::

    layout = DatasetLayout(Path("data/inference/dataset"))
    for group in layout.groups():
        image_path = layout.source_image(group)
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from am.errors import InputError, MessageError
from am.messages import check_group

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
# Image files users drop in by mistake, by suffix: named in the error, with the conversion to make.
OTHER_IMAGE_KINDS = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WebP",
                     ".jp2": "JPEG 2000", ".heic": "HEIC"}
# Folders under source/ that are never groups: what unzipping on a Mac leaves beside the data.
IGNORED_FOLDERS = frozenset({"__MACOSX"})


def as_group_name(typed: str) -> str:
    """A group as the user typed it, less the trailing slash a shell's completion adds ("slide_1/")."""
    return typed.rstrip("/") or typed


def group_folders(folder: Path) -> list[str]:
    """The names of the folders in ``folder`` that can be groups, sorted.

    Hidden folders (``.ipynb_checkpoints``) and the ``__MACOSX`` folder that unzipping on a Mac
    leaves are not acquisitions.
    """
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_FOLDERS)


@dataclass(frozen=True)
class DatasetLayout:
    root: Path

    @property
    def source_dir(self) -> Path:
        return self.root / "source"

    def groups(self, selected: list[str] | None = None) -> list[str]:
        """The groups to process: all folders under source/, or the selected ones, which must exist."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root} is a file, not a dataset folder; pass the folder that holds "
                             "source/<group>/<image> (the image goes in source/<group>/)")
        if not self.root.is_dir():
            raise InputError(f"dataset folder {self.root} does not exist; pass the folder that holds source/")
        if not self.source_dir.is_dir():
            hint, parent = "", self.root.resolve().parent
            if self.root.resolve().name == "source" and (parent / "source").is_dir():  # "." names no folder
                hint = f" (this is a source/ folder itself: pass the dataset that holds it, {parent})"
            raise InputError(
                f"dataset folder {self.root} has no source/ folder; put each image in source/<group>/{hint}"
            )
        available = group_folders(self.source_dir)
        if selected:
            selected = [as_group_name(g) for g in selected]
            unknown = [g for g in selected if g not in available]
            if unknown:
                raise InputError(
                    f"group(s) {', '.join(unknown)} not found under {self.source_dir}; "
                    f"available: {', '.join(available) or 'none'}"
                )
            groups = list(dict.fromkeys(selected))
        else:
            groups = available
        if not groups:
            loose = sorted(p.name for p in self.source_dir.iterdir() if p.is_file() and not p.name.startswith("."))
            if loose:
                example = loose[0]
                group = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(example).stem).strip("._") or "group01"
                raise InputError(f"{self.source_dir} holds {', '.join(loose[:5])}{' ...' if len(loose) > 5 else ''} "
                                 f"but no group folders; move each image into a folder of its own (a group: "
                                 f"letters, digits, '.', '_' and '-'), e.g. {self.source_dir / group / example}")
            raise InputError(f"{self.source_dir} holds no group folders; put each image in source/<group>/")
        for group in groups:
            try:
                check_group(group)
            except MessageError as exc:
                raise InputError(str(exc)) from exc
        return groups

    def source_image(self, group: str) -> Path:
        """The one image of a group; zero or several candidates are an error, not a guess."""
        folder = self.source_dir / group
        images = sorted(
            p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not images:
            others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
            broken = [name for name in others if (folder / name).is_symlink() and not (folder / name).exists()]
            named_folders = [name for name in others
                             if Path(name).suffix.lower() in IMAGE_SUFFIXES and (folder / name).is_dir()]
            found = ""
            if broken:
                found = f" ({', '.join(broken)}: a link to nothing)"
            elif named_folders:
                found = f" ({', '.join(named_folders)}: a folder, not an image file)"
            elif kinds := [(name, OTHER_IMAGE_KINDS[Path(name).suffix.lower()]) for name in others
                           if Path(name).suffix.lower() in OTHER_IMAGE_KINDS]:
                name, kind = kinds[0]
                raise InputError(
                    f"group folder {folder} holds {name}, a {kind} file, which is not read (only .tif, .tiff and "
                    f".png are: lossless, 8 or 16 bit); convert it, e.g. {png_conversion(folder / name)}, "
                    "and keep only the converted file there")
            elif others:
                shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
                found = f" (it holds {shown}, none of them one)"
            raise InputError(f"group folder {folder} has no image{found}; put one .tif, .tiff or .png file there")
        if len(images) > 1:
            names = ", ".join(p.name for p in images)
            raise InputError(f"group folder {folder} has {len(images)} images ({names}); keep exactly one per group")
        return images[0]

    def source_norm(self, group: str) -> Path:
        return self.root / "source_norm" / group / "source.tiff"

    def tiles_dir(self, group: str) -> Path:
        return self.root / "tiles" / group

    def tile_plan(self, group: str) -> Path:
        return self.tiles_dir(group) / "meta.json"

    def tile_source(self, group: str, tile: int) -> Path:
        return self.tiles_dir(group) / "source" / f"{tile:04d}.png"

    def tile_mask(self, group: str, tile: int) -> Path:
        return self.tiles_dir(group) / "mask" / f"{tile:04d}.png"

    def stitched_dir(self, group: str) -> Path:
        return self.root / "tiles_stitched" / group

    def stitched_mask(self, group: str) -> Path:
        return self.stitched_dir(group) / "mask.tiff"

    def stitched_overlay(self, group: str) -> Path:
        return self.stitched_dir(group) / "overlay.png"

    def am_coords_dir(self, group: str) -> Path:
        return self.root / "am_coords" / group

    def am_coords_staging(self, group: str) -> Path:
        """Where a registration writes the group's outputs before moving them in whole: beside their
        folder, or beside the folder a link in its place names (outputs kept on another disk)."""
        target = self.am_coords_dir(group)
        place = target.resolve() if target.is_symlink() else target
        return place.with_name(f".{group}.partial")


def png_conversion(image: Path) -> str:
    """A shell command that writes ``image`` as a PNG beside it: with absolute paths, so that it works from
    any folder, quoted for Python and, where a path holds a quote, ``$`` or the like, for the shell too."""
    image = image.absolute()
    code = (f"import cv2; cv2.imwrite({str(image.with_suffix('.png'))!r}, "
            f"cv2.imread({str(image)!r}, cv2.IMREAD_UNCHANGED))")
    if re.search(r'["$`\\!]', code):
        return shlex.join(["python", "-c", code])
    return f'python -c "{code}"'
