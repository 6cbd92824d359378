"""Command-line options shared by the tools and training scripts, and reading a node's parameters file.

The inference options are for those that run a :class:`~ssd_ros.vision.detector.Detector`; importing the module
loads no torch (``make_bag`` uses it too).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BACKENDS",
    "EXECUTORS",
    "EXECUTOR_ENV",
    "PRECISIONS",
    "add_inference_arguments",
    "inference_kwargs",
    "positive_int",
    "read_params_file",
]

# Declared here, at the top level, so that the command line offers them without importing the vision room
# (and torch); ssd_ros.vision.backends takes them from here.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
"""What can run the network; ``auto`` chooses one of them from the model file and the CPU."""
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
"""The network's arithmetic; ``auto`` is the file's own (see ssd_ros.vision.cpu)."""
# Here too so that the launch file sets them without importing rclpy; ssd_ros.ros.runner reads them.
EXECUTOR_ENV = "SSD_ROS_EXECUTOR"
"""Environment variable choosing what spins every ssd_ros node (a key of :data:`EXECUTORS`; unset: ``events``)."""
EXECUTORS: tuple[str, ...] = ("events", "single")
"""The choices of :data:`EXECUTOR_ENV`: rclpy's EventsExecutor or its SingleThreadedExecutor."""


def positive_int(text: str) -> int:
    """Argparse type of the tools' counts (``--max-frames``, ``--batch-size``): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_rate(text: str) -> float:
    """Argparse type of the tools' rates (``--rate-hz``, ``--rate``): a finite number of hertz above 0.

    0 or a negative rate is refused rather than read as "the default" (leaving the option out means that).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in Hz, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite rate > 0 Hz (leave it out for the default), got {text}")
    return value


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision`` and ``--threads``, as the detector node's parameters of the same meaning."""
    group = parser.add_argument_group("inference backend (see docs/detector_node.md: which to choose)")
    group.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="what runs the network (default auto: torch for a .pt, openvino for a .xml, onnxruntime for a .onnx "
        "except an int8 SSD300 on x86; openvino for fp16 and an export's bf16)",
    )
    group.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="auto: the file's (int8 for an int8 export, else fp32); bf16: torch/openvino; fp16: openvino; "
        "int8: an int8 export",
    )
    group.add_argument("--threads", type=int, default=0, help="CPU threads for the network (0: the backend's default)")


def inference_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :meth:`~ssd_ros.vision.detector.Detector.from_checkpoint` arguments the options above gave."""
    return {"backend": args.backend, "precision": args.precision, "num_threads": max(0, args.threads)}


def read_params_file(path: str | Path, node: str, namespace: str = "") -> dict:
    """The parameters a ROS 2 parameters file sets for ``node`` in ``namespace``, or those of a flat mapping.

    As the nodes read the file: sections keyed ``/**``, ``/**/<node>``, ``<node>`` (no namespace) and
    ``/<namespace>/<node>`` apply, the more specific one winning. A mapping of plain parameter names (no
    section keys) is taken as it is, for the offline tools. Here, not in ``ssd_ros.ros``: the tools and the
    launch file read the nodes' files without rclpy.

    Raises ``ValueError`` naming the file when it cannot be read or sets nothing for ``node``.
    """
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameters file {path}: {exc}") from exc
    full_name = f"/{namespace}/{node}" if namespace else f"/{node}"
    keys = ("/**", f"/**/{node}", *(() if namespace else (node,)), full_name)
    if isinstance(document, dict):
        sections = [document[key].get("ros__parameters") for key in keys if isinstance(document.get(key), dict)]
        if sections and all(isinstance(section, dict) for section in sections):
            return {name: value for section in sections for name, value in section.items()}
        if not any(str(key).startswith("/") or isinstance(value, dict) for key, value in document.items()):
            return document
    raise ValueError(
        f"parameters file {path} sets nothing for {full_name}: it needs a section keyed "
        f"{' or '.join(map(repr, keys))} holding ros__parameters"
    )


def read_params_files(paths, node: str, namespace: str = "") -> dict:
    """The parameters several files set for ``node``, a later file's value winning (as repeated ``--params-file``).

    For the shared ``config/rover.yaml`` followed by a node's own file, as the launch file passes them.
    """
    return {name: value for path in paths for name, value in read_params_file(path, node, namespace).items()}
