"""What a model file is and which backend and precision can run it, without loading torch.

The launch file checks ``model_path`` with these rules before any process starts, and the detector applies the
same ones, so a file the chosen backend cannot run is refused once, in one line that names the fix. Reading an
export's precision needs only its metadata: the ``.xml`` of an OpenVINO IR is parsed as XML (``openvino`` need not
be installed to refuse a wrong combination), an ``.onnx`` file with the ``onnx`` package where it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from ssd_ros.cli import BACKENDS, PRECISIONS
from ssd_ros.vision.cpu import require_runtime

__all__ = [
    "BACKEND_CHOICES",
    "COCO_ARCHITECTURES",
    "MODEL_SUFFIXES",
    "PRECISION_CHOICES",
    "ModelFileError",
    "check_model_file",
    "export_precision",
]

# The choices of the detector's backend and precision parameters (and the tools' options), "auto" first: "auto"
# picks one of them from the file and the CPU (ssd_ros.vision.cpu.choose_backend / choose_precision).
BACKEND_CHOICES = ("auto", *BACKENDS)
PRECISION_CHOICES = ("auto", *PRECISIONS)
# The architectures torchvision has COCO weights for (ssd_ros.vision.model builds them).
COCO_ARCHITECTURES = ("ssdlite320_mobilenet_v3", "ssd300_vgg16")
# File suffix -> what it is. A checkpoint runs on every backend (exported in memory for the fast runtimes).
MODEL_SUFFIXES = {".pt": "checkpoint", ".onnx": "ONNX export", ".xml": "OpenVINO IR"}
# Backends that can run each kind of file ("auto" picks among them: ssd_ros.vision.cpu).
RUNNERS = {".pt": ("torch", "onnxruntime", "openvino"), ".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",)}
METADATA_KEY = "ssd_ros"  # the export metadata entry (ssd_ros.vision.export writes it)


class ModelFileError(ValueError):
    """A model file that cannot run as asked; the message names the file and the fix."""


def _runtime_problem(backend: str) -> str | None:
    try:
        require_runtime(backend)
    except ValueError as problem:
        return str(problem)
    return None


def export_precision(path: str | os.PathLike) -> str | None:
    """The precision an export's metadata records (``fp32``, ``int8``), or None where it cannot be read here.

    None means "not known without the runtime" (an ``.onnx`` file where ``onnx`` is not installed): the detector
    reads it again when it loads the file. A file without ssd_ros metadata raises :class:`ModelFileError`.
    """
    path = Path(path)
    try:
        if path.suffix == ".xml":
            raw = _ir_metadata(path)
        elif importlib.util.find_spec("onnx") is None:
            return None
        else:
            import onnx

            proto = onnx.load(os.fspath(path), load_external_data=False)
            raw = next((entry.value for entry in proto.metadata_props if entry.key == METADATA_KEY), None)
        if raw is None:
            raise ModelFileError(f"model_path:={path}: no ssd_ros model card in it (export it with export_model)")
        return str(json.loads(raw)["precision"])
    except ModelFileError:
        raise
    except Exception as error:  # noqa: BLE001 - XML, protobuf or JSON errors alike: the file is not a readable export
        raise ModelFileError(f"model_path:={path}: not a readable {MODEL_SUFFIXES[path.suffix]} ({error})") from error


def _ir_metadata(path: Path) -> str | None:
    # OpenVINO writes rt_info after the layers: stream the file rather than holding the whole tree.
    for _event, element in ElementTree.iterparse(path):
        if element.tag == METADATA_KEY and element.get("value") is not None:
            return element.get("value")
        element.clear()
    return None


def check_model_file(path: str | os.PathLike, backend: str = "auto", precision: str = "auto") -> None:
    """Refuse, in one line naming the fix, a model file that ``backend`` at ``precision`` cannot run.

    Checks the suffix, that the file (and an IR's ``.bin``) exists, that the backend can read this kind of file
    and is installed, and that the precision matches an export's (an int8 export runs only as int8; int8 needs
    an int8 export). Raises :class:`ModelFileError`.
    """
    path = Path(os.path.expanduser(path))
    if path.suffix not in MODEL_SUFFIXES:
        lower = " (in lower case)" if path.suffix.lower() in MODEL_SUFFIXES else ""
        raise ModelFileError(
            f"model_path:={path}: expected a checkpoint (.pt), an ONNX export (.onnx) or an OpenVINO IR (.xml){lower}"
        )
    if not path.is_file():
        raise ModelFileError(f"model_path:={path}: no such file")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelFileError(
            f"model_path:={path}: the OpenVINO IR's weights {path.with_suffix('.bin').name} are missing beside it "
            "(copy the .xml and the .bin together)"
        )
    runners = RUNNERS[path.suffix]
    if backend != "auto" and backend not in runners:
        raise ModelFileError(
            f"model_path:={path} is an {MODEL_SUFFIXES[path.suffix]}: backend {backend} cannot run it; use backend "
            + " or ".join(("auto", *runners))
        )
    candidates = runners if backend == "auto" else (backend,)
    problems = [_runtime_problem(name) for name in candidates]
    if all(problems):
        raise ModelFileError(f"model_path:={path}: " + "; ".join(problems))
    if path.suffix == ".pt":
        if precision == "int8":
            raise ModelFileError(
                f"model_path:={path}: int8 needs an int8 export (export_model --checkpoint {path.name} --int8 "
                "--calibration frames/ --out model_int8.onnx), or precision auto"
            )
        return
    recorded = export_precision(path)
    if recorded == "int8" and precision not in ("auto", "int8"):
        raise ModelFileError(
            f"model_path:={path} is an int8 export: it runs as int8 only; use precision auto (or int8), or the fp32 "
            f"export for {precision}"
        )
    if recorded is not None and recorded != "int8" and precision == "int8":
        raise ModelFileError(
            f"model_path:={path} is an {recorded} export: int8 needs an int8 export (export_model --int8 "
            "--calibration frames/), or precision auto"
        )
