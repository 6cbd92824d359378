"""Inference: RGB images of any size in, :class:`~ssd_ros.vision.detections.Detections` in original pixels out.

The :class:`Detector` runs the SSD network on one of three backends (:mod:`ssd_ros.vision.backends`: ``torch``, the
reference; ``onnxruntime``; ``openvino``) and does the rest of the frame path itself, the same for every
backend (:mod:`ssd_ros.vision.inference`): resize and normalise exactly as torchvision's SSD transform does, then
torchvision's SSD post-processing (softmax, per-class score threshold and top-k, box decoding, per-class
NMS, top-N), boxes scaled back to the original image, the class filter and label map applied before NMS,
and boxes clamped to the image. With the torch backend its output equals ``model([to_tensor(rgb)])`` with
the same thresholds (tested to within 1 px / 1e-3), so there is no pre/post-processing drift between
training, evaluation and the robot; the other backends are tested against it.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssd_ros.settings import Settings, setting
from ssd_ros.vision.backends import PRECISIONS, OnnxRuntimeNetwork, OpenVinoNetwork, TorchNetwork
from ssd_ros.vision.checkpoint import CheckpointError, check_card, load_checkpoint, load_coco_pretrained
from ssd_ros.vision.cpu import choose_backend, choose_precision, require_runtime, this_cpu
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.image_codec import validate_image
from ssd_ros.vision.inference import postprocess, preprocess
from ssd_ros.vision.model import ARCHITECTURES
from ssd_ros.vision.model_card import ModelCard
from ssd_ros.vision.model_file import BACKEND_CHOICES

EXPORTED_SUFFIXES = (".onnx", ".xml")


@dataclass(frozen=True)
class DetectorSettings(Settings):
    """The detector node's model and reporting settings (its parameter names; all but the last four need a restart).

    The node declares its parameters from these fields; :meth:`detector_options` are the keyword arguments of
    :meth:`Detector.from_checkpoint` and :meth:`Detector.from_coco`.
    """

    model_path: str = setting(
        "",
        "SSD checkpoint (.pt) or exported model (.onnx, OpenVINO .xml from export_model) to load (restart required)",
        read_only=True,
    )
    backend: str = setting(
        "auto",
        "what runs the network: auto (from the file, the precision and the CPU: torch for a .pt, openvino for a "
        ".xml, a .onnx on onnxruntime or, for an int8 SSD300 on x86, openvino; fp16, and an export's bf16, on "
        "openvino) | torch (reference) | onnxruntime | openvino (restart required)",
        read_only=True,
    )
    precision: str = setting(
        "auto",
        "network arithmetic: auto (the file's: int8 for an int8 export, else fp32) | fp32 | bf16 | fp16 | int8 "
        "(restart required)",
        read_only=True,
    )
    num_threads: int = setting(
        0, "CPU threads for the network (0: the backend's default, all cores)", limits=(0, 256), read_only=True
    )
    coco_model: str = setting(
        "",
        "torchvision's COCO-trained model instead of model_path: ssd300_vgg16 | ssdlite320_mobilenet_v3 "
        "('': use model_path; needs internet once or torch's cache; restart required)",
        read_only=True,
    )
    device: str = setting("auto", "inference device: auto | cpu | cuda | cuda:N (restart required)", read_only=True)
    score_threshold: float = setting(0.3, "minimum detection score in [0, 1]", limits=(0.0, 1.0))
    nms_iou: float = setting(0.45, "IoU above which same-class boxes are suppressed, in [0, 1]", limits=(0.0, 1.0))
    max_detections: int = setting(100, "most detections per image (>= 1)", limits=(1, 10000))
    class_filter: tuple[str, ...] = setting((), "class names to report (empty: all classes of the model)")

    def detector_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`Detector.from_checkpoint` / :meth:`Detector.from_coco` (all but the model)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model_path", "coco_model")}


LIVE_SETTINGS = {name: getattr(DetectorSettings, name) for name in ("score_threshold", "nms_iou", "max_detections")}
"""What the robot reports by default (the detector node, ``bag_eval``, the Detector's own defaults)."""
EVALUATION_SETTINGS = {"score_threshold": 0.01, "nms_iou": 0.45, "max_detections": 200}
"""The SSD paper's VOC evaluation setting: every detection down to 0.01, at most 200 per image."""

__all__ = ["EVALUATION_SETTINGS", "LIVE_SETTINGS", "Detector", "DetectorSettings", "resolve_device"]


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


class Detector:
    """SSD inference on RGB uint8 images of any size.

    Args:
        model: a torchvision ``SSD`` (from :func:`ssd_ros.vision.model.build_model` or a checkpoint), run by the
            torch backend; or a network from :mod:`ssd_ros.vision.backends` (see :meth:`from_checkpoint`, which
            builds either from a file).
        class_names: the class names, background excluded; model label ``i + 1`` is ``class_names[i]``
            unless ``label_map`` is given.
        score_threshold: keep detections whose score is strictly above this, in [0, 1].
        nms_iou: per-class NMS IoU threshold in [0, 1].
        max_detections: keep at most this many detections per image (highest scores first), >= 1.
        class_filter: names of the classes to report (None or empty: all). Unknown names raise ValueError.
        device: for a torch ``model``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``.
        label_map: for each model output label, the index into ``class_names`` or -1 to drop it (for
            torchvision's COCO model, whose 91 outputs include background and unused ids).
        card: the :class:`~ssd_ros.vision.model_card.ModelCard` the model came with, kept as ``self.card``.
        warmup_runs: forward passes run at construction (first-call allocation, cuDNN autotuning);
            0 to skip.
        precision: for a torch ``model``: ``fp32`` or ``bf16`` (autocast).
        num_threads: for a torch ``model``: torch's intra-op threads (process-wide); 0 leaves torch's choice.

    ``score_threshold``, ``nms_iou``, ``max_detections`` and ``class_filter`` are attributes that may be
    changed at any time (from any thread); each call uses the values current when it starts. Calls are
    serialised by a lock, so one Detector can be shared by threads. ``backend``, ``precision`` and
    ``num_threads`` say what runs the network.
    """

    def __init__(
        self,
        model: nn.Module | Any,
        class_names: Sequence[str],
        *,
        score_threshold: float = LIVE_SETTINGS["score_threshold"],
        nms_iou: float = LIVE_SETTINGS["nms_iou"],
        max_detections: int = LIVE_SETTINGS["max_detections"],
        class_filter: Iterable[str] | None = None,
        device: str | torch.device = "auto",
        label_map: Sequence[int] | None = None,
        card: ModelCard | None = None,
        warmup_runs: int = 1,
        precision: str = "fp32",
        num_threads: int = 0,
    ):
        self.class_names: tuple[str, ...] = tuple(class_names)
        if not self.class_names:
            raise ValueError("class_names is empty")
        if isinstance(model, nn.Module):
            if not hasattr(getattr(model, "head", None), "classification_head"):
                raise TypeError(
                    f"expected a torchvision SSD model (with head.classification_head), got {type(model).__name__}"
                )
            model = TorchNetwork(model, device=resolve_device(device), precision=precision, num_threads=num_threads)
        self.network = model
        num_outputs = self.network.spec.num_outputs
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
        self._label_map = torch.tensor(label_map, dtype=torch.int64)
        self._lock = threading.Lock()
        self._score_threshold = 0.0
        self._nms_iou = 0.0
        self._max_detections = 1
        self._class_filter: tuple[str, ...] | None = None
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.class_filter = class_filter
        for _ in range(int(warmup_runs)):
            self.warmup()

    @property
    def backend(self) -> str:
        """What runs the network: ``torch``, ``onnxruntime`` or ``openvino``."""
        return self.network.name

    @property
    def precision(self) -> str:
        """The network's arithmetic: ``fp32``, ``bf16`` or ``int8`` (what really runs, after any fallback)."""
        return self.network.precision

    @property
    def num_threads(self) -> int:
        """CPU threads the network uses."""
        return self.network.num_threads

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return self.network.device

    # -- construction helpers ---------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        backend: str = "auto",
        precision: str = "auto",
        num_threads: int = 0,
        expect_architecture: str | None = None,
        expect_classes: Sequence[str] | None = None,
        device: str | torch.device = "auto",
        **kwargs: Any,
    ) -> Detector:
        """A Detector for an ssd_ros checkpoint (``.pt``) or exported model (``.onnx``, OpenVINO ``.xml``).

        Class names and label map come from the file's card. ``backend`` is ``auto`` (chosen from the file and
        the CPU: :func:`~ssd_ros.vision.cpu.choose_backend`), ``torch`` (checkpoints only), ``onnxruntime`` or
        ``openvino`` (a checkpoint is exported in memory first); ``precision`` is ``auto`` (the file's: int8
        for an int8 export, else fp32; warns, naming the fp32 export, where int8 does not pay off on this CPU:
        :func:`~ssd_ros.vision.cpu.choose_precision`), ``fp32``, ``bf16`` or ``int8`` (int8 needs an int8
        export, which carries its calibration). Raises :class:`~ssd_ros.vision.checkpoint.CheckpointError` for
        a missing or bad file and ValueError for a combination that cannot run or a runtime that is not
        installed (one line naming the pip package).
        """
        _check_choice(backend, BACKEND_CHOICES, "backend")
        _check_choice(precision, ("auto", *PRECISIONS), "precision")
        suffix = Path(path).suffix
        if suffix.lower() in EXPORTED_SUFFIXES and suffix not in EXPORTED_SUFFIXES:
            # Read as a checkpoint it would only be "not a checkpoint"; OpenVINO looks for the .bin in lower case.
            raise CheckpointError(path, f"exports are named in lower case: rename it to *{suffix.lower()}")
        if suffix not in EXPORTED_SUFFIXES:
            if backend == "auto":
                backend = choose_backend(".pt", "fp32", "", cpu=this_cpu(), precision=precision)
            if backend != "torch":
                require_runtime("onnx")  # the in-memory export
                require_runtime(backend)
            resolved = resolve_device(device) if backend == "torch" else _cpu_only(backend, device)
            model, card = load_checkpoint(
                path, device=resolved, expect_architecture=expect_architecture, expect_classes=expect_classes
            )
            precision = _chosen_precision(backend, "fp32", precision, card.architecture)
            return cls._from_model(model, card, backend, precision, num_threads, resolved, **kwargs)
        require_runtime("openvino" if suffix == ".xml" else "onnx")  # to read the file's card
        from ssd_ros.vision.export import read_exported

        exported = read_exported(path)
        check_card(path, exported.card, expect_architecture, expect_classes)
        _cpu_only(backend, device, exported=Path(path))
        if backend == "auto":
            backend = choose_backend(
                suffix, exported.precision, exported.card.architecture, cpu=this_cpu(), precision=precision
            )
        if backend == "torch":
            raise ValueError(f"{path} is an exported model: run it with backend onnxruntime or openvino")
        if backend == "onnxruntime" and suffix != ".onnx":
            raise ValueError(f"{path} is OpenVINO IR: run it with backend openvino (onnxruntime reads .onnx exports)")
        require_runtime(backend)
        if precision != "auto" and (precision == "int8") != (exported.precision == "int8"):
            raise ValueError(
                f"{path} is a {exported.precision} export; precision {precision} needs "
                + ("an int8 export (export_model --int8)" if precision == "int8" else "the fp32 export")
            )
        precision = _chosen_precision(
            backend, exported.precision, precision, exported.card.architecture, exported.int8_kept(backend),
            exported.int8_saturating, int8_halved_at_load=suffix == ".onnx",
        )  # fmt: skip
        network = _NETWORKS[backend](path, exported.spec, precision=precision, num_threads=num_threads)
        card = exported.card
        return cls(network, card.class_names, label_map=card.label_map, card=card, **kwargs)

    @classmethod
    def from_coco(
        cls,
        architecture: str = "ssd300_vgg16",
        *,
        backend: str = "torch",
        precision: str = "auto",
        num_threads: int = 0,
        device: str | torch.device = "auto",
        progress: bool = False,
        **kwargs: Any,
    ) -> Detector:
        """A Detector for torchvision's COCO-trained ``architecture`` reporting the 80 COCO class names.

        ``architecture`` is ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3`` (torchvision's SSDlite320-MobileNetV3,
        the one a Raspberry Pi can run). Downloads the weights once (torch hub cache); raises
        :class:`~ssd_ros.vision.model.WeightsUnavailableError` when offline or when the cached file is not the
        published one, saying what to do, and ValueError for an unknown architecture, backend or precision.
        ``backend``, ``precision`` and ``num_threads`` as for a ``.pt`` checkpoint in :meth:`from_checkpoint`
        (``auto`` is torch, or OpenVINO for fp16; int8 needs an int8 export: ``export_model --coco ARCH --int8
        --calibration DIR``).
        """
        _check_choice(architecture, ARCHITECTURES, "architecture")
        _check_choice(backend, BACKEND_CHOICES, "backend")
        _check_choice(precision, ("auto", *PRECISIONS), "precision")
        if precision == "int8":  # calibrated on the user's frames, so only ever an export
            raise ValueError(
                f"int8 needs a calibrated int8 export: export_model --coco {architecture} --int8 --calibration "
                "FRAMES_DIR --format openvino --out coco_int8.xml, then run that file"
            )
        if backend == "auto":  # the weights are a torch checkpoint
            backend = choose_backend(".pt", "fp32", architecture, cpu=this_cpu(), precision=precision)
        if backend != "torch":  # before the download: the model is exported in memory and run there
            require_runtime("onnx")
            require_runtime(backend)
        resolved = resolve_device(device) if backend == "torch" else _cpu_only(backend, device)
        model, card = load_coco_pretrained(architecture, resolved, progress=progress)
        precision = _chosen_precision(backend, "fp32", precision, architecture)
        return cls._from_model(model, card, backend, precision, num_threads, resolved, **kwargs)

    @classmethod
    def _from_model(
        cls, model: nn.Module, card: ModelCard, backend: str, precision: str, num_threads: int, device, **kwargs
    ) -> Detector:
        precision = "fp32" if precision == "auto" else precision
        common = {"label_map": card.label_map, "card": card, **kwargs}
        if backend == "torch":
            return cls(model, card.class_names, device=device, precision=precision, num_threads=num_threads, **common)
        if precision == "int8":
            raise ValueError("int8 needs a calibrated int8 export: export_model --int8 --calibration DIR, then load it")
        from ssd_ros.vision.export import export_onnx_bytes, network_spec

        onnx = export_onnx_bytes(model, card)
        network = _NETWORKS[backend](onnx, network_spec(onnx), precision=precision, num_threads=num_threads)
        return cls(network, card.class_names, **common)

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
            self._class_filter, self._keep_outputs = None, (self._label_map >= 0).to(self.device)
            return
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ValueError(
                f"class_filter has unknown class name(s) {unknown}; the model's classes are {list(self.class_names)}"
            )
        wanted = torch.zeros(len(self.class_names), dtype=torch.bool)
        wanted[[self.class_names.index(n) for n in names]] = True
        # Model outputs to keep: mapped to a class (not background or an unused id) that is wanted.
        keep = (self._label_map >= 0) & wanted[self._label_map.clamp(min=0)]
        # On the network's device once, not copied there every frame.
        self._class_filter, self._keep_outputs = names, keep.to(self.device)

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
        with self._lock:
            # One snapshot of the settings: another thread may change them during the forward.
            settings = {
                "score_threshold": self._score_threshold,
                "nms_iou": self._nms_iou,
                "max_detections": self._max_detections,
                "keep_outputs": self._keep_outputs,
            }
            regression, scores = self.network(preprocess(arrays, self.network.spec))
            with torch.inference_mode():
                outputs = postprocess(regression, scores, self.network.spec, [a.shape for a in arrays], **settings)
        return [self._to_detections(output, array.shape) for output, array in zip(outputs, arrays)]

    def warmup(self, size: tuple[int, int] = (480, 640)) -> None:
        """One forward pass on a blank ``size`` (height, width) image, waiting for the device."""
        self(np.zeros((*size, 3), np.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _to_detections(
        self, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shape: tuple[int, ...]
    ) -> Detections:
        boxes, scores, labels = (t.cpu() for t in output)
        height, width = shape[:2]
        # Boxes are clipped to the network input then rescaled; guard the float rounding at the edge.
        boxes = np.clip(boxes.float().numpy(), 0.0, np.array([width, height, width, height], np.float32))
        return Detections(
            boxes.astype(np.float32, copy=False),
            scores.float().numpy().astype(np.float32, copy=False),
            self._label_map[labels].numpy().astype(np.int64, copy=False),
            self.class_names,
        )

    def __repr__(self) -> str:
        architecture = self.card.architecture if self.card is not None else "SSD"
        return (
            f"Detector({architecture}, {len(self.class_names)} classes, {self.backend} {self.precision} "
            f"x{self.num_threads} threads on {self.device}, "
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


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def _chosen_precision(
    backend: str,
    file_precision: str,
    requested: str,
    architecture: str,
    int8_kept: float | None = None,
    int8_saturating: bool = True,
    int8_halved_at_load: bool = True,
) -> str:
    """The precision :meth:`Detector.from_checkpoint` runs, with the choice's warning (if any) issued."""
    choice = choose_precision(
        backend, file_precision, requested, cpu=this_cpu(), architecture=architecture, int8_kept=int8_kept,
        int8_saturating=int8_saturating, int8_halved_at_load=int8_halved_at_load,
    )  # fmt: skip
    if choice.warning:
        warnings.warn(choice.warning, stacklevel=3)
    return choice.precision


def _cpu_only(backend: str, device: str | torch.device, exported: Path | None = None) -> torch.device:
    """The CPU, for a backend (or an ``exported`` file) that runs there only; ValueError for another device."""
    if str(device).strip().lower() not in ("auto", "cpu"):
        if exported is not None:  # torch cannot run an export: the way to the GPU is the checkpoint
            raise ValueError(
                f"{exported} is an exported model, which runs on the CPU: use device auto or cpu, or run its .pt "
                f"checkpoint on {device}"
            )
        raise ValueError(f"backend {backend} runs on the CPU; device {device!r} needs backend torch")
    return torch.device("cpu")


_NETWORKS = {"onnxruntime": OnnxRuntimeNetwork, "openvino": OpenVinoNetwork}
