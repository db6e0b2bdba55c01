"""Training data: labelled images from folders or from the generator, served as random crops.

Folders follow the original training layout, ``ROOT/train|valid/<dataset>/<group>/{source,mask}/*.png``
(same file names under ``source`` and ``mask``). Synthetic images are rendered once, in memory,
from a seed. Either way training draws fresh random crops every epoch::

    train = load_split(Path("data/training"), "train") + synthetic_images(count=400, size=384, seed=0)
    dataset = CropDataset(train, crop=256, length=2000, seed=0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from am.dataset import OTHER_IMAGE_KINDS, group_folders, png_conversion
from am.errors import InputError
from am.imageio import read_header, read_image
from am.normalize import check_finite, read_normalised, to_grey
from am.prepare import check_image_size
from am.synth.dataset import iter_samples
from am.synth.truth import between_labels
from am.train.augment import flip_rotate, lose_resolution, photometric, random_crop

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Labelled:
    """An 8-bit grey image, its 0/1 mask, and a per-pixel loss weight (0 = unknown, not learned)."""

    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    name: str

    @classmethod
    def from_arrays(cls, image: np.ndarray, mask: np.ndarray, *, name: str,
                    weight: np.ndarray | None = None) -> Labelled:
        if image.shape != mask.shape:
            raise InputError(f"{name}: image {image.shape} and mask {mask.shape} differ in size")
        weight = np.ones(image.shape, dtype=np.uint8) if weight is None else weight.astype(np.uint8)
        return cls(image=image, mask=(mask > 0).astype(np.uint8), weight=weight, name=name)


def weigh_gaps(item: Labelled, gain: int, *, reach: int = 2) -> Labelled:
    """Weigh the background between two close marks ``gain`` times in the loss (U-Net's border weights).

    Dense lattices leave one or two pixels of tissue between neighbouring marks; those pixels are
    few, so an unweighted loss barely notices a model that bridges them, yet a bridged pair is
    one object to registration and two marks lost. A background pixel counts as a gap when
    marks of two different connected components lie within ``reach`` px of it. Pixels of weight
    0 (unknown) stay 0.
    """
    if gain < 1 or gain > 255:
        raise InputError(f"gap weight must be between 1 and 255, got {gain}")
    if gain == 1:
        return item
    count, labels = cv2.connectedComponents(item.mask, connectivity=8)
    if count < 3:
        return item
    gaps = (labels == 0) & between_labels(labels, reach=reach) & (item.weight > 0)
    weight = np.where(gaps, np.uint8(gain), item.weight)
    return replace(item, weight=weight)


@dataclass(frozen=True)
class LabelledFile:
    """A source image and its mask on disk, found and paired up front but read only when needed, so
    an evaluation over full-size images holds one image at a time."""

    source: Path
    mask: Path
    name: str

    def read(self) -> Labelled:
        # As the pipeline's input and am.evaluate read it (1-99 percentile stretch), 8-bit or not: a
        # low-contrast image stored as is would teach and score the model on a look it never meets.
        image = read_normalised(self.source)
        return Labelled.from_arrays(image, read_mask(self.mask), name=self.name)


def read_mask(path: Path) -> np.ndarray:
    """The mask file ``path`` as 0/1 (:func:`binary_mask`): the one reading of a mask for training,
    evaluation and pseudo-labelling."""
    return binary_mask(read_image(path), path)


# A label image (an id per mark, 0 between marks) has marks of one value each: at most this share of
# the neighbouring pixel pairs inside its marks differ. The grey levels of a resampled or JPEG-saved
# mask differ from their neighbours all along every mark's edge.
LABEL_EDGE_SHARE = 0.02


def binary_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    """A label mask as 0/1, from a grey, colour or RGBA array.

    Two levels of which one is 0 (0/255, 0/1, 0/65535, and marks of -1 on 0 too) are read as they
    are: 0 is background, the other level marks. Of two levels neither of which is 0 (ilastik's 1/2
    export, 128/255, red marks on white) the higher counts as marks, with a warning: "anything above
    0" would make every pixel a mark, and so would half the maximum of 128/255. An integer image
    with more levels, a background of 0 and each mark of one value (a label image such as the
    generator's ``ids.png`` or registration's ``am_coordinates.png``) counts every labelled pixel.
    Any other mask with more levels (resampled edges, JPEG noise, a background of 1-2) is cut at
    half its maximum, with a warning, since "anything above 0" would make its whole noisy
    background one mark.

    The rules that rank levels (the higher of two, half the maximum) mean nothing below 0 (is -1
    on -2 a mark?): a mask with values below 0 that is neither two levels on 0 nor a label image is
    refused. So is a mask with NaN or infinite values (the gaps of a float export): they are neither
    mark nor background, and each rule above would silently count them as one or the other.

    Colour counts by luminance. Of an RGBA mask, the alpha channel counts where the colour is the
    same everywhere (marks drawn only in transparency), the colour where alpha is; where both vary,
    a mark is a pixel both opaque and marked in colour.

    A mask whose marks cover more than half of it is read all the same (a crop of a dense
    lattice may), but with a warning naming the file: marks and background are more likely
    swapped (white tissue on black marks, red marks on white read by luminance).
    """
    binary = _binary_mask(mask, path)
    if 2 * int(binary.sum()) > binary.size:
        log.warning("mask %s marks %.0f%% of its pixels: marks are normally the smaller part of a mask, so its "
                    "marks and background may be swapped; if so, save it inverted, marks bright (255) on 0",
                    path, 100 * float(binary.mean()))
    return binary


def _binary_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    """:func:`binary_mask` without its check of the marks' share (an RGBA mask is judged whole, not by channel)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 4 and mask.shape[0] and mask.shape[1]:
        colour, alpha = mask[:, :, :3], mask[:, :, 3]
        plain_colour = bool((colour == colour[0, 0]).all())
        plain_alpha = bool((alpha == alpha[0, 0]).all())
        if plain_colour and not plain_alpha:
            return _binary_mask(alpha, path)
        if not plain_alpha:
            return _binary_mask(colour, path) & _binary_mask(alpha, path)
        mask = colour
    mask = to_grey(mask, name=str(path))
    check_finite(mask, f"mask {path}")
    levels = np.unique(mask) if mask.dtype != np.uint8 else np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    if levels.size == 1 or (levels.size == 2 and bool((levels == 0).any())):
        return (mask != 0).astype(np.uint8)
    if _is_label_image(mask):
        log.info("mask %s holds %d labels on a background of 0: every labelled pixel counts as a mark", path,
                 levels.size - 1)
        return (mask != 0).astype(np.uint8)
    _check_not_negative(levels, path)
    top = levels[-1]
    if levels.size == 2:
        # Cut between the two, not at half the maximum: of 128/255 that would mark every pixel too.
        log.warning("mask %s holds the two levels %s and %s, neither of them 0: the pixels of %s count as marks; "
                    "save it as a 0/255 mask (marks 255 on 0) to be sure", path, _number(levels[0]),
                    _number(levels[1]), _number(levels[1]))
        return (mask > levels[0]).astype(np.uint8)
    log.warning("mask %s holds %d grey levels, not two (0 and %s): pixels above %s count as marks; save it as a "
                "0/255 mask to be sure", path, levels.size, _number(top),
                _number(top // 2 if mask.dtype.kind in "ui" else top / 2))
    return (mask > top / 2).astype(np.uint8)


def _check_not_negative(levels: np.ndarray, path: Path) -> None:
    """Refuse a mask whose sorted ``levels`` go below 0 where no background of 0 says which are marks:
    the higher of two levels, or half the maximum, picks marks only among values of 0 and above."""
    if levels[0] >= 0:
        return
    held = (f"the two levels {_number(levels[0])} and {_number(levels[1])}" if levels.size == 2
            else f"{levels.size} levels from {_number(levels[0])} to {_number(levels[-1])}")
    raise InputError(f"mask {path} holds {held}: with values below 0 a mask is read only as marks on a "
                     "background of 0 (any value but 0 a mark); save it as a 0/255 mask (marks 255 on 0)")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


def _is_label_image(mask: np.ndarray) -> bool:
    """Whether an integer mask of several levels holds labels: most pixels 0, each mark of one value."""
    if mask.dtype.kind not in "ui":
        return False
    marked = mask != 0
    if 2 * int(marked.sum()) >= mask.size:
        return False  # a background of 0 is what marks are labelled on
    inside = differ = 0
    for a, b, ma, mb in ((mask[:, 1:], mask[:, :-1], marked[:, 1:], marked[:, :-1]),
                         (mask[1:, :], mask[:-1, :], marked[1:, :], marked[:-1, :])):
        both = ma & mb
        inside += int(both.sum())
        differ += int((both & (a != b)).sum())
    return inside > 0 and differ <= LABEL_EDGE_SHARE * inside


def check_pair_sizes(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Raise InputError naming every image whose mask has another size, from their headers, before any
    image is read: an evaluation must not fail at its last image after minutes of model work."""
    wrong = []
    for source, mask in pairs:
        image_header, mask_header = read_header(source), read_header(mask)
        if (image_header.height, image_header.width) != (mask_header.height, mask_header.width):
            wrong.append(f"{source} is {image_header.width} x {image_header.height} px but its mask {mask} is "
                         f"{mask_header.width} x {mask_header.height} px")
    if wrong:
        shown = "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise InputError(f"{shown}: every mask must have its image's size")


def check_scorable_sizes(sources: Iterable[Path], *, scale: float = 1.0) -> None:
    """Raise InputError naming every image too small to be scored, from its header, before any image is
    read: the pipeline refuses an image under MIN_IMAGE_SIDE_PX on a side at the model's scale (its mask
    would be made of padding), so there is no pipeline mask to measure it by."""
    problems = []
    for source in sources:
        header = read_header(source)
        try:
            check_image_size(header.height, header.width, scale=scale, name=str(source),
                             advice="leave it out of the images scored, or use a larger crop")
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(shown)


MIN_TRAINING_SIDE_PX = 8
"""The smallest side a training image may have: smaller, it cannot hold one mark at the generator's
smallest visible pitch (:data:`am.synth.dataset.MIN_VISIBLE_PITCH`), and every crop of it is a mirror
pattern of a few pixels (crops are reflect-padded), which teaches the model nothing it will meet."""


def check_trainable_sizes(sources: Iterable[Path]) -> None:
    """Raise InputError naming every training image under :data:`MIN_TRAINING_SIDE_PX` on a side, from its
    header, before any image is read. Larger images smaller than a crop are kept: reflect-padded, a labelled
    crop of a few marks still shows them as they look."""
    problems = []
    for source in sources:
        header = read_header(source)
        if min(header.height, header.width) < MIN_TRAINING_SIDE_PX:
            problems.append(f"{source} is {header.height} x {header.width} px (height x width)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"{shown}: a training image needs at least {MIN_TRAINING_SIDE_PX} px on each side to "
                         "hold a mark; leave it out of the training data, or use a larger crop")


def find_mask(source: Path, mask_dir: Path, *, alone: bool = True) -> Path | None:
    """The mask of ``source`` in ``mask_dir``: the same file name, else, when ``source`` is ``alone`` (no
    other image beside it has its stem), the same stem with any image suffix.

    Of two images sharing a stem (``a.png`` and ``a.tif``), each needs the mask of its own file name:
    by its stem, the mask ``a.png`` would be taken for both, and one image silently scored or trained
    on against the other's marks.
    """
    suffixes = IMAGE_SUFFIXES if alone else ()
    candidates = (mask_dir / source.name, *(mask_dir / (source.stem + suffix) for suffix in suffixes))
    return next((c for c in candidates if c.is_file()), None)


def pair_mask(source: Path, sources: list[Path], mask_dir: Path) -> Path | None:
    """The mask of ``source``, one of the images ``sources`` of one folder, in ``mask_dir`` (:func:`find_mask`)."""
    return find_mask(source, mask_dir, alone=not _stem_sharers(source, sources))


def missing_mask_note(source: Path, sources: list[Path], mask_dir: Path) -> str:
    """Why ``mask_dir`` holds no mask for ``source`` (one of ``sources``) where a reason can be told, for the
    message that refuses it: the images that share its stem, or a mask in a format that is not read."""
    sharers = _stem_sharers(source, sources)
    if not sharers:
        return unread_mask(source, mask_dir)
    if len(sharers) == 1:
        named = f"the image {sharers[0].name} beside it shares"
    else:
        named = f"the images {', '.join(p.name for p in sharers)} beside it share"
    return (f" ({named} its stem, so only a mask named {source.name} is its own: one named by the stem alone "
            "would be taken for both images; give each image a mask of its own file name, or rename one image and "
            "its mask)")


def _stem_sharers(source: Path, sources: list[Path]) -> list[Path]:
    """The images of ``sources`` other than ``source`` with its stem (``a.tif`` beside ``a.png``)."""
    return [p for p in sources if p.stem == source.stem and p != source]


def split_files(root: Path, split: str) -> list[LabelledFile]:
    """Every image/mask pair under ``root/split/<dataset>/<group>/``, unread; raises InputError if
    there is none or an image has no mask, before anything is read.

    Names starting with "." are skipped at every level, as :mod:`am.dataset` skips them: a Mac
    leaves ``._0000.png`` (AppleDouble, not a PNG) beside every copied file, and Jupyter a
    ``.ipynb_checkpoints`` folder whose copies would train twice. JPEG and other images that are
    not read are named: a group of them alone is an error (it would add nothing, silently), a few
    among readable images a warning.
    """
    base = Path(root) / split
    if not base.is_dir():
        raise InputError(f"{base} does not exist; expected {root}/{split}/<dataset>/<group>/{{source,mask}}/*.png")
    files, unread = [], []
    for group in (g for dataset in _visible_folders(base) for g in _visible_folders(dataset)):
        source_dir, mask_dir = group / "source", group / "mask"
        if not source_dir.is_dir():
            continue
        sources, others = listed_images(source_dir)
        if others and not sources:
            raise InputError(f"{source_dir} holds only {unread_images(others)}, which training does not read (only "
                             f".png, .tif and .tiff: lossless); convert each image and its mask, e.g. "
                             f"{png_conversion(others[0])}, and keep only the converted files there")
        unread += others
        for source in sources:
            mask_path = pair_mask(source, sources, mask_dir)
            if mask_path is None:
                raise InputError(f"{source} has no mask in {mask_dir}{missing_mask_note(source, sources, mask_dir)}; "
                                 "every source image needs one of the same name")
            files.append(LabelledFile(source, mask_path, str(source.relative_to(root))))
    if unread:
        log.warning("%s under %s not read (only .png, .tif and .tiff are); convert them to train on them, e.g. %s",
                    unread_images(unread), base, png_conversion(unread[0]))
    if not files:
        raise InputError(f"no images found under {base}/<dataset>/<group>/source/")
    return files


def listed_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images of ``folder`` that are read (:data:`IMAGE_SUFFIXES`) and those in a format that is not (JPEG,
    BMP, ...: :data:`am.dataset.OTHER_IMAGE_KINDS`), each sorted by name, for a caller to name the second
    rather than leave them out in silence. Names starting with "." are no images: a Mac leaves
    ``._0000.png`` (AppleDouble, not a PNG) beside every copied file."""
    visible = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return ([p for p in visible if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in visible if p.suffix.lower() in OTHER_IMAGE_KINDS])


def _visible_folders(folder: Path) -> list[Path]:
    """The folders in ``folder`` that :func:`am.dataset.group_folders` would take: no hidden ones, no __MACOSX."""
    return [folder / name for name in group_folders(folder)]


def unread_images(paths: list[Path]) -> str:
    """``paths`` named for a message, the first five in full: "a.jpg (JPEG)" or "3 files: a.jpg (JPEG), ..."."""
    named = [f"{p} ({OTHER_IMAGE_KINDS[p.suffix.lower()]})" for p in paths[:5]]
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return named[0] if len(paths) == 1 else f"{len(paths)} files: {', '.join(named)}{more}"


def unread_mask(source: Path, mask_dir: Path) -> str:
    """What ``mask_dir`` holds for ``source`` in a format that is not read, said with how to convert it (or "")."""
    found = [mask_dir / (source.stem + suffix) for suffix in OTHER_IMAGE_KINDS]
    found = [p for p in found if p.is_file()]
    if not found:
        return ""
    return (f" (only {unread_images(found)}, which is not read: convert it, e.g. {png_conversion(found[0])}, and keep "
            "only the converted file there)")


def load_split(root: Path, split: str) -> list[Labelled]:
    """Every image/mask pair under ``root/split/<dataset>/<group>/``, read; raises InputError if there is none."""
    return read_pairs(split_files(root, split), where=Path(root) / split)


def read_pairs(files: list[LabelledFile], *, where: Path | str) -> list[Labelled]:
    """The listed pairs, read: listing and reading are apart so that a command can check every pair's
    sizes from the headers first, without listing the folders twice. ``where`` is what the log names."""
    items = [f.read() for f in files]
    log.info("loaded %d labelled images from %s", len(items), where)
    return items


def synthetic_images(
    *,
    count: int,
    size: int,
    seed: int,
    pitch_range: tuple[float, float] = (20.0, 85.0),
    progress: Callable[[Iterable], Iterable] | None = None,
    labels: str = "visible",
    blob_rate: float = 1.0,
    polarity_mix: Mapping[str, float] | None = None,
    workers: int = 0,
) -> list[Labelled]:
    """``count`` generated images of ``size`` x ``size``; image ``i`` depends only on ``(seed, i)``.

    ``workers`` > 1 renders them on that many processes (same images, same order).
    """
    images: Iterable[Labelled] = iter_synthetic_images(
        count=count, size=size, seed=seed, pitch_range=pitch_range, labels=labels, blob_rate=blob_rate,
        polarity_mix=polarity_mix, workers=workers)
    return list(images if progress is None else progress(images))


def iter_synthetic_images(
    *,
    count: int,
    size: int,
    seed: int,
    pitch_range: tuple[float, float] = (20.0, 85.0),
    labels: str = "visible",
    blob_rate: float = 1.0,
    polarity_mix: Mapping[str, float] | None = None,
    workers: int = 0,
) -> Iterator[Labelled]:
    """The images of :func:`synthetic_images`, each rendered as it is reached: a caller that scores
    them one by one holds one image, not all N, and shows progress from the first."""
    samples = iter_samples(seed, count, size=size, pitch_range=pitch_range, labels=labels, blob_rate=blob_rate,
                           polarity_mix=polarity_mix, workers=workers)
    for index, sample in enumerate(samples):
        yield Labelled.from_arrays(sample.image, sample.mask, name=synthetic_name(seed, index))


def synthetic_name(seed: int, index: int) -> str:
    """The name of synthetic image ``index`` of series ``seed``, known without rendering it (so that
    name clashes are found before any work)."""
    return f"synthetic/{seed}/{index:05d}"


class CropDataset(Dataset):
    """``length`` random augmented crops per epoch; crop ``k`` of epoch ``e`` depends on ``(seed, e, k)``."""

    def __init__(
        self,
        items: list[Labelled],
        *,
        crop: int,
        length: int,
        seed: int,
        scale: tuple[float, float] = (0.7, 1.4),
        augment: bool = True,
        low_resolution: float = 0.0,
        low_resolution_factor: tuple[float, float] = (1.5, 2.5),
    ) -> None:
        if not items:
            raise InputError("no training images were given")
        self.items = items
        self.crop = crop
        self.length = length
        self.seed = seed
        self.scale = scale
        self.augment = augment
        self.low_resolution = low_resolution
        self.low_resolution_factor = low_resolution_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item = self.items[int(rng.integers(len(self.items)))]
        scale = self.scale if self.augment else (1.0, 1.0)
        image, mask, weight = random_crop(rng, item.image, item.mask, item.weight, size=self.crop, scale=scale)
        if self.augment:
            image, mask, weight = flip_rotate(rng, image, mask, weight)
            image = photometric(rng, image)
            # The probability is tested before drawing from the generator, so that runs without the
            # augmentation see exactly the crops they saw before it existed.
            if self.low_resolution > 0 and rng.random() < self.low_resolution:
                image = lose_resolution(rng, image, factor=self.low_resolution_factor)
        return (
            torch.from_numpy(np.ascontiguousarray(image))[None],
            torch.from_numpy(np.ascontiguousarray(mask)).float()[None],
            torch.from_numpy(np.ascontiguousarray(weight)).float()[None],
        )
