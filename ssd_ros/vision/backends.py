"""Inference backends: the SSD network (backbone + head, boxes decoded) on torch, ONNX Runtime, OpenVINO.

Every backend is a callable ``network(batch) -> (boxes, class_scores)`` taking the ``(N, 3, H, W)``
float32 batch from :func:`ssd_ros.vision.inference.preprocess` and returning torch tensors: every default box
decoded from the network's regressions (:func:`~ssd_ros.vision.inference.decode_boxes`) and the softmax of the
class logits. ONNX Runtime and OpenVINO compute both in their own graph, which they extend when they load an
export: torch's softmax over a few classes per default box took ~0.5 ms a frame, and decoding the candidates'
boxes ~0.6 ms as the node runs it (after the network has evicted it from the caches). The backends have the
attributes ``name``, ``precision``, ``num_threads``, ``device`` and ``spec``
(:class:`~ssd_ros.vision.inference.NetworkSpec`). The :class:`~ssd_ros.vision.detector.Detector` wraps one and
does the rest.

Precisions: ``fp32`` everywhere; ``bf16`` with torch (autocast) and OpenVINO where the CPU has bf16 units
(AVX512-BF16 or AMX; elsewhere OpenVINO runs fp32 and ``precision`` says so); ``fp16`` with OpenVINO where its
CPU plugin runs f16 (Arm CPUs with fp16 arithmetic, where it is OpenVINO's own default; x86 with AVX512-FP16 or
AMX-FP16; elsewhere bf16 where the CPU has bf16 units, else fp32, and ``precision`` says so); ``int8`` with ONNX
Runtime and OpenVINO from an int8 export (``export_model --int8``, calibrated on real images).
"""

from __future__ import annotations

import functools
import os
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ssd_ros.cli import BACKENDS, PRECISIONS
from ssd_ros.vision.cpu import CpuInfo, this_cpu
from ssd_ros.vision.inference import BOX_CODER, NetworkSpec, anchors, decode_boxes

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "SSDNetwork",
    "TorchNetwork",
    "cpu_summary",
    "fit_int8_weights",
    "int8_saturating_convolutions",
]

OUTPUT_NAMES = ("bbox_regression", "cls_logits")
INPUT_NAME = "images"
# What the runtimes add to an export's graph when they load it: the decoded boxes and the softmax.
BOXES_NAME, SCORES_NAME = "boxes", "class_scores"


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
        self.network = SSDNetwork(model.to(device)).eval()
        self.spec = spec_of_model(model, self.network)

    @property
    def num_threads(self) -> int:
        """The intra-op threads torch has now: process-wide, so a runtime's Detector built later lowers them to 1."""
        return torch.get_num_threads()

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on a preprocessed batch: decoded boxes and class scores."""
        tensor = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode():
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
                regression, logits = self.network(tensor)
            boxes = decode_boxes(regression, self.spec.anchors_on(self.device), self.spec.input_size)
            return boxes, torch.softmax(logits.float(), dim=-1)


def _usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or taskset's limit), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity call outside Linux
        return os.cpu_count() or 1


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
    ``optimize=False`` runs the graph as written: an int8 QDQ export's quantise/dequantise pairs as float ops
    around float convolutions, which is exact int8 arithmetic free of any CPU's int8 kernels (what a CPU whose
    kernels do not saturate computes); slow, for measurements.
    """

    name = "onnxruntime"
    device = torch.device("cpu")

    def __init__(
        self,
        onnx_model: bytes | str | os.PathLike,
        spec: NetworkSpec,
        *,
        precision: str,
        num_threads: int = 0,
        optimize: bool = True,
    ):
        import onnxruntime as ort

        if precision in ("bf16", "fp16"):
            raise ValueError(f"onnxruntime has no {precision} CPU path for SSD; use backend openvino for {precision}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads if num_threads > 0 else _usable_cores()
        options.inter_op_num_threads = 1
        level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.graph_optimization_level = level
        _post_processing_threads()
        if precision == "int8" and optimize:
            onnx_model = fit_int8_weights(onnx_model, this_cpu())
        session_model = _with_onnx_outputs(onnx_model, spec)
        self.session = ort.InferenceSession(session_model, options, providers=["CPUExecutionProvider"])
        self.spec = spec
        self.precision = precision
        self.num_threads = options.intra_op_num_threads

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on a preprocessed batch: decoded boxes and class scores."""
        boxes, scores = self.session.run([BOXES_NAME, SCORES_NAME], {INPUT_NAME: batch})
        return torch.from_numpy(boxes), torch.from_numpy(scores)


def _graph_boxes(ops: SimpleNamespace, regression: Any, spec: NetworkSpec) -> Any:
    """:func:`~ssd_ros.vision.inference.decode_boxes` of every default box, as ops of a runtime's graph.

    ``ops`` builds the graph (:func:`_onnx_ops`, :func:`_openvino_ops`); the arithmetic is torchvision's box
    coder in its order, with the default boxes' centres and sizes as constants. In OpenVINO's bf16 and f16 modes
    these ops still run f32: its CPU plugin keeps the tail of a graph after the last convolution in f32.
    """
    corners = spec.anchors.numpy().astype(np.float32)
    sizes = corners[:, 2:] - corners[:, :2]
    centres = corners[:, :2] + np.float32(0.5) * sizes
    xy_weight, _, wh_weight, _ = (np.float32(w) for w in BOX_CODER.weights)
    height, width = spec.input_size
    xy, wh = ops.halves(regression)
    centre = ops.add(ops.mul(ops.div(xy, xy_weight), sizes), centres)
    clamped = ops.minimum(ops.div(wh, wh_weight), np.float32(BOX_CODER.bbox_xform_clip))
    half = ops.mul(ops.mul(ops.exp(clamped), sizes), np.float32(0.5))
    boxes = ops.concat(ops.sub(centre, half), ops.add(centre, half))
    return ops.maximum(ops.minimum(boxes, np.array([width, height, width, height], np.float32)), np.float32(0))


def _onnx_ops(graph: Any) -> SimpleNamespace:
    """:func:`_graph_boxes`'s ops as nodes appended to an ONNX ``graph`` (constants become initializers)."""
    import onnx

    def value(x: Any) -> str:
        if isinstance(x, str):
            return x
        name = f"ssd_ros_constant_{len(graph.initializer)}"
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(x), name))
        return name

    def node(op: str, *inputs: Any, outputs: int = 1, **attributes: Any) -> Any:
        names = [f"ssd_ros_{op}_{len(graph.node)}_{i}" for i in range(outputs)]
        graph.node.append(onnx.helper.make_node(op, [value(x) for x in inputs], names, **attributes))
        return names if outputs > 1 else names[0]

    return SimpleNamespace(
        **{name: functools.partial(node, op) for name, op in _ONNX_OPS.items()},
        concat=lambda a, b: node("Concat", a, b, axis=-1),
        halves=lambda x: node("Split", x, np.array([2, 2], np.int64), outputs=2, axis=-1),
    )


def _openvino_ops() -> SimpleNamespace:
    """:func:`_graph_boxes`'s ops as OpenVINO nodes (numpy constants become Constant nodes)."""
    import openvino.opset13 as ops

    return SimpleNamespace(
        add=ops.add,
        sub=ops.subtract,
        mul=ops.multiply,
        div=ops.divide,
        minimum=ops.minimum,
        maximum=ops.maximum,
        exp=ops.exp,
        concat=lambda a, b: ops.concat([a, b], -1),
        halves=lambda x: ops.variadic_split(x, -1, [2, 2]).outputs(),
    )


_ONNX_OPS = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "minimum": "Min", "maximum": "Max", "exp": "Exp"}


def _load_onnx(onnx_model: bytes | str | os.PathLike) -> Any:
    import onnx

    return onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx.load(os.fspath(onnx_model))


def fit_int8_weights(onnx_model: bytes | str | os.PathLike, cpu: CpuInfo) -> bytes | str | os.PathLike:
    """An int8 QDQ export as ``cpu``'s int8 kernels compute it right: unchanged, or some weights in 7 bits.

    Where the kernels saturate with 8-bit weights (:attr:`~ssd_ros.vision.cpu.CpuInfo.int8_saturates`: x86
    without VNNI) the convolutions :func:`int8_saturating_convolutions` names get ``round(w / 2)`` (-64..64) as
    weights, their scale doubled, so that two uint8 x weight products always fit the int16 the kernels sum them
    in; their int32 bias is halved the same way, because the fused kernels take the bias in units of input scale
    x weight scale. Neither runtime does this for a CPU, and the export keeps 8-bit weights for the CPUs that do
    not saturate, where the bit costs fidelity.
    """
    if not cpu.int8_saturates:
        return onnx_model
    proto = _load_onnx(onnx_model)
    saturating = _saturating(proto)
    if not saturating:
        return onnx_model
    for weights, bias in saturating:
        _halve(*weights, 64)
        if bias is not None:
            _halve(*bias, 2**31 - 1)
    return proto.SerializeToString()


def int8_saturating_convolutions(onnx_model: bytes | str | os.PathLike) -> int:
    """How many convolutions of an int8 QDQ export saturate int8 kernels without VNNI (:func:`fit_int8_weights`).

    Those with 8-bit weights whose input does not start at zero, which :func:`fit_int8_weights` halves there.

    Such kernels see the input as uint8 (a signed input shifted by 128): where its zero point is 0 (a ReLU's
    output) most values are small and 8-bit weights fit, elsewhere (the normalised image, signed or asymmetric
    ranges) they sit around the middle of the range and the int16 sums overflow. Halving only those kept more
    than halving every convolution (AVX2-only Zen 3, share of fp32's 148 / 133 lane-footage detections,
    docs/benchmarks/int8_weights.md): ONNX Runtime's SSD300 file, where that is the first convolution alone,
    95.3% against 87.2-87.8%; its SSDlite file (MobileNetV3's hard-swish outputs go below zero), 40 convolutions,
    96.2% against 91.7-93.2%. NNCF's SSD300 file has none (its overflow fix puts the first convolution in 7
    bits) and runs as it is, at exact arithmetic's 98.0%.
    """
    return len(_saturating(_load_onnx(onnx_model)))


def _saturating(proto: Any) -> list[tuple[tuple, tuple | None]]:
    """``(weights, bias)`` of each convolution :func:`int8_saturating_convolutions` counts, in graph order."""
    import onnx.numpy_helper

    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    producers = {output: node for node in proto.graph.node for output in node.output}

    def dequantized(value: str) -> Any:
        node = producers.get(value)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def constant(value: str, data_type: int) -> tuple | None:
        """The (values, scale) initializers a DequantizeLinear of constant ``data_type`` data gives ``value``."""
        node = dequantized(value)
        if node is None or node.input[0] not in initializers:
            return None
        data, scale = initializers[node.input[0]], initializers.get(node.input[1])
        return (data, scale) if data.data_type == data_type and scale is not None else None

    def starts_at_zero(value: str) -> bool:
        """Whether ``value`` is quantised to uint8 with zero point 0 (ONNX's default), or is not quantised."""
        node = dequantized(value)
        if node is None:
            return True  # a float input: the convolution does not run on int8 kernels
        if len(node.input) < 3 or not node.input[2]:
            return True
        zero_point = initializers.get(node.input[2])
        if zero_point is None:
            return False
        values = onnx.numpy_helper.to_array(zero_point)
        return values.dtype == np.uint8 and not values.any()

    saturating = []
    for conv in proto.graph.node:
        if conv.op_type != "Conv":
            continue
        weights = constant(conv.input[1], onnx.TensorProto.INT8)
        if weights is None or _in_7_bits(weights) or starts_at_zero(conv.input[0]):
            continue
        bias = constant(conv.input[2], onnx.TensorProto.INT32) if len(conv.input) > 2 else None
        saturating.append((weights, bias))
    return saturating


def _in_7_bits(weights: tuple) -> bool:
    import onnx.numpy_helper

    return int(np.abs(onnx.numpy_helper.to_array(weights[0]).astype(np.int32)).max()) <= 64


def _halve(data: Any, scale: Any, limit: int) -> None:
    """``data`` becomes ``round(data / 2)`` within ``limit``, its ``scale`` doubled: the same real values."""
    import onnx.numpy_helper

    values = onnx.numpy_helper.to_array(data)
    halved = np.clip(np.round(values.astype(np.int64) / 2.0), -limit, limit).astype(values.dtype)
    data.CopyFrom(onnx.numpy_helper.from_array(halved, data.name))
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(2), scale.name))


def _with_onnx_outputs(onnx_model: bytes | str | os.PathLike, spec: NetworkSpec) -> bytes:
    """The export with its outputs replaced by :data:`BOXES_NAME` (decoded) and :data:`SCORES_NAME` (softmax)."""
    import onnx

    proto = _load_onnx(onnx_model)
    graph = proto.graph
    ops = _onnx_ops(graph)
    regression, logits = (next(output for output in graph.output if output.name == name) for name in OUTPUT_NAMES)
    graph.node.append(onnx.helper.make_node("Identity", [_graph_boxes(ops, regression.name, spec)], [BOXES_NAME]))
    graph.node.append(onnx.helper.make_node("Softmax", [logits.name], [SCORES_NAME], axis=-1))
    for old, name in ((regression, BOXES_NAME), (logits, SCORES_NAME)):
        graph.output.remove(old)
        graph.output.append(onnx.helper.make_tensor_value_info(name, old.type.tensor_type.elem_type, None))
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
    which would make ``fp32`` a lie. ``precision`` is what the compiled model reports it runs, with a warning
    when that is not what was asked: ``bf16`` on a CPU without bf16 units (AVX512-BF16, AMX) runs fp32, and
    ``fp16`` on a CPU without fp16 arithmetic (most x86) runs bf16 where the CPU has bf16 units, else fp32.
    An int8 ONNX export goes through :func:`fit_int8_weights` (an ``ov.Model`` and IR files are taken as they are).
    """

    name = "openvino"
    device = torch.device("cpu")

    def __init__(self, model: Any, spec: NetworkSpec, *, precision: str, num_threads: int = 0):
        import openvino as ov

        core = ov.Core()
        # An IR file's weights are not QDQ initializers any more and run as they are (the precision choice warns
        # where they saturate this CPU's kernels).
        ir_file = isinstance(model, str | os.PathLike) and os.fspath(model).endswith(".xml")
        if precision == "int8" and isinstance(model, bytes | str | os.PathLike) and not ir_file:
            model = fit_int8_weights(model, this_cpu())
        if not isinstance(model, ov.Model):
            model = core.read_model(model if isinstance(model, bytes) else os.fspath(model))
        hint = {"bf16": "bf16", "fp16": "f16"}.get(precision, "f32")
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = core.compile_model(_with_openvino_outputs(model, spec), "CPU", config)
        # The plugin falls back silently where the CPU lacks the arithmetic (to bf16 or f32 for f16, to f32 for
        # bf16): the compiled model says what it chose.
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        runs = {ov.Type.f16: "fp16", ov.Type.bf16: "bf16"}.get(chosen, "fp32")
        if runs != precision and precision != "int8":
            warnings.warn(f"{precision} requested but this CPU has no {precision} arithmetic: OpenVINO runs {runs}",
                          stacklevel=2)  # fmt: skip
        self.precision = precision if precision == "int8" else runs
        _post_processing_threads()
        self.request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(name) for name in (BOXES_NAME, SCORES_NAME)]
        self.spec = spec
        self.num_threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or _usable_cores()

    def __call__(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on a preprocessed batch: decoded boxes and class scores."""
        results = self.request.infer({0: batch})
        boxes, scores = (results[output] for output in self._outputs)
        # The request reuses its output buffers on the next call: copy out of them.
        return torch.from_numpy(np.array(boxes)), torch.from_numpy(np.array(scores))


def _with_openvino_outputs(model: Any, spec: NetworkSpec) -> Any:
    """The OpenVINO model with the outputs :data:`BOXES_NAME` (decoded) and :data:`SCORES_NAME` (softmax).

    In place, with OpenVINO's post-processing API.
    """
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    graph_ops = _openvino_ops()
    steps.output(OUTPUT_NAMES[0]).postprocess().custom(lambda r: _graph_boxes(graph_ops, r, spec).output(0))
    steps.output(OUTPUT_NAMES[1]).postprocess().custom(lambda logits: ops.softmax(logits, -1).output(0))
    model = steps.build()
    for old, name in zip(OUTPUT_NAMES, (BOXES_NAME, SCORES_NAME)):
        model.output(old).get_tensor().set_names({name})
    return model


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
