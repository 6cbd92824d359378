"""PASCAL VOC format reading: annotations and dataset splits (ROS-free core).

Coordinate convention (used by training, evaluation and the metric alike)
--------------------------------------------------------------------------
VOC XML stores 1-based, inclusive integer pixel indices: a box covering pixels 1..W of a W-wide image
has ``xmin=1, xmax=W``. We convert to 0-based *continuous pixel edges*, the convention of torchvision
detection models and of :class:`~ssd_ros.vision.detections.Detections`::

    x_min = xmin - 1,   y_min = ymin - 1,   x_max = xmax,   y_max = ymax

so the box above becomes ``[0, W]``, its width is ``x_max - x_min`` with no "+1", and a full-image box
is exactly the image rectangle. This is the same as ssd.pytorch's ``xmin - 1`` on the minimum corner and
keeps the true width on the maximum corner. The metric (:mod:`ssd_ros.evaluation.voc_metric`) therefore computes IoU
without the devkit's "+1" on widths, which is the devkit's IoU expressed in these coordinates.

Boxes are then clamped into ``[0, width] x [0, height]``; boxes with zero or negative width or height
after clamping are dropped and counted in :attr:`VocAnnotation.dropped` (they cannot be trained on nor
matched).

Dataset layouts
---------------
* a VOCdevkit root (``VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main}``), split names like
  ``"2007/trainval"``: :meth:`VocSplit.from_devkit`;
* a single VOC-year-like folder (``Annotations/``, ``JPEGImages/``, optional ``ImageSets/Main/*.txt``) or a
  plain folder of ``name.jpg`` + ``name.xml`` pairs (e.g. labelImg output): :meth:`VocSplit.from_folder`.

An image is found by its id with any of :data:`~ssd_ros.vision.image_codec.IMAGE_SUFFIXES` in any letter case
(``name.JPG`` too) and read with :func:`~ssd_ros.vision.image_codec.read_image_file`, the one image file reader.
"""

from __future__ import annotations

import glob
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ssd_ros.vision.image_codec import IMAGE_SUFFIXES

__all__ = [
    "VocAnnotation",
    "VocFormatError",
    "VocItem",
    "VocSplit",
    "discover_classes",
    "parse_annotation",
]

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


class VocFormatError(ValueError):
    """A VOC dataset file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class VocAnnotation:
    """The objects of one image, boxes in 0-based continuous pixel edges (see the module docstring).

    Attributes:
        filename: the ``<filename>`` element (informational; the split's image path is authoritative).
        width: image width in pixels from ``<size>``.
        height: image height in pixels from ``<size>``.
        boxes: (N, 4) float32 ``x_min, y_min, x_max, y_max``, clamped into the image, all with positive area.
        names: the N class names (surrounding whitespace stripped; inner spaces kept).
        difficult: (N,) bool ``<difficult>`` flags (absent or empty element = not difficult, a number is
            difficult when non-zero, ``true``/``false`` in any letter case).
        dropped: number of degenerate boxes removed while parsing.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    names: list[str]
    difficult: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.names)

    def label_indices(self, class_names: Sequence[str], *, source: str | Path = "") -> np.ndarray:
        """(N,) int64 indices of ``names`` in ``class_names``; a VocFormatError names any unknown class."""
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({n for n in self.names if n not in index})
        if unknown:
            where = source or self.filename
            raise VocFormatError(f"{where}: classes {unknown} are not in the class list {list(class_names)}")
        return np.asarray([index[n] for n in self.names], np.int64)


def _text(element: ET.Element, tag: str, xml_path: Path, what: str) -> str:
    """The stripped text of a required child element."""
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VocFormatError(f"{xml_path}: missing <{tag}> in {what}")
    return child.text.strip()


def _number(element: ET.Element, tag: str, xml_path: Path, what: str) -> float:
    """A required finite number (VOC tools write integers, some write floats like ``273.5``)."""
    text = _text(element, tag, xml_path, what)
    try:
        value = float(text)
    except ValueError:
        raise VocFormatError(f"{xml_path}: <{tag}> in {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise VocFormatError(f"{xml_path}: <{tag}> in {what} is not finite: {text!r}")
    return value


def _difficult(flag: ET.Element | None, xml_path: Path, what: str) -> bool:
    """An object's ``<difficult>`` flag: absent or empty is not difficult, a number is difficult when non-zero.

    The devkit writes ``0``/``1``; other tools write ``0.0`` or ``false``, which must not read as difficult (a
    difficult object leaves the recall's denominator and its detections are ignored). Anything else is refused
    rather than guessed.
    """
    text = (flag.text or "").strip().lower() if flag is not None else ""
    if text in ("", "false"):
        return False
    if text == "true":
        return True
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise VocFormatError(f"{xml_path}: <difficult> in {what} is not 0/1 or true/false: {flag.text.strip()!r}")
    return value != 0.0


def parse_annotation(xml_path: str | Path) -> VocAnnotation:
    """Read one VOC XML annotation file.

    Raises:
        VocFormatError: the file is missing, not XML, lacks ``<size>``, an object lacks ``<name>`` or
            ``<bndbox>``, a number or a ``<difficult>`` flag is malformed; the message names the file and the problem.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise VocFormatError(f"{xml_path}: annotation file not found") from None
    except ET.ParseError as error:
        raise VocFormatError(f"{xml_path}: broken XML ({error})") from None
    except OSError as error:
        raise VocFormatError(f"{xml_path}: cannot read annotation ({error})") from None

    size = root.find("size")
    if size is None:
        raise VocFormatError(f"{xml_path}: missing <size> (image width/height)")
    width = _number(size, "width", xml_path, "<size>")
    height = _number(size, "height", xml_path, "<size>")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise VocFormatError(f"{xml_path}: bad image size {width:g}x{height:g} in <size>")

    boxes, names, difficult = [], [], []
    dropped = 0
    for i, obj in enumerate(root.iter("object")):
        what = f"<object> #{i + 1}"
        name = _text(obj, "name", xml_path, what)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VocFormatError(f"{xml_path}: missing <bndbox> in {what} ({name})")
        x1, y1, x2, y2 = (_number(bndbox, tag, xml_path, f"{what} ({name})") for tag in _BOX_TAGS)
        # 1-based inclusive indices -> 0-based continuous edges, clamped into the image.
        box = [min(max(x1 - 1, 0.0), width), min(max(y1 - 1, 0.0), height), min(x2, width), min(y2, height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped += 1
            continue
        boxes.append(box)
        names.append(name)
        difficult.append(_difficult(obj.find("difficult"), xml_path, f"{what} ({name})"))
    filename_element = root.find("filename")
    filename = (filename_element.text or "").strip() if filename_element is not None else ""
    return VocAnnotation(
        filename=filename,
        width=int(width),
        height=int(height),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        names=names,
        difficult=np.asarray(difficult, bool).reshape(-1),
        dropped=dropped,
    )


class VocItem(NamedTuple):
    """One image of a split: its id (file stem), image file and annotation file (unpacks as a tuple)."""

    image_id: str
    image_path: Path
    xml_path: Path

    def annotation(self) -> VocAnnotation:
        """Parse this item's annotation."""
        return parse_annotation(self.xml_path)


def _find_image(folder: Path, stem: str) -> Path | None:
    """The image ``stem`` + one of IMAGE_SUFFIXES in any letter case in ``folder``, or None.

    Suffixes are preferred in IMAGE_SUFFIXES order. All lower or all upper case (``a.jpg``, ``a.JPG``) costs
    a file check or two; another case (``a.Jpg``) one listing of the files named ``stem.*``.
    """
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    found = {p.suffix.lower(): p for p in folder.glob(f"{glob.escape(stem)}.*") if p.stem == stem and p.is_file()}
    return next((found[suffix] for suffix in IMAGE_SUFFIXES if suffix in found), None)


def _plain_name(name: str) -> bool:
    """True for a name that stays inside its folder: no path separator, not ``.``/``..``, no NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0"))


def _read_image_set(list_file: Path) -> list[str]:
    """Image ids from an ``ImageSets/Main/<set>.txt`` file (first column; per-class files have two).

    An id names files inside ``Annotations/`` and ``JPEGImages/``: one with a path separator (or ``..``)
    would read files outside the dataset, so the list is refused with the offending line.
    """
    if not list_file.is_file():
        raise VocFormatError(f"{list_file}: image set list not found")
    ids = []
    # utf-8-sig: a list saved by a Windows editor starts with a byte-order mark, which would join the first id.
    for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if not _plain_name(image_id):
            raise VocFormatError(f"{list_file}:{number}: image id {image_id!r} is not a plain file name")
        ids.append(image_id)
    return ids


@dataclass(frozen=True)
class VocSplit(Sequence):
    """An ordered list of :class:`VocItem` (a dataset split, or several concatenated).

    Every listed image and annotation file is checked to exist when the split is built, so a missing file
    fails before any training or evaluation work with a VocFormatError naming it.
    """

    name: str
    items: tuple[VocItem, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # noqa: ANN001 - int or slice, as Sequence
        return self.items[index]

    def __iter__(self) -> Iterator[VocItem]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"VocSplit({self.name!r}, {len(self)} images)"

    @classmethod
    def concat(cls, splits: Iterable[VocSplit]) -> VocSplit:
        """Several splits as one (e.g. VOC07 trainval + VOC12 trainval), in the given order."""
        splits = list(splits)
        return cls("+".join(s.name for s in splits), tuple(item for s in splits for item in s.items))

    @classmethod
    def from_devkit(cls, devkit_root: str | Path, split: str) -> VocSplit:
        """A split of a VOCdevkit: ``split`` is ``"YEAR/SET"``, e.g. ``"2007/test"`` or ``"2012/trainval"``.

        ``devkit_root`` is the folder holding ``VOC2007``, ``VOC2012``... (or its parent holding ``VOCdevkit``,
        as the official tar files extract).
        """
        root = Path(devkit_root)
        if not root.is_dir():
            raise VocFormatError(f"{root}: VOCdevkit folder not found")
        year, sep, image_set = split.partition("/")
        if not sep or not year or not image_set:
            raise VocFormatError(f"{split!r}: a devkit split is written YEAR/SET, e.g. 2007/test")
        if not (root / f"VOC{year}").is_dir() and (root / "VOCdevkit" / f"VOC{year}").is_dir():
            root = root / "VOCdevkit"
        year_dir = root / f"VOC{year}"
        if not year_dir.is_dir():
            available = sorted(p.name for p in root.glob("VOC*") if p.is_dir())
            raise VocFormatError(f"{year_dir}: year folder not found (available: {available})")
        return cls._from_year_folder(year_dir, image_set, name=f"VOC{year}/{image_set}")

    @classmethod
    def from_folder(cls, path: str | Path, image_set: str | None = None) -> VocSplit:
        """A VOC-year-like folder (``Annotations/`` + ``JPEGImages/``) or a plain image+XML folder.

        For a year-like folder, ``image_set`` names ``ImageSets/Main/<image_set>.txt``; without it every
        ``Annotations/*.xml`` is used. A plain folder lists every ``*.xml`` (sorted) with the image of the same
        stem beside it; ``image_set`` is not accepted there. An image without an XML file is not listed (it
        may be unlabelled rather than empty): give negative images an XML with no ``<object>``.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise VocFormatError(f"{folder}: dataset folder not found")
        if (folder / "Annotations").is_dir():
            return cls._from_year_folder(folder, image_set, name=str(folder) + (f"/{image_set}" if image_set else ""))
        if image_set is not None:
            raise VocFormatError(f"{folder}: image set {image_set!r} given but the folder has no Annotations/")
        items = []
        for xml_path in sorted(folder.glob("*.xml")):
            image_path = _find_image(folder, xml_path.stem)
            if image_path is None:
                raise VocFormatError(f"{xml_path}: no image {xml_path.stem}.jpg/.png/... beside it")
            items.append(VocItem(xml_path.stem, image_path, xml_path))
        if not items:
            raise VocFormatError(f"{folder}: no VOC annotations (*.xml or Annotations/) found")
        return cls(str(folder), tuple(items))

    @classmethod
    def _from_year_folder(cls, folder: Path, image_set: str | None, name: str) -> VocSplit:
        annotations, images = folder / "Annotations", folder / "JPEGImages"
        for required in (annotations, images):
            if not required.is_dir():
                raise VocFormatError(f"{required}: folder not found")
        if image_set is None:
            ids = sorted(p.stem for p in annotations.glob("*.xml"))
        elif not _plain_name(image_set):
            raise VocFormatError(f"image set {image_set!r} is not a plain name (like trainval or test)")
        else:
            ids = _read_image_set(folder / "ImageSets" / "Main" / f"{image_set}.txt")
        items = []
        for image_id in ids:
            xml_path = annotations / f"{image_id}.xml"
            if not xml_path.is_file():
                raise VocFormatError(f"{xml_path}: annotation file not found (listed in split {name})")
            image_path = _find_image(images, image_id)
            if image_path is None:
                raise VocFormatError(f"{images / (image_id + '.jpg')}: image file not found (listed in split {name})")
            items.append(VocItem(image_id, image_path, xml_path))
        if not items:
            raise VocFormatError(f"{folder}: split {name} lists no images")
        return cls(name, tuple(items))


def discover_classes(splits: VocSplit | Iterable[VocSplit]) -> tuple[str, ...]:
    """The sorted unique class names used in the annotations (for custom datasets without a class list).

    Objects of every kind count, difficult ones included; degenerate boxes dropped while parsing do not.
    """
    if isinstance(splits, VocSplit):
        splits = [splits]
    return tuple(sorted({name for split in splits for item in split for name in item.annotation().names}))
