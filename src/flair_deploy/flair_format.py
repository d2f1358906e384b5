"""The FLAIR #1 data format: band names, statistics, nomenclature, patch lists and raster suffixes.

One home for what IGN's FLAIR #1 dataset fixes and every stage relies on:

* :data:`FLAIR_BANDS`: the band order of FLAIR image patches (R, G, B, near infrared, elevation);
* :data:`FLAIR_RVBIE_MEAN` / :data:`FLAIR_RVBIE_STD` and :func:`flair_statistics`: the dataset's
  per-band statistics, for any subset of bands;
* :data:`FLAIR_CLASSES`: the FLAIR #1 nomenclature (mask code, name, colour);
* :func:`read_patch_csv`: the patch-list reader ``train``, ``evaluate`` and ``export --calibration``
  share (the rule is in its docstring and in ``docs/data.md``);
* :data:`RASTER_SUFFIXES` and :func:`list_rasters`: which files of a folder are rasters, for
  ``detect`` inputs and calibration folders.

This module needs neither torch nor rasterio.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flair_deploy.errors import ConfigError, InputDataError

__all__ = [
    "FLAIR_BANDS",
    "FLAIR_CLASSES",
    "FLAIR_RVBIE_MEAN",
    "FLAIR_RVBIE_STD",
    "RASTER_SUFFIXES",
    "PatchPair",
    "flair_statistics",
    "is_raster",
    "list_rasters",
    "read_patch_csv",
]

#: Band order of FLAIR #1 image patches: red, green, blue, near infrared, elevation.
FLAIR_BANDS: tuple[str, ...] = ("R", "G", "B", "NIR", "E")

#: FLAIR #1 statistics for (R, G, B, NIR, elevation), as published in IGN's ``flair-1-config.yaml``.
FLAIR_RVBIE_MEAN: tuple[float, ...] = (105.08, 110.87, 101.82, 106.38, 53.26)
FLAIR_RVBIE_STD: tuple[float, ...] = (52.17, 45.38, 44.0, 39.69, 79.3)

#: FLAIR #1 nomenclature: mask code → (name, colour) as published with the dataset.
FLAIR_CLASSES: tuple[tuple[int, str, str], ...] = (
    (1, "building", "#db0e9a"),
    (2, "pervious surface", "#938e7b"),
    (3, "impervious surface", "#f80c00"),
    (4, "bare soil", "#a97101"),
    (5, "water", "#1553ae"),
    (6, "coniferous", "#194a26"),
    (7, "deciduous", "#46e483"),
    (8, "brushwood", "#f3a60d"),
    (9, "vineyard", "#660082"),
    (10, "herbaceous vegetation", "#55ff00"),
    (11, "agricultural land", "#fff30d"),
    (12, "plowed land", "#e4df7c"),
    (13, "swimming pool", "#3de6eb"),
    (14, "snow", "#ffffff"),
    (15, "clear cut", "#8ab3a0"),
    (16, "mixed", "#6b714f"),
    (17, "ligneous", "#c5dc42"),
    (18, "greenhouse", "#9999ff"),
    (19, "other", "#000000"),
)

#: Suffixes (lower case) of the files taken as rasters from a folder: GeoTIFF, GDAL virtual rasters and
#: JPEG 2000 (IGN's BD ORTHO is distributed as ``.jp2``).
RASTER_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".vrt", ".jp2")


def flair_statistics(bands: Sequence[str | int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return FLAIR #1 ``(mean, std)`` restricted to *bands*, in the order given.

    Args:
        bands: Band names from :data:`FLAIR_BANDS` (case-insensitive), or 1-based FLAIR band numbers
            (1 = R ... 5 = E), e.g. ``("R", "G", "B")`` or ``(4, 1, 2)``.

    Returns:
        The per-band means and standard deviations.

    Raises:
        ConfigError: For a band FLAIR has no statistics for.
    """
    upper = [b.upper() for b in FLAIR_BANDS]
    index: list[int] = []
    unknown: list[str | int] = []
    for b in bands:
        if isinstance(b, str) and b.upper() in upper:
            index.append(upper.index(b.upper()))
        elif not isinstance(b, str) and 1 <= b <= len(FLAIR_BANDS):
            index.append(b - 1)
        else:
            unknown.append(b)
    if unknown:
        raise ConfigError(
            f"band(s) {unknown} have no FLAIR statistics; FLAIR bands are {', '.join(FLAIR_BANDS)} "
            f"(numbers 1-{len(FLAIR_BANDS)}); give your own mean/std for other bands"
        )
    return tuple(FLAIR_RVBIE_MEAN[i] for i in index), tuple(FLAIR_RVBIE_STD[i] for i in index)


# ---------------------------------------------------------------------------------------------- lists
@dataclass(frozen=True)
class PatchPair:
    """One listed patch: an image raster and its mask (None when the list gives no mask).

    Attributes:
        image: Image path (absolute, or the CSV's folder joined with the listed relative path).
        mask: Mask path, or None.
        line: Line of the CSV the patch was listed on (0 when not read from a list).
    """

    image: Path
    mask: Path | None
    # Two listings of the same files are the same patch, whatever line they were on.
    line: int = field(default=0, compare=False)


_IMAGE_NAMES = ("image", "img", "image_path", "img_path")
_MASK_NAMES = ("mask", "msk", "mask_path", "msk_path")


def read_patch_csv(path: Path, *, require_masks: bool = True) -> list[PatchPair]:
    """Read a FLAIR patch list: one patch per row, image path then mask path.

    The rule (the same for ``train``, ``evaluate`` and ``export --calibration``):

    * FLAIR's own lists have **no header**: column 0 is the image, column 1 the mask, nothing else.
    * A **header row** is accepted as the first non-blank row when it names the columns: one of
      ``image``/``img``/``image_path``/``img_path`` and optionally ``mask``/``msk``/``mask_path``/
      ``msk_path`` (case-insensitive), as pandas or a spreadsheet writes them. Columns are then taken
      by name and other columns are ignored.
    * Cells are stripped; blank lines are skipped.
    * Relative paths are resolved against **the CSV's folder** (IGN's code uses the working directory,
      so its lists only work from one place); ``~`` is expanded.
    * Every listed file must exist; errors name the CSV and the line.

    Args:
        path: The CSV.
        require_masks: Every row must name a mask (training, evaluation); when False, rows may list
            the image alone (calibration, prediction).

    Returns:
        The patches, in file order.

    Raises:
        InputDataError: If the CSV cannot be read or is empty, a row has the wrong number of columns,
            or a listed file does not exist; the message names the CSV and the line.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputDataError(f"cannot read patch list {path}: {reason}") from None
    rows = [(n, cells) for n, cells in rows if any(cells)]
    img_col, msk_col, named = 0, 1, False
    if rows:
        header = [c.lower() for c in rows[0][1]]
        image_names = [h for h in header if h in _IMAGE_NAMES]
        if image_names:
            img_col = header.index(image_names[0])
            mask_names = [h for h in header if h in _MASK_NAMES]
            msk_col = header.index(mask_names[0]) if mask_names else -1
            named = True
            rows = rows[1:]
    if named and require_masks and msk_col < 0:
        raise InputDataError(
            f"{path}, line 1: the header names no mask column ({', '.join(_MASK_NAMES)}); "
            "training and evaluation need 'image,mask' rows"
        )
    expected = "2 columns (image,mask)" if require_masks else "1 or 2 columns (image[,mask])"
    base = path.parent
    pairs: list[PatchPair] = []
    for lineno, cells in rows:
        if named:
            image_text = cells[img_col] if img_col < len(cells) else ""
            mask_text = cells[msk_col] if 0 <= msk_col < len(cells) else ""
        else:
            if len(cells) > 2 or (require_masks and len(cells) < 2):
                raise InputDataError(
                    f"{path}, line {lineno}: got {len(cells)} column(s) {cells!r}, expected {expected} "
                    "as FLAIR's lists, or a header row naming the image and mask columns"
                )
            image_text, mask_text = cells[0], cells[1] if len(cells) == 2 else ""
        if not image_text:
            raise InputDataError(f"{path}, line {lineno}: the image column is empty; expected {expected}")
        if require_masks and not mask_text:
            raise InputDataError(f"{path}, line {lineno}: the mask column is empty; expected {expected}")
        image = _resolve(base, image_text)
        mask = _resolve(base, mask_text) if mask_text else None
        for kind, p in (("image", image), ("mask", mask)):
            if p is not None and not p.is_file():
                listed = Path(image_text if kind == "image" else mask_text).expanduser()
                hint = "" if listed.is_absolute() else f" (relative paths are resolved against {base})"
                raise InputDataError(f"{path}, line {lineno}: {kind} file {p} does not exist{hint}")
        pairs.append(PatchPair(image=image, mask=mask, line=lineno))
    if not pairs:
        raise InputDataError(f"patch list {path} is empty; expected one 'image,mask' row per patch")
    return pairs


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------------------------------------- rasters
def is_raster(path: Path) -> bool:
    """Whether *path* has one of the :data:`RASTER_SUFFIXES` (case-insensitive)."""
    return path.suffix.lower() in RASTER_SUFFIXES


def list_rasters(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Return the rasters (:data:`RASTER_SUFFIXES`) of *folder*, sorted; hidden files are skipped.

    Hidden files include the ``.NAME.<pid>.part`` temporaries of outputs being written.

    Args:
        folder: The folder to list.
        recursive: Also list sub-folders.

    Raises:
        InputDataError: If *folder* is not a folder or holds no raster.
    """
    if not folder.is_dir():
        raise InputDataError(f"{folder} is not a folder; give a folder of rasters")
    found = sorted(
        p
        for p in (folder.rglob("*") if recursive else folder.iterdir())
        if is_raster(p) and p.is_file() and not p.name.startswith(".")
    )
    if not found:
        raise InputDataError(
            f"folder {folder} holds no raster ({', '.join(RASTER_SUFFIXES)}); give raster files or another folder"
        )
    return found
