"""ssd_ros.vision.model_file: the torch-free check of a model file the launch file runs before starting anything.

The launch tests (test_launch_run.py) run these refusals end to end; here the rules themselves, on real exports.
"""

import importlib.util
import subprocess
import sys

import pytest
from conftest import make_checkpoint

from ssd_ros.tools import export_model
from ssd_ros.vision.model_file import ModelFileError, check_model_file, export_precision


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_file")
    checkpoint = make_checkpoint(folder / "m.pt")
    for name, options in {"m.onnx": [], "m.xml": ["--format", "openvino"]}.items():
        assert (
            export_model.main(["--checkpoint", str(checkpoint), *options, "--out", str(folder / name), "--quiet"]) == 0
        )
    return {path.suffix: path for path in (checkpoint, folder / "m.onnx", folder / "m.xml")}


def test_export_precision_is_read_from_the_metadata_of_both_formats(exports):
    assert export_precision(exports[".onnx"]) == export_precision(exports[".xml"]) == "fp32"


def test_every_backend_that_reads_a_kind_of_file_is_accepted(exports):
    for suffix, backends in {".pt": ("torch", "onnxruntime", "openvino"), ".onnx": ("onnxruntime", "openvino")}.items():
        for backend in ("auto", *backends):
            check_model_file(exports[suffix], backend, "auto")
    check_model_file(exports[".xml"], "openvino", "fp32")


def test_a_foreign_file_with_a_model_suffix_is_named(tmp_path):
    foreign = tmp_path / "other.xml"
    foreign.write_text("<net><layers/></net>")
    (tmp_path / "other.bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"other.xml: no ssd_ros model card in it \(export it with export_model\)"):
        check_model_file(foreign, "openvino")
    broken = tmp_path / "broken.xml"
    broken.write_text("<net><layers>")
    (tmp_path / "broken.bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match="broken.xml: not a readable OpenVINO IR"):
        check_model_file(broken, "openvino")


def test_a_missing_runtime_is_one_line_naming_the_package(exports, monkeypatch):
    """What a Pi without openvino sees for an .xml (and for an .onnx when neither runtime is there)."""
    real = importlib.util.find_spec
    missing = {"openvino"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(ModelFileError) as refused:
        check_model_file(exports[".xml"], "auto")
    assert len(str(refused.value).splitlines()) == 1 and "pip install openvino" in str(refused.value)
    check_model_file(exports[".onnx"], "auto")  # onnxruntime still reads it
    missing.add("onnxruntime")
    with pytest.raises(ModelFileError, match="pip install onnxruntime.*pip install openvino"):
        check_model_file(exports[".onnx"], "auto")


def test_the_check_loads_no_torch(exports):
    """The launch process pays for no torch import (seconds on a Pi) to check an export."""
    code = (
        "import sys; from ssd_ros.vision.model_file import check_model_file; "
        f"check_model_file({str(exports['.onnx'])!r}, 'auto', 'fp32'); "
        f"check_model_file({str(exports['.xml'])!r}, 'openvino', 'auto'); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False", result.stderr
