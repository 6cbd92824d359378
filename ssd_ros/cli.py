"""Command-line options shared by the tools and training scripts, and reading a node's parameters file.

The inference options are for those that run a :class:`~ssd_ros.detector.Detector`; importing the module
loads no torch (``make_bag`` uses it too).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

__all__ = ["add_inference_arguments", "inference_kwargs", "positive_int", "read_params_file"]


def positive_int(text: str) -> int:
    """Argparse type of the tools' counts (``--max-frames``, ``--batch-size``): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision`` and ``--threads``, as the detector node's parameters of the same meaning."""
    from ssd_ros.backends import BACKENDS, PRECISIONS  # here: torch only for the tools that run a model

    group = parser.add_argument_group("inference backend (see docs/detector_node.md: which to choose)")
    group.add_argument("--backend", choices=BACKENDS, default="torch", help="what runs the network (default: torch)")
    group.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="auto: the file's (int8 for an int8 export, else fp32); bf16: torch/openvino; int8: an int8 export",
    )
    group.add_argument("--threads", type=int, default=0, help="CPU threads for the network (0: the backend's default)")


def inference_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :meth:`~ssd_ros.detector.Detector.from_checkpoint` arguments the options above gave."""
    return {"backend": args.backend, "precision": args.precision, "num_threads": max(0, args.threads)}


def read_params_file(path: Path) -> dict:
    """A node's parameters from a ROS 2 parameters file (its first ``ros__parameters``) or a flat YAML mapping.

    Here, not in ``ssd_ros.ros``: the offline tools read the nodes' files without importing rclpy.

    Raises ``ValueError`` (naming the file) when it cannot be read or holds no mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameters file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {path}: expected a YAML mapping")
    nodes = [v["ros__parameters"] for v in data.values() if isinstance(v, dict) and "ros__parameters" in v]
    return dict(nodes[0] if nodes else data)
