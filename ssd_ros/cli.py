"""Command-line options shared by the tools and training scripts.

The inference options are for those that run a :class:`~ssd_ros.detector.Detector`; importing the module
loads no torch (``make_bag`` uses it too).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_inference_arguments", "inference_kwargs", "positive_int"]


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
