"""A torch Dataset over :mod:`ssd_ros.evaluation.voc` splits, producing SSD training targets.

Labels: model label ``i + 1`` is ``class_names[i]``; 0 is the background (the SSD module's convention, and
the model card's).

``difficult`` objects: by default they are training targets, as in the released Caffe SSD
(``train_on_diff_gt = True`` / ``use_difficult_gt`` in ``ssd_pascal.py``, the run behind the paper's 77.2).
ssd.pytorch drops them (``keep_difficult=False``). Dropping them turns real objects into background, which
hard-negative mining then pushes the model to suppress, while the VOC metric ignores detections of them
either way; so the default keeps them, and ``skip_difficult=True`` gives the ssd.pytorch behaviour.

Degenerate boxes are dropped by the parser (:func:`ssd_ros.evaluation.voc.parse_annotation`, after clamping into the
image) and again after augmentation; images with no boxes are valid samples (pure negatives): torchvision's
SSD matches every default box to background for them and, with no positives, they add no loss terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ssd_ros.evaluation.voc import VocAnnotation, VocFormatError, VocSplit
from ssd_ros.vision.image_codec import read_image_file

__all__ = ["VocDetectionDataset", "collate_detection", "data_error_message"]


class VocDetectionDataset(Dataset):
    """Images and SSD targets of a :class:`~ssd_ros.evaluation.voc.VocSplit`.

    Every annotation is parsed when the dataset is built, so a broken XML file or an object of a class
    outside ``class_names`` fails before training with a :class:`~ssd_ros.evaluation.voc.VocFormatError` naming the
    file (missing files are already caught when the split is listed). An image is read when its sample is
    drawn (:func:`~ssd_ros.vision.image_codec.read_image_file`): an unreadable one raises
    :class:`~ssd_ros.vision.image_codec.ImageDecodeError`, one whose size differs from its XML a VocFormatError.

    Items are ``(image, target)``: ``image`` a :class:`tv_tensors.Image` (uint8 CHW RGB) or, with
    ``transforms``, whatever they return; ``target`` a dict with ``boxes`` (:class:`tv_tensors.BoundingBoxes`,
    XYXY pixels), ``labels`` (int64, 1-based), ``difficult`` (bool) and ``image_id`` (int, the split index).

    The key may be an index or ``(index, seed)``: with a seed, ``transforms`` run under
    ``torch.manual_seed(seed)`` in a forked RNG, so a sample's augmentation depends only on the sampler's
    stream (the same with any number of workers, and after a resume), not on which process draws it.

    Args:
        split: the images and annotation files.
        class_names: the class list, background excluded (defines the labels).
        transforms: ``(image, target) -> (image, target)``, e.g. :class:`training.presets.SSDTrainPreset`.
        skip_difficult: drop objects flagged difficult (see the module docstring for the default).
    """

    def __init__(
        self,
        split: VocSplit,
        class_names: Sequence[str],
        *,
        transforms=None,
        skip_difficult: bool = False,
    ) -> None:
        self.split = split
        self.class_names = tuple(class_names)
        self.transforms = transforms
        self.skip_difficult = skip_difficult
        self.annotations: list[VocAnnotation] = []
        self._labels: list[np.ndarray] = []
        for item in split:
            annotation = item.annotation()
            self.annotations.append(annotation)
            self._labels.append(annotation.label_indices(self.class_names, source=item.xml_path) + 1)

    def __len__(self) -> int:
        return len(self.split)

    def num_objects(self) -> int:
        """Objects that become training targets (difficult ones excluded when skipped)."""
        if self.skip_difficult:
            return int(sum((~a.difficult).sum() for a in self.annotations))
        return int(sum(len(a) for a in self.annotations))

    def load(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The untransformed sample ``index``."""
        item = self.split[index]
        annotation = self.annotations[index]
        rgb = read_image_file(item.image_path)
        height, width = rgb.shape[:2]
        if (width, height) != (annotation.width, annotation.height):
            raise VocFormatError(
                f"{item.image_path}: image is {width}x{height} but {item.xml_path} says "
                f"{annotation.width}x{annotation.height} (boxes would be misplaced)"
            )
        keep = ~annotation.difficult if self.skip_difficult else np.ones(len(annotation), bool)
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(annotation.boxes[keep]), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(self._labels[index][keep]),
            "difficult": torch.from_numpy(annotation.difficult[keep]),
            "image_id": index,
        }
        return image, target

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.load(index)
        if self.transforms is None:
            return image, target
        if seed is None:
            return self.transforms(image, target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transforms(image, target)


def data_error_message(error: Exception) -> str:
    """``error``'s own message, without the worker traceback a DataLoader wraps around it.

    An error raised in a DataLoader worker process reaches the main process as a new exception of the same
    type whose message is "Caught X in DataLoader worker process N." and the worker's traceback, ending in
    the line "module.X: message"; the user needs that message, the one line that names the file.
    """
    text = str(error)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last.removeprefix(prefix)


def collate_detection(batch):
    """``(images, targets)`` lists for torchvision detection models (plain tensors, no tv_tensors)."""
    images = [image.as_subclass(torch.Tensor) for image, _ in batch]
    targets = [
        {key: value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value for key, value in t.items()}
        for _, t in batch
    ]
    return images, targets
