"""Export the SSD network to ONNX or OpenVINO IR, fp32 or int8, carrying its model card.

An exported file holds the network of :class:`~ssd_ros.vision.backends.SSDNetwork` (normalised
``images`` ``(N, 3, H, W)`` in, raw ``bbox_regression`` and ``cls_logits`` out) plus, in its metadata, the
:class:`~ssd_ros.vision.model_card.ModelCard` (architecture, class names, label map, default boxes, input size,
normalisation, training provenance), the feature-map sizes the default boxes need and the precision. So an
exported model is as self-describing as a checkpoint: :func:`read_exported` gives back everything the
:class:`~ssd_ros.vision.detector.Detector` needs, and pre/post-processing stay the shared ones of
:mod:`ssd_ros.vision.inference`.

int8 is post-training static quantisation into the ONNX QDQ format (int8 weights per channel, 8-bit
activations), calibrated on real images the user gives, by ONNX Runtime's quantiser and, where it is installed,
NNCF's. The same QDQ file runs int8 in ONNX Runtime and in OpenVINO (which turns QDQ pairs into its int8
kernels), so one calibration serves both runtimes. Of the schemes tried (:data:`INT8_SCHEMES`), the export keeps
the one measured closest to fp32 and records the measurements in the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssd_ros.vision.backends import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SSDNetwork,
    fit_int8_weights,
    int8_saturating_convolutions,
)
from ssd_ros.vision.checkpoint import CheckpointError
from ssd_ros.vision.cpu import this_cpu
from ssd_ros.vision.inference import NetworkSpec, preprocess
from ssd_ros.vision.model_card import ModelCard

__all__ = [
    "EXPORT_FORMATS",
    "ExportedModel",
    "INT8_SCHEMES",
    "export_onnx_bytes",
    "network_spec",
    "quantize_int8",
    "read_exported",
    "write_export",
]

EXPORT_FORMATS = ("onnx", "openvino")
_METADATA_KEY = "ssd_ros"
_METADATA_VERSION = 1
# ONNX opset 17 is read by ONNX Runtime >= 1.11 and OpenVINO >= 2022.1, both far older than our pins.
_OPSET = 17


@dataclass(frozen=True)
class ExportedModel:
    """An exported network file and what its metadata says.

    Attributes:
        path: the ``.onnx`` or ``.xml`` (OpenVINO IR) file.
        card: the model card it was exported with.
        feature_map_sizes: ``(height, width)`` of each feature map (for the default boxes).
        precision: ``fp32`` or ``int8``.
        int8: for an int8 export, how it was quantised and how close to fp32 it measured (scheme, images,
            p95 score error and live candidates kept per scheme and runtime; see :func:`quantize_int8`);
            None for fp32 and for int8 files exported before it was recorded.
    """

    path: Path
    card: ModelCard
    feature_map_sizes: tuple[tuple[int, int], ...]
    precision: str
    int8: dict | None = None

    @property
    def spec(self) -> NetworkSpec:
        """The frame-path description of this network."""
        return NetworkSpec.from_card(self.card, self.feature_map_sizes)

    @property
    def int8_weight_bits(self) -> int:
        """The weights' range of an int8 export: 8, or 7 (``export_model --int8-weight-bits 7``)."""
        return int((self.int8 or {}).get("weight_bits", 8))

    @property
    def int8_saturating(self) -> bool:
        """Whether some of this int8 export's weights saturate x86 CPUs without VNNI (the loader halves them there).

        Where a convolution with 8-bit weights has an input that does not start at zero (see
        :func:`~ssd_ros.vision.backends.int8_saturating_convolutions`), recorded at export, because OpenVINO IR
        files no longer hold the QDQ weights to count; for files exported before that was recorded, where the
        weights have 8 bits.
        """
        info = self.int8 or {}
        return bool(info.get("saturating_convolutions", self.int8_weight_bits > 7))

    def int8_kept(self, runtime: str) -> float | None:
        """The share of fp32's live candidates this int8 export kept in ``runtime`` (None where not recorded)."""
        if not self.int8:
            return None
        measured = self.int8.get("measured", {}).get(self.int8.get("scheme"), {}).get(runtime)
        return None if measured is None else float(measured["live_pairs_kept"])


def _metadata(card: ModelCard, feature_map_sizes: Sequence[Sequence[int]], precision: str) -> str:
    return json.dumps(
        {
            "format_version": _METADATA_VERSION,
            "card": card.to_dict(),
            "feature_map_sizes": [list(map(int, s)) for s in feature_map_sizes],
            "precision": precision,
        }
    )


def export_onnx_bytes(model: nn.Module, card: ModelCard) -> bytes:
    """The fp32 ONNX file (as bytes) of ``model``'s network with ``card`` in its metadata.

    The batch dimension is dynamic; the image size is the network's fixed input size. ``model`` is moved to
    the CPU.
    """
    import onnx

    network = SSDNetwork(model.cpu()).eval()
    sizes = network.feature_map_sizes()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter on purpose: it needs no onnxscript and behaves the same on the
        # torch the Pi gets (2.9); torch calls it legacy and warns each time.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            network,
            (torch.zeros(1, 3, *network.input_size),),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
            opset_version=_OPSET,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _set_onnx_metadata(proto, _metadata(card, sizes, "fp32"))
    return proto.SerializeToString()


def _set_onnx_metadata(proto, value: str) -> None:
    for entry in list(proto.metadata_props):
        if entry.key == _METADATA_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = _METADATA_KEY, value
    proto.producer_name = "ssd_ros"


def _read_onnx_metadata(onnx_model: Any) -> dict:
    """The metadata of an ONNX model: its bytes, a path or an already parsed ``ModelProto``."""
    import onnx

    if isinstance(onnx_model, bytes):
        proto = onnx.load_from_string(onnx_model)
    elif isinstance(onnx_model, str | os.PathLike):
        proto = onnx.load(os.fspath(onnx_model), load_external_data=False)
    else:
        proto = onnx_model
    return {p.key: p.value for p in proto.metadata_props}


def network_spec(onnx_bytes: bytes) -> NetworkSpec:
    """The frame-path description an export (from :func:`export_onnx_bytes`) carries in its metadata."""
    return _spec_of_metadata(json.loads(_read_onnx_metadata(onnx_bytes)[_METADATA_KEY]))


def _spec_of_metadata(data: dict) -> NetworkSpec:
    return NetworkSpec.from_card(ModelCard.from_dict(data["card"]), data["feature_map_sizes"])


@dataclass(frozen=True)
class Int8Scheme:
    """One way :func:`quantize_int8` makes an int8 candidate.

    Attributes:
        quantizer: ``onnxruntime`` (its ``quantize_static``) or ``nncf`` (NNCF's post-training quantisation, an
            optional dependency: the scheme is skipped where it is not installed).
        options: ``extra_options`` for ONNX Runtime; ``nncf.quantize`` keyword arguments for NNCF.
        fp32_excitation: MobileNetV3's squeeze-excitation convolutions stay fp32 (tried only where they exist).
    """

    quantizer: str
    options: dict = field(default_factory=dict)
    fp32_excitation: bool = False


INT8_SCHEMES = {
    # Conv inputs (activations and weights) quantised, Conv outputs left fp32: the next layer's input
    # quantisation rounds them anyway, but the head's class logits and box regressions stay fp32 instead of
    # sharing one 8-bit range over every class. On a rover-trained SSDlite this halved the p95 score error
    # (0.16 -> 0.085 on footage); OpenVINO folds it into its int8 kernels (faster than the last scheme), while
    # ONNX Runtime cannot fuse its QLinearConv without the output pair and runs it slower.
    # Mixed precision: the squeeze-excitation convolutions of MobileNetV3 (tiny 1x1 convolutions on a pooled
    # vector that scale whole channels) also stay fp32: p95 score error 0.052 -> 0.042 on held-out rover frames,
    # at the same OpenVINO speed. Tried only on networks that have them.
    # No single layer carries the rest of the error: ONNX Runtime's QDQ debugger (qdq_loss_debug) on that SSDlite
    # gave every quantised Conv input of the second backbone stage a local SNR of 24-27 dB, and keeping the 16
    # Convs behind the 12 worst inputs in fp32 too moved the p95 score error only from 0.052 to 0.047.
    # Keeping MobileNetV3's 31 depthwise convolutions fp32 as well helps more (footage and labelled frames, 227
    # frames: p95 score error 0.047-0.048 -> 0.038-0.040, fp32's 40 live candidates kept 85-90% -> 95%), but that
    # network runs slower than fp32 in OpenVINO (17.4 vs 16.2 ms at 1 thread, against 14.9 ms for the first
    # scheme), so it is not offered: a faithful SSDlite is the fp32 export.
    # Quantisation-aware bias tuning is not the lever either (benchmarks/bench_int8_tuning.py, 2026-12-08): in a
    # torch simulation of this scheme's file (a tensor quantised for every module that reads it, residual
    # connections too), tuning the convolutions' biases against fp32's outputs on the calibration frames lowered the
    # loss by 8-14% and kept as many of the benchmark SSDlite's detections as before (above 0.1: 92.6% of 22135 on
    # the footage before, 92.5-92.7% after). The 97.0% an earlier run had measured (1 detection of 133 over 97%,
    # one model) did not come back with a simulation faithful to the file.
    # Keeping the heads' convolutions fp32 (and the first one, which sees the image) was measured too and is not
    # offered: on an SSD300 trained to a loss of 0.66 on rover frames, int8 kept 97.8% of its 139 fp32
    # detections on the lane footage with and without them (both runtimes), and OpenVINO ran 11% slower.
    "conv inputs, squeeze-excitation fp32": Int8Scheme(
        "onnxruntime", {"OpTypesToExcludeOutputQuantization": ["Conv"]}, fp32_excitation=True
    ),
    "conv inputs": Int8Scheme("onnxruntime", {"OpTypesToExcludeOutputQuantization": ["Conv"]}),
    # Inputs and outputs of every Conv quantised: ONNX Runtime fuses each into one QLinearConv (its fastest
    # int8 path), at the price of the logits' rounding.
    "conv inputs and outputs": Int8Scheme("onnxruntime"),
    # NNCF, conv inputs as above: symmetric activation ranges (uint8 from zero after a ReLU, int8 for the
    # normalised image), fast bias correction (each convolution's bias absorbs the shift rounding gives its
    # output's mean) and, by default, the first convolution's weights in 7 bits so that x86 CPUs without VNNI
    # do not saturate where the image's dense large inputs meet them. On the benchmark's rover-trained SSD300
    # (exact int8 arithmetic, 16 held-out labelled frames / 222 footage frames) it kept 97.4% / 98.0% of fp32's
    # 78 / 148 detections where ONNX Runtime's "conv inputs" kept 98.7% / 96.6%; NNCF's "mixed" preset
    # (asymmetric activations) 96.2% / 95.3%, and full bias correction 97.4% / 97.3%. On an AVX2-only Zen 3 the
    # file ran as it is at 98.0% of the footage detections in both runtimes (ONNX Runtime's, its first
    # convolution halved at load, 95.3%). On an SSDlite it kept 75.9% (ONNX Runtime's schemes 95.5%): the
    # export measures every scheme and keeps the closest. NNCF's default per-tensor activation ranges are the
    # mean over frames of each frame's min and max; the range of every frame (MINMAX, ONNX Runtime's) took the
    # SSDlite to 91.0% but the SSD300 to 96.6% of the footage detections, so it is not a scheme of its own
    # either. Bias correction and the mixed preset (68.4%) were not the SSDlite's lever; nor, on ONNX Runtime's
    # file, any one convolution left fp32 (each of its 82 measured alone on held-out frames).
    "NNCF conv inputs, fast bias correction": Int8Scheme(
        "nncf", {"preset": "performance", "fast_bias_correction": True}
    ),
}
"""The QDQ schemes :func:`quantize_int8` tries (:class:`Int8Scheme`); it keeps the one closest to fp32."""

_LIVE_SCORE_THRESHOLD = 0.3  # what the robot reports by default (Detector's LIVE_SETTINGS)
_SCORED_FLOOR = 0.1  # score error is measured where fp32 gives a (default box, class) pair more than this


def quantize_int8(
    fp32_onnx: bytes,
    calibration_images: Iterable[np.ndarray],
    *,
    weight_bits: int = 8,
    schemes: Sequence[str] | None = None,
    progress: bool = True,
) -> bytes:
    """Static int8 QDQ quantisation of an fp32 export, calibrated on RGB uint8 images; returns the ONNX bytes.

    The images go through the detector's own :func:`~ssd_ros.vision.inference.preprocess`, so the calibration
    sees exactly the activations inference will. Convolutions are quantised: weights per output channel
    (symmetric int8), activations per tensor (uint8, min/max over the calibration set). Each scheme of
    :data:`INT8_SCHEMES` that fits the network is tried and measured against fp32 on every 4th image (held out
    of its calibration when there are 8 or more), in both runtimes; the export keeps the scheme with the
    smallest worst-runtime p95 score error, calibrated again on every image, and writes the measurements into
    its metadata (:attr:`ExportedModel.int8`).

    ``weight_bits`` 7 quantises the weights to -64..64 (``reduce_range``), for x86 CPUs without VNNI, whose int8
    kernels saturate with 8-bit ones (see :func:`~ssd_ros.vision.backends.fit_int8_weights`); elsewhere 8 bits
    are more faithful. ``schemes`` names the schemes to try (default: all that fit the network).
    """
    from tqdm import tqdm

    if weight_bits not in (7, 8):
        raise ValueError(f"int8 weights have 8 or 7 bits, not {weight_bits}")
    unknown = set(schemes or ()) - set(INT8_SCHEMES)
    if unknown:
        raise ValueError(f"unknown int8 scheme(s) {sorted(unknown)}; expected some of {list(INT8_SCHEMES)}")
    images = list(calibration_images)
    if not images:
        raise ValueError("no calibration images")
    import onnx

    fp32_proto = onnx.load_from_string(fp32_onnx)
    metadata = json.loads(_read_onnx_metadata(fp32_proto)[_METADATA_KEY])
    spec = _spec_of_metadata(metadata)
    held_out = len(images) >= 8
    checks = images[::4]
    calibration = [image for i, image in enumerate(images) if not held_out or i % 4]
    batches = [preprocess([image], spec) for image in checks]
    reference = _class_scores("onnxruntime", fp32_onnx, batches)
    # torchvision's SqueezeExcitation names its two convolutions fc1 and fc2.
    excitation = [n.name for n in fp32_proto.graph.node if n.op_type == "Conv" and "/fc" in n.name]
    schemes = [
        name
        for name, scheme in INT8_SCHEMES.items()
        if (schemes is None or name in schemes)
        and (excitation or not scheme.fp32_excitation)
        and (scheme.quantizer != "nncf" or _nncf_installed())
    ]
    if not schemes:
        raise ValueError("none of the int8 schemes asked for fits this network (or NNCF is not installed)")

    def quantize(name: str, on: list[np.ndarray]) -> bytes:
        scheme = INT8_SCHEMES[name]
        fp32_nodes = excitation if scheme.fp32_excitation else []
        if scheme.quantizer == "nncf":
            return _quantize_nncf(fp32_onnx, scheme.options, fp32_nodes, on, spec, weight_bits == 7, progress)
        return _quantize_onnxruntime(fp32_onnx, scheme.options, fp32_nodes, on, spec, weight_bits == 7, progress)

    measured, files, failed = {}, {}, {}
    for scheme in tqdm(schemes, desc="int8 schemes", unit="scheme", disable=not progress):
        try:
            files[scheme] = quantize(scheme, calibration)
        except Exception as error:  # noqa: BLE001 - NNCF's errors have no common type; ONNX Runtime's below do
            if INT8_SCHEMES[scheme].quantizer != "nncf":
                raise
            # NNCF is an optional extra whose graph passes do not know every network: the export goes on with
            # the schemes that worked, saying which one failed and why, rather than losing the export.
            failed[scheme] = f"{type(error).__name__}: {_cause(error)[:200]}"
            warnings.warn(f"int8 scheme '{scheme}' failed and is skipped ({failed[scheme]})", stacklevel=2)
            continue
        as_run_here = fit_int8_weights(files[scheme], this_cpu())  # as the backends load it on this CPU
        measured[scheme] = {
            runtime: _agreement(reference, _class_scores(runtime, as_run_here, batches))
            for runtime in ("onnxruntime", "openvino")
        }
    if not measured:
        raise ValueError(f"every int8 scheme asked for failed: {failed}")
    best = min(measured, key=lambda name: max(m["score_error_p95"] for m in measured[name].values()))
    if held_out:
        # The kept file is calibrated again on every image, as any quantiser would: MinMax ranges come from the
        # most extreme frames, and dropping a quarter of them moves them. On the benchmark's SSD300 (32 rover
        # frames) int8 kept 92.4-93.1% of fp32's 145 footage detections calibrated on 24 of them, 96.6% on all 32
        # (fp32 with +-1 grey level of noise: 97.9%); more frames are not always better, though (adding 111
        # footage frames took the other 111's share from 94.8% to 92.2-93.5%). Its measurements stay those of
        # the scheme calibrated without the held-out quarter.
        files[best] = quantize(best, images)
    proto = onnx.load_from_string(files[best])
    metadata["precision"] = "int8"
    metadata["int8"] = {
        "scheme": best,
        "calibration_images": len(images),
        "scheme_calibration_images": len(calibration),
        "weight_bits": weight_bits,
        "saturating_convolutions": int8_saturating_convolutions(files[best]),
        "agreement_images": len(checks),
        "agreement_images_held_out": held_out,
        "measured": measured,
        **({"failed": failed} if failed else {}),
    }
    _set_onnx_metadata(proto, json.dumps(metadata))
    return proto.SerializeToString()


def _quantize_onnxruntime(
    fp32_onnx: bytes,
    extra_options: dict,
    fp32_nodes: list[str],
    images: list[np.ndarray],
    spec: NetworkSpec,
    reduce_range: bool,
    progress: bool,
) -> bytes:
    """One ONNX Runtime QDQ quantisation of ``fp32_onnx`` (see :data:`INT8_SCHEMES`), ``fp32_nodes`` left fp32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                tqdm(images, desc="int8 calibration", unit="image", disable=not progress, leave=False)
            )

        def get_next(self) -> dict | None:
            image = next(self._batches, None)
            return None if image is None else {INPUT_NAME: preprocess([image], spec)}

    with tempfile.TemporaryDirectory(prefix="ssd_ros_int8_") as tmp:
        fp32_path, prepared_path, int8_path = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(fp32_path).write_bytes(fp32_onnx)
        # Shape inference and graph folding first, as ONNX Runtime's quantisation guide asks.
        quant_pre_process(fp32_path, prepared_path, skip_symbolic_shape=True)
        quantize_static(
            prepared_path,
            int8_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            # MinMax activation ranges (the default): on the rover footage a picar-trained SSD300 kept 93.4-93.8%
            # of its fp32 detections; Percentile 99.999 kept 90-91%, symmetric activations 93%, Entropy the same.
            # On the benchmark's rover-trained SSDlite (footage, p95 score error, both runtimes): MinMax 0.042-0.044,
            # Percentile 99.999 0.057-0.059 and 99.99 0.10-0.12, symmetric activations 0.062, a moving average
            # 0.054-0.061, and even calibrating on the footage itself 0.052-0.057: calibration is not the lever.
            # NNCF's post-training quantisation (bias correction, mixed preset, the heads' final convolutions
            # ignored) gave a rover-trained SSDlite the same p95 score error as "conv inputs" (0.079-0.093).
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # Convolutions only (nearly all the arithmetic): quantising the head's Concat/Reshape too puts the
            # class logits of every feature map into one per-tensor range, and a trained SSD300 then lost all
            # of its detections (AP 0.29 -> 0.00).
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=list(fp32_nodes),
            extra_options=dict(extra_options),
        )
        return Path(int8_path).read_bytes()


def _nncf_installed() -> bool:
    """Whether NNCF can be imported; warns where it cannot (its scheme is then not tried)."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        warnings.warn(
            "nncf is not installed: the int8 export tries ONNX Runtime's quantisation schemes only "
            "(pip install -r requirements/workspace.txt installs NNCF for its scheme too)",
            stacklevel=3,
        )
        return False
    return True


def _import_nncf() -> Any:
    """NNCF, with its usage telemetry off: it sends some by default, without asking; an export sends nothing."""
    # NNCF_CI is the variable NNCF reads, once at import, to switch its telemetry off; it changes nothing else.
    os.environ.setdefault("NNCF_CI", "1")
    import nncf

    return nncf


def _quantize_nncf(
    fp32_onnx: bytes,
    options: dict,
    fp32_nodes: list[str],
    images: list[np.ndarray],
    spec: NetworkSpec,
    reduce_range: bool,
    progress: bool,
) -> bytes:
    """One NNCF post-training quantisation of ``fp32_onnx`` into QDQ (see :data:`INT8_SCHEMES`).

    Only convolutions are quantised, as in ONNX Runtime's schemes: every other operation type is in NNCF's
    ignored scope. ``reduce_range`` puts every convolution's weights in 7 bits (NNCF's overflow fix for all
    layers instead of the first); ``fp32_nodes`` stay fp32. ``progress``: NNCF's own progress bars.
    """
    import logging

    import onnx

    nncf = _import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    logging.getLogger("nncf").setLevel(logging.WARNING)  # it logs every node it leaves unquantised
    model = onnx.load_from_string(fp32_onnx)  # a copy of its own: NNCF's pre-processing passes edit it
    others = sorted({node.op_type for node in model.graph.node} - {"Conv"})
    with _rich_console_quiet(not progress):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(images, lambda image: {INPUT_NAME: preprocess([image], spec)}),
            preset=nncf.QuantizationPreset(options["preset"]),
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(images),
            fast_bias_correction=options["fast_bias_correction"],
            ignored_scope=nncf.IgnoredScope(names=list(fp32_nodes), types=others),
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.FIRST_LAYER,
                # One range per activation tensor, as ONNX Runtime's: for CPUs NNCF gives each depthwise
                # convolution's input one range per channel, the min/max of that channel over the calibration
                # frames, which other images exceed (on the lane footage 15 of the first one's 16 channels, by up
                # to 1.2x; deeper ones by up to 2.6x). That is why NNCF kept under half of an SSDlite's footage
                # detections (exact arithmetic: 44-53% -> 75.9% on the benchmark's, 46% -> 84% on another split);
                # VGG16 has no depthwise convolution (same file).
                activations_quantization_params=QuantizationParameters(per_channel=False),
            ),
        )
    return quantized.SerializeToString()


@contextlib.contextmanager
def _rich_console_quiet(quiet: bool) -> Iterator[None]:
    """Silence rich's process-wide console while inside, where ``quiet``: NNCF draws its progress bars there."""
    import rich

    console = rich.get_console()
    was_quiet = console.quiet
    console.quiet = was_quiet or quiet
    try:
        yield
    finally:
        console.quiet = was_quiet


def _class_scores(runtime: str, onnx_model: bytes, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Per batch, the ``(A, C)`` softmax class scores of the network (one thread: no process-wide state)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        logits = [session.run([OUTPUT_NAMES[1]], {INPUT_NAME: batch})[0] for batch in batches]
    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(onnx_model), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
        )
        request = compiled.create_infer_request()
        logits = [np.array(request.infer({0: batch})[compiled.output(OUTPUT_NAMES[1])]) for batch in batches]
    return [torch.softmax(torch.from_numpy(x[0]).float(), dim=-1)[:, 1:].numpy() for x in logits]


def _agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> dict:
    """How close ``other``'s class scores are to ``reference``'s, at the (default box, class) pairs that matter.

    ``score_error_p95``: p95 of the absolute score difference where the reference scores above 0.1;
    ``live_pairs_kept``: the share of the reference's pairs above the live threshold (0.3) that ``other``
    also puts above it (candidates before NMS: a detection-level count needs the labelled frames and the
    footage of ``benchmarks/bench_inference.py``).
    """
    errors = np.concatenate([np.abs(o - r)[r > _SCORED_FLOOR] for r, o in zip(reference, other)])
    live = sum(int((r > _LIVE_SCORE_THRESHOLD).sum()) for r in reference)
    kept = sum(int(((r > _LIVE_SCORE_THRESHOLD) & (o > _LIVE_SCORE_THRESHOLD)).sum()) for r, o in zip(reference, other))
    return {
        "score_error_p95": round(float(np.percentile(errors, 95)) if errors.size else 0.0, 4),
        "live_pairs_kept": round(kept / live, 4) if live else 1.0,
        "live_pairs": live,
    }


def write_export(onnx_bytes: bytes, out: str | os.PathLike, export_format: str) -> Path:
    """Write an export to ``out`` (``.onnx``, or ``.xml`` + ``.bin`` for OpenVINO IR) atomically.

    Everything is written into a temporary folder beside ``out`` and renamed into place at the end, so a
    failure (disk full, a bad path) leaves nothing half-written behind; an IR's ``.xml`` is renamed after its
    ``.bin``, and an older ``.xml`` removed before, so no ``.xml`` is ever read with another export's weights.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    suffix = ".onnx" if export_format == "onnx" else ".xml"
    if out.suffix != suffix:
        raise ValueError(f"a {export_format} export is written to a {suffix} file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = staging / out.name
        if export_format == "onnx":
            staged.write_bytes(onnx_bytes)
            files = [staged]
        else:
            import openvino as ov

            metadata = _read_onnx_metadata(onnx_bytes)[_METADATA_KEY]
            model = ov.Core().read_model(onnx_bytes)
            model.set_rt_info(metadata, [_METADATA_KEY])
            # Weights stay fp32 in the file: the runtime precision is chosen at load, not baked in.
            ov.save_model(model, os.fspath(staged), compress_to_fp16=False)
            # Two files cannot be renamed at once: the old .xml goes first and the new one comes last, so an
            # interruption leaves no .xml (a clear "no such file"), never an .xml beside another export's weights.
            out.unlink(missing_ok=True)
            files = [staged.with_suffix(".bin"), staged]
        for file in files:
            os.replace(file, out.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_exported(path: str | os.PathLike) -> ExportedModel:
    """Read an exported ``.onnx`` or OpenVINO ``.xml`` file's metadata.

    Raises :class:`~ssd_ros.vision.checkpoint.CheckpointError` naming the file for a missing, corrupted or foreign
    file (an ONNX model that ssd_ros did not export has no card).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise CheckpointError(
            path,
            f"its weights {path.with_suffix('.bin').name} are missing beside it (copy the .xml and the .bin together)",
        )
    try:
        if path.suffix == ".xml":
            import openvino as ov

            model = ov.Core().read_model(os.fspath(path))
            if not model.has_rt_info([_METADATA_KEY]):
                raise CheckpointError(
                    path, "is an OpenVINO model without an ssd_ros model card (not exported by ssd_ros)"
                )
            raw = model.get_rt_info([_METADATA_KEY]).astype(str)
        else:
            raw = _read_onnx_metadata(path).get(_METADATA_KEY)
            if raw is None:
                raise CheckpointError(path, "is an ONNX model without an ssd_ros model card (not exported by ssd_ros)")
    except CheckpointError:
        raise
    except Exception as error:  # onnx's DecodeError, OpenVINO's RuntimeError: the file is not a model
        raise CheckpointError(
            path, f"is not a readable {path.suffix or 'model'} file ({type(error).__name__}: {_cause(error)[:200]})"
        ) from error
    try:
        data = json.loads(raw)
        version = data.get("format_version")
        if isinstance(version, int) and version > _METADATA_VERSION:  # a sound file this code is too old for
            raise CheckpointError(
                path, f"has model card version {version}; this code reads up to {_METADATA_VERSION} (update ssd_ros)"
            )
        if version != _METADATA_VERSION:
            raise ValueError(f"unsupported metadata version {version!r}")
        card = ModelCard.from_dict(data["card"])
        sizes = tuple(tuple(int(v) for v in s) for s in data["feature_map_sizes"])
        precision = data["precision"]
        if precision not in ("fp32", "int8"):
            raise ValueError(f"unknown precision {precision!r}")
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"has a malformed ssd_ros model card ({error})") from error
    return ExportedModel(path, card, sizes, precision, data.get("int8"))


def _cause(error: Exception) -> str:
    """The line of a reader's error that says what is wrong with the file.

    OpenVINO's messages start with where they were raised ("Exception from src/...", "Check '...' failed at
    ...") and end with the cause ("Incorrect weights in bin file!"): the last line that is not a location.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (causes or lines or [""])[-1]
