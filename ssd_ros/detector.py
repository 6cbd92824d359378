"""Inference: RGB images of any size in, :class:`~ssd_ros.detections.Detections` in original pixels out.

The :class:`Detector` runs the model's own torchvision forward (``GeneralizedRCNNTransform``: scale to
[0, 1], normalise, bilinear resize to the network input; SSD post-processing: softmax, per-class score
threshold and top-k, box decoding, per-class NMS, top-N; boxes scaled back to the original image).
Its only additions are the conversion of a uint8 HxWx3 array to the float CHW tensor torchvision
expects (``x / 255``, as ``torchvision.transforms.functional.to_tensor``), the class filter and label
map, and clamping boxes to the image. So its output equals ``model([to_tensor(rgb)])`` with the same
thresholds (tested to within 1 px / 1e-3), with no pre/post-processing drift between training,
evaluation and the robot.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ssd_ros.checkpoint import ModelCard, load_checkpoint, load_coco_pretrained
from ssd_ros.detections import Detections

__all__ = ["Detector", "resolve_device", "validate_image"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as given.

    Raises ValueError for an unknown device string or CUDA requested on a machine without it.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return resolved


def validate_image(image: Any, what: str = "image") -> np.ndarray:
    """Return ``image`` if it is an RGB uint8 HxWx3 numpy array, else raise ValueError saying why."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (RGB uint8 HxWx3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (RGB 0..255, HxWx3), got dtype {image.dtype}")
    if image.ndim != 3:
        raise ValueError(f"{what} must have 3 dimensions (HxWx3 RGB), got shape {image.shape}")
    if image.shape[2] != 3:
        raise ValueError(f"{what} must have 3 channels (RGB, HxWx3), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {image.shape}")
    return image


def _num_model_classes(model: nn.Module) -> int:
    head = getattr(getattr(model, "head", None), "classification_head", None)
    num = getattr(head, "num_columns", None)
    if not isinstance(num, int):
        raise TypeError(f"expected a torchvision SSD model (with head.classification_head), got {type(model).__name__}")
    return num


class Detector:
    """SSD inference on RGB uint8 images of any size.

    Args:
        model: a torchvision ``SSD`` (from :func:`ssd_ros.model.build_model` or a checkpoint).
        class_names: the class names, background excluded; model label ``i + 1`` is ``class_names[i]``
            unless ``label_map`` is given.
        score_threshold: keep detections whose score is strictly above this, in [0, 1].
        nms_iou: per-class NMS IoU threshold in [0, 1].
        max_detections: keep at most this many detections per image (highest scores first), >= 1.
        class_filter: names of the classes to report (None or empty: all). Unknown names raise ValueError.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        label_map: for each model output label, the index into ``class_names`` or -1 to drop it (for
            torchvision's COCO model, whose 91 outputs include background and unused ids).
        card: the :class:`~ssd_ros.checkpoint.ModelCard` the model came with, kept as ``self.card``.
        warmup_runs: forward passes run at construction (first-call allocation, cuDNN autotuning);
            0 to skip.

    ``score_threshold``, ``nms_iou``, ``max_detections`` and ``class_filter`` are attributes that may be
    changed at any time (from any thread); each call uses the values current when it starts. Calls are
    serialised by a lock, so one Detector can be shared by threads.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        *,
        score_threshold: float = 0.3,
        nms_iou: float = 0.45,
        max_detections: int = 100,
        class_filter: Iterable[str] | None = None,
        device: str | torch.device = "auto",
        label_map: Sequence[int] | None = None,
        card: ModelCard | None = None,
        warmup_runs: int = 1,
    ):
        self.class_names: tuple[str, ...] = tuple(class_names)
        if not self.class_names:
            raise ValueError("class_names is empty")
        num_outputs = _num_model_classes(model)
        if label_map is None:
            if num_outputs != len(self.class_names) + 1:
                raise ValueError(
                    f"the model has {num_outputs} outputs (with background) but {len(self.class_names)} "
                    f"class names were given (expected {num_outputs - 1})"
                )
            label_map = [-1] + list(range(len(self.class_names)))
        label_map = [int(v) for v in label_map]
        if len(label_map) != num_outputs or any(v < -1 or v >= len(self.class_names) for v in label_map):
            raise ValueError(
                f"label_map needs {num_outputs} entries, each -1 or an index into the {len(self.class_names)} "
                "class names"
            )
        self.card = card
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self._label_map = torch.tensor(label_map, dtype=torch.int64)
        self._drops_labels = any(v < 0 for v in label_map[1:])
        self._lock = threading.Lock()
        self._score_threshold = 0.0
        self._nms_iou = 0.0
        self._max_detections = 1
        self._class_filter: tuple[str, ...] | None = None
        self._filter_mask: torch.Tensor | None = None
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.class_filter = class_filter
        for _ in range(int(warmup_runs)):
            self.warmup()

    # -- construction helpers ---------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        expect_architecture: str | None = None,
        expect_classes: Sequence[str] | None = None,
        device: str | torch.device = "auto",
        **kwargs: Any,
    ) -> Detector:
        """A Detector for an ssd_ros checkpoint (class names and label map from its card).

        Raises :class:`~ssd_ros.checkpoint.CheckpointError` for a missing or bad file.
        """
        resolved = resolve_device(device)
        model, card = load_checkpoint(
            path, device=resolved, expect_architecture=expect_architecture, expect_classes=expect_classes
        )
        return cls(model, card.class_names, device=resolved, label_map=card.label_map, card=card, **kwargs)

    @classmethod
    def from_coco(cls, *, device: str | torch.device = "auto", progress: bool = False, **kwargs: Any) -> Detector:
        """A Detector for torchvision's COCO-trained SSD300 reporting the 80 COCO class names.

        Downloads the weights once (torch hub cache); raises
        :class:`~ssd_ros.model.WeightsUnavailableError` when offline, saying what to do.
        """
        resolved = resolve_device(device)
        model, card = load_coco_pretrained(resolved, progress=progress)
        return cls(model, card.class_names, device=resolved, label_map=card.label_map, card=card, **kwargs)

    # -- parameters -------------------------------------------------------------------------------

    @property
    def score_threshold(self) -> float:
        """Detections need a score strictly above this (in [0, 1])."""
        return self._score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self._score_threshold = _unit_interval(value, "score_threshold")

    @property
    def nms_iou(self) -> float:
        """IoU above which a lower-scoring box of the same class is suppressed (in [0, 1])."""
        return self._nms_iou

    @nms_iou.setter
    def nms_iou(self, value: float) -> None:
        self._nms_iou = _unit_interval(value, "nms_iou")

    @property
    def max_detections(self) -> int:
        """At most this many detections per image (highest scores)."""
        return self._max_detections

    @max_detections.setter
    def max_detections(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"max_detections must be an integer >= 1, got {value!r}")
        self._max_detections = int(value)

    @property
    def class_filter(self) -> tuple[str, ...] | None:
        """Names of the reported classes, or None for all."""
        return self._class_filter

    @class_filter.setter
    def class_filter(self, names: Iterable[str] | None) -> None:
        if isinstance(names, str):
            raise ValueError(f"class_filter must be a list of class names, not the string {names!r}")
        names = None if names is None else tuple(dict.fromkeys(names))
        if not names:
            self._class_filter, self._filter_mask = None, None
            return
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ValueError(
                f"class_filter has unknown class name(s) {unknown}; the model's classes are {list(self.class_names)}"
            )
        mask = torch.zeros(len(self.class_names), dtype=torch.bool)
        mask[[self.class_names.index(n) for n in names]] = True
        self._class_filter, self._filter_mask = names, mask

    # -- inference --------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray) -> Detections:
        """Detect objects in one RGB uint8 HxWx3 image; boxes in its pixels."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in several RGB uint8 images (sizes may differ) in one forward pass."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        arrays = [validate_image(image, f"image {i}") for i, image in enumerate(images)]
        if not arrays:
            return []
        with self._lock, torch.inference_mode():
            # Snapshot the parameters: another thread may change them during the forward.
            filter_mask, max_detections = self._filter_mask, self._max_detections
            self.model.score_thresh = self._score_threshold
            self.model.nms_thresh = self._nms_iou
            filtering = filter_mask is not None or self._drops_labels
            # With a filter, NMS must see every candidate (its top-N is taken after filtering) so the
            # result equals filtering the classes before NMS; NMS itself is per class.
            self.model.detections_per_img = (
                self.model.topk_candidates * len(self._label_map) if filtering else max_detections
            )
            tensors = [self._to_tensor(array) for array in arrays]
            outputs = self.model(tensors)
            results = [
                self._to_detections(out, array.shape, filter_mask, max_detections)
                for out, array in zip(outputs, arrays)
            ]
        return results

    def warmup(self, size: tuple[int, int] = (480, 640)) -> None:
        """One forward pass on a blank ``size`` (height, width) image, waiting for the device."""
        self(np.zeros((*size, 3), np.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        # uint8 to the device first (4x less to copy), then float in [0, 1] exactly as to_tensor does.
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=False)
        return tensor.permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    def _to_detections(
        self,
        output: dict[str, torch.Tensor],
        shape: tuple[int, ...],
        filter_mask: torch.Tensor | None,
        max_detections: int,
    ) -> Detections:
        boxes = output["boxes"].float().cpu()
        scores = output["scores"].float().cpu()
        classes = self._label_map[output["labels"].cpu()]
        keep = classes >= 0
        if filter_mask is not None:
            keep &= filter_mask[classes.clamp(min=0)]
        boxes, scores, classes = (
            boxes[keep][:max_detections],
            scores[keep][:max_detections],
            classes[keep][:max_detections],
        )
        height, width = shape[:2]
        # torchvision clips to the 300x300 input then rescales; guard the float rounding at the edge.
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0.0, float(width))
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0.0, float(height))
        return Detections(
            boxes.numpy().astype(np.float32, copy=False),
            scores.numpy().astype(np.float32, copy=False),
            classes.numpy().astype(np.int64, copy=False),
            self.class_names,
        )

    def __repr__(self) -> str:
        architecture = self.card.architecture if self.card is not None else type(self.model).__name__
        return (
            f"Detector({architecture}, {len(self.class_names)} classes, device={self.device}, "
            f"score_threshold={self.score_threshold}, nms_iou={self.nms_iou}, "
            f"max_detections={self.max_detections}, class_filter={self.class_filter})"
        )


def _unit_interval(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1]; ``ValueError`` naming ``name`` otherwise (bools and NaN included)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        result = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number, got {value!r}") from e
    if not 0.0 <= result <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {result}")
    return result
