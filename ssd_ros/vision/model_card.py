"""The model card: what a set of weights is and how it was made.

Every file that holds weights carries one: checkpoints (:mod:`ssd_ros.vision.checkpoint`) and ONNX / OpenVINO
exports (:mod:`ssd_ros.vision.export`, in the model's metadata). The card is authoritative: the model is built
from it and the weights must fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

import ssd_ros
from ssd_ros.vision import model as model_lib

__all__ = ["ModelCard", "coco_model_card"]


@dataclass
class ModelCard:
    """What a set of weights is, and how it was made.

    Attributes:
        architecture: one of :data:`ssd_ros.vision.model.ARCHITECTURES`.
        class_names: class names in label order, background excluded (model label ``i + 1`` is
            ``class_names[i]`` unless ``label_map`` says otherwise).
        input_size: network input ``(height, width)``.
        image_mean, image_std: normalisation of [0, 1] RGB input, ``(x - mean) / std``.
        default_boxes: the default-box configuration (see :func:`ssd_ros.vision.model.default_box_config`).
        training: how the weights were made: ``dataset``, ``iterations``, ``metric`` (e.g.
            ``{"VOC07 mAP@0.5": 0.77}`` or None), ``code_version`` (filled in on save), anything else.
        label_map: only for models whose output labels are not ``1..len(class_names)`` (torchvision's
            COCO models): for each model output label, the index into ``class_names`` or -1 to drop it.
        reduced_tail: ssdlite320 only: the MobileNetV3 backbone's last stage at half width (torchvision's
            COCO SSDlite weights); False for every model trained here.
    """

    architecture: str
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    default_boxes: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    label_map: tuple[int, ...] | None = None
    reduced_tail: bool = False

    def __post_init__(self) -> None:
        model_lib._check_architecture(self.architecture)
        self.class_names = tuple(self.class_names)
        if not self.class_names or not all(isinstance(n, str) and n for n in self.class_names):
            raise ValueError(f"class_names must be non-empty strings, got {self.class_names!r}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names!r}")
        if "__background__" in self.class_names:
            raise ValueError("class_names excludes the background class")
        self.input_size = tuple(int(v) for v in self.input_size)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if len(self.input_size) != 2 or len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("input_size needs (height, width); image_mean and image_std need 3 values")
        if self.input_size != model_lib.input_size(self.architecture):
            raise ValueError(
                f"input_size {self.input_size} does not fit {self.architecture} "
                f"(which takes {model_lib.input_size(self.architecture)})"
            )
        self.default_boxes = dict(self.default_boxes)
        self.training = dict(self.training)
        if self.label_map is not None:
            self.label_map = tuple(int(v) for v in self.label_map)
            if any(v < -1 or v >= len(self.class_names) for v in self.label_map):
                raise ValueError(f"label_map values must be -1 or index class_names, got {self.label_map!r}")
        if not isinstance(self.reduced_tail, bool):
            raise ValueError(f"reduced_tail must be true or false, got {self.reduced_tail!r}")
        if self.reduced_tail and self.architecture != "ssdlite320_mobilenet_v3":
            raise ValueError(f"reduced_tail is a MobileNetV3 option; {self.architecture} has no such backbone")

    @classmethod
    def for_architecture(
        cls,
        architecture: str,
        class_names: Sequence[str],
        *,
        dataset: str | None = None,
        iterations: int | None = None,
        metric: Mapping[str, float] | None = None,
        **training: Any,
    ) -> ModelCard:
        """A card with the architecture's own input size, normalisation and default boxes."""
        mean, std = model_lib.normalization(architecture)
        return cls(
            architecture=architecture,
            class_names=tuple(class_names),
            input_size=model_lib.input_size(architecture),
            image_mean=tuple(mean),
            image_std=tuple(std),
            default_boxes=model_lib.default_box_config(architecture),
            training={
                "dataset": dataset,
                "iterations": iterations,
                "metric": None if metric is None else dict(metric),
                "code_version": ssd_ros.__version__,
                **training,
            },
        )

    @property
    def num_classes(self) -> int:
        """Model outputs including background (``len(class_names) + 1``, or ``len(label_map)``)."""
        return len(self.label_map) if self.label_map is not None else len(self.class_names) + 1

    def build_model(self, *, pretrained_backbone: bool = False) -> nn.Module:
        """The (randomly initialised) model this card describes.

        Its random initialisation uses a forked RNG: building does not change the global torch RNG
        (saving or loading a checkpoint mid-training leaves the training's random stream alone).
        """
        with torch.random.fork_rng(devices=[]):
            return model_lib.build_model(
                self.architecture,
                self.num_classes,
                pretrained_backbone=pretrained_backbone,
                default_boxes=self.default_boxes,
                image_mean=self.image_mean,
                image_std=self.image_std,
                reduced_tail=self.reduced_tail,
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (what goes into the file)."""
        return _plain_copy(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; raises KeyError/ValueError/TypeError on a malformed card."""
        required = ("architecture", "class_names", "input_size", "image_mean", "image_std", "default_boxes")
        missing = [k for k in required if data.get(k) is None]
        if missing:
            raise KeyError(f"model card lacks {', '.join(missing)}")
        given = {f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None}
        return cls(**given)


def _plain_copy(value: Any) -> Any:
    """Deep copy of a JSON-like structure (dicts become plain dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_copy(v) for v in value]
    return value


def coco_model_card(architecture: str = "ssd300_vgg16") -> ModelCard:
    """The card of torchvision's COCO-trained ``architecture``: 80 names, 91-output label map, its structure."""
    mean, std = model_lib.normalization(architecture)
    weights = model_lib.coco_weights(architecture)
    return ModelCard(
        architecture=architecture,
        class_names=model_lib.coco_class_names(),
        input_size=model_lib.input_size(architecture),
        image_mean=tuple(mean),
        image_std=tuple(std),
        label_map=model_lib.coco_label_map(),
        training={
            "dataset": f"COCO train2017 (torchvision {type(weights).__name__}.{weights.name})",
            "iterations": None,
            "metric": {"COCO-val2017 box mAP": weights.meta["_metrics"]["COCO-val2017"]["box_map"]},
            "code_version": ssd_ros.__version__,
            "source": weights.url,
        },
        **model_lib.coco_build_options(architecture),
    )
