"""Inference backends: the SSD network (backbone + head, no pre/post-processing) on torch, ONNX Runtime, OpenVINO.

Every backend is a callable ``network(batch) -> (bbox_regression, class_scores)`` taking the ``(N, 3, H, W)``
float32 batch from :func:`ssd_ros.vision.inference.preprocess` and returning torch tensors (the class scores
are the softmax of the logits; ONNX Runtime and OpenVINO compute it in their own graph, where torch's softmax
over a few classes per default box took ~0.5 ms a frame), with the attributes
``name``, ``precision``, ``num_threads``, ``device`` and ``spec`` (:class:`~ssd_ros.vision.inference.NetworkSpec`).
The :class:`~ssd_ros.vision.detector.Detector` wraps one and does the rest.

Precisions: ``fp32`` everywhere; ``bf16`` with torch (autocast) and OpenVINO where the CPU has bf16 units
(AVX512-BF16 or AMX; elsewhere OpenVINO runs fp32 and ``precision`` says so); ``fp16`` with OpenVINO where its
CPU plugin runs f16 (Arm CPUs with fp16 arithmetic, where it is OpenVINO's own default; x86 with AVX512-FP16 or
AMX-FP16; elsewhere fp32, and ``precision`` says so); ``int8`` with ONNX Runtime and OpenVINO from an int8
export (``export_model --int8``, calibrated on real images).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ssd_ros.cli import BACKENDS, PRECISIONS
from ssd_ros.vision.inference import NetworkSpec, anchors

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "SSDNetwork",
    "TorchNetwork",
    "cpu_summary",
]

OUTPUT_NAMES = ("bbox_regression", "cls_logits")
INPUT_NAME = "images"
SCORES_NAME = "class_scores"  # the softmax the runtimes add to an export's graph when they load it


class SSDNetwork(nn.Module):
    """A torchvision SSD's backbone and head: normalised images in, raw box regressions and class logits out.

    This is what gets exported: the part of the model that is the same arithmetic in every runtime.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        # SSD's transform always resizes to a fixed (height, width).
        self.input_size = tuple(int(v) for v in model.transform.fixed_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` -> ``bbox_regression`` ``(N, A, 4)``, ``cls_logits`` ``(N, A, C)``."""
        outputs = self.head(self._features(images))
        return outputs["bbox_regression"], outputs["cls_logits"]

    def feature_map_sizes(self) -> list[list[int]]:
        """The ``(height, width)`` of each feature map at the input size (one backbone pass on zeros)."""
        parameter = next(self.backbone.parameters())
        with torch.inference_mode():
            features = self._features(torch.zeros(1, 3, *self.input_size, device=parameter.device))
        return [list(f.shape[-2:]) for f in features]

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(images)
        return list(features.values()) if isinstance(features, dict) else [features]


def spec_of_model(model: nn.Module, network: SSDNetwork) -> NetworkSpec:
    """The :class:`NetworkSpec` of a torchvision SSD, whose ``network`` is ``SSDNetwork(model)``.

    Read from the model's own transform and anchor generator, so a model without a card works too.
    """
    sizes = network.feature_map_sizes()
    return NetworkSpec(
        input_size=network.input_size,
        image_mean=tuple(float(v) for v in model.transform.image_mean),
        image_std=tuple(float(v) for v in model.transform.image_std),
        anchors=anchors(model.anchor_generator, network.input_size, sizes),
        num_outputs=int(model.head.classification_head.num_columns),
        topk_candidates=int(model.topk_candidates),
    )


class TorchNetwork:
    """The reference backend: the torchvision model itself, eager, on CPU or CUDA.

    ``bf16`` runs under ``torch.autocast`` (CPU or CUDA); ``num_threads`` sets torch's intra-op threads, which
    are process-wide.
    """

    name = "torch"

    def __init__(self, model: nn.Module, *, device: torch.device, precision: str = "fp32", num_threads: int = 0):
        if precision not in ("fp32", "bf16"):
            raise ValueError(
                f"the torch backend runs fp32 or bf16, not {precision!r}; int8 needs an int8 export "
                "(export_model --int8) run by onnxruntime or openvino, fp16 runs with backend openvino"
            )
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.device = device
        self.precision = precision
        self.num_threads = torch.get_num_threads()
        self.network = SSDNetwork(model.to(device)).eval()
        self.spec = spec_of_model(model, self.network)

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on a preprocessed batch: box regressions and class scores."""
        tensor = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            regression, logits = self.network(tensor)
        return regression, torch.softmax(logits.float(), dim=-1)


def _post_processing_threads() -> None:
    """One torch intra-op thread, for a process where a runtime runs the network (process-wide).

    torch then does only the post-processing, on tensors far too small to gain from threads, and more
    threads cost OpenMP synchronisation instead (measured on a loaded 2-core machine: 10 ms per frame with
    2 threads, 0.5 ms with 1).
    """
    torch.set_num_threads(1)


class OnnxRuntimeNetwork:
    """An exported network run by ONNX Runtime's CPU execution provider (fp32 or an int8 QDQ export).

    ONNX Runtime has no bf16 or fp16 CPU kernels for these layers; both are refused with a pointer to OpenVINO.
    """

    name = "onnxruntime"
    device = torch.device("cpu")

    def __init__(
        self, onnx_model: bytes | str | os.PathLike, spec: NetworkSpec, *, precision: str, num_threads: int = 0
    ):
        import onnxruntime as ort

        if precision in ("bf16", "fp16"):
            raise ValueError(f"onnxruntime has no {precision} CPU path for SSD; use backend openvino for {precision}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads if num_threads > 0 else os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        _post_processing_threads()
        self.session = ort.InferenceSession(_with_softmax(onnx_model), options, providers=["CPUExecutionProvider"])
        self.spec = spec
        self.precision = precision
        self.num_threads = options.intra_op_num_threads

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on a preprocessed batch: box regressions and class scores."""
        regression, scores = self.session.run([OUTPUT_NAMES[0], SCORES_NAME], {INPUT_NAME: batch})
        return torch.from_numpy(regression), torch.from_numpy(scores)


def _with_softmax(onnx_model: bytes | str | os.PathLike) -> bytes:
    """The export with a softmax over its class logits added as the output :data:`SCORES_NAME`."""
    import onnx

    if isinstance(onnx_model, bytes):
        proto = onnx.load_from_string(onnx_model)
    else:
        proto = onnx.load(os.fspath(onnx_model))
    graph = proto.graph
    logits = next(output for output in graph.output if output.name == OUTPUT_NAMES[1])
    graph.node.append(onnx.helper.make_node("Softmax", [logits.name], [SCORES_NAME], axis=-1))
    graph.output.remove(logits)
    graph.output.append(onnx.helper.make_tensor_value_info(SCORES_NAME, logits.type.tensor_type.elem_type, None))
    return proto.SerializeToString()


def cpu_has_fp16() -> bool:
    """Whether OpenVINO runs fp16 on this CPU (Arm with fp16 arithmetic; x86 with AVX512-FP16 or AMX-FP16)."""
    import openvino as ov

    return "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_has_bf16() -> bool:
    """Whether OpenVINO can run bf16 on this CPU (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoNetwork:
    """An exported network (ONNX or OpenVINO IR) run by OpenVINO on the CPU.

    The inference precision is always set explicitly: OpenVINO's own default on bf16-capable CPUs is bf16,
    which would make ``fp32`` a lie. ``bf16`` on a CPU without bf16 units runs fp32, with a warning, and
    ``precision`` then reads ``fp32``; so does ``fp16`` where the compiled model reports that it runs f32 (x86
    CPUs without AVX512-FP16 or AMX-FP16: the plugin ignores the f16 hint there).
    """

    name = "openvino"
    device = torch.device("cpu")

    def __init__(self, model: Any, spec: NetworkSpec, *, precision: str, num_threads: int = 0):
        import openvino as ov

        if precision == "bf16" and not cpu_has_bf16():
            warnings.warn(
                "bf16 requested but this CPU has no bf16 units (AVX512-BF16 or AMX): OpenVINO runs fp32",
                stacklevel=2,
            )
            precision = "fp32"
        core = ov.Core()
        if not isinstance(model, ov.Model):
            model = core.read_model(model if isinstance(model, bytes) else os.fspath(model))
        hint = {"bf16": "bf16", "fp16": "f16"}.get(precision, "f32")
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = core.compile_model(_with_ov_softmax(model), "CPU", config)
        if precision == "fp16" and self.compiled.get_property("INFERENCE_PRECISION_HINT") != ov.Type.f16:
            warnings.warn("fp16 requested but OpenVINO runs f32 on this CPU (no fp16 arithmetic)", stacklevel=2)
            precision = "fp32"
        _post_processing_threads()
        self.request = self.compiled.create_infer_request()
        self.spec = spec
        self.precision = precision
        self.num_threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or (os.cpu_count() or 1)

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on a preprocessed batch: box regressions and class scores."""
        results = self.request.infer({0: batch})
        regression, scores = (results[self.compiled.output(name)] for name in OUTPUT_NAMES)
        # The request reuses its output buffers on the next call: copy out of them.
        return torch.from_numpy(np.array(regression)), torch.from_numpy(np.array(scores))


def _with_ov_softmax(model: Any) -> Any:
    """The OpenVINO model with a softmax over its class logits (OpenVINO's post-processing API, in place)."""
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.output(OUTPUT_NAMES[1]).postprocess().custom(lambda logits: ops.softmax(logits, -1).output(0))
    return steps.build()


def cpu_summary() -> dict[str, Any]:
    """The CPU model and the SIMD features that decide the backends' speed (for diagnostics and benchmarks)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "asimddp")
    return {"model": model, "cores": os.cpu_count(), "features": [f for f in wanted if f in flags]}
