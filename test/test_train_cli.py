"""training/train.py's command line: every input mistake is one line with exit status 2, found before
``--output-dir`` is created (a typo must not leave an empty run folder behind)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, ros_env, shared_data

from training import train

SMALL = ["--architecture", "ssdlite320_mobilenet_v3", "--no-pretrained", "--workers", "0", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str]:
    """train.main in-process: (exit status, stderr); argparse exits count as statuses."""
    try:
        status = train.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def test_broken_yaml_config_is_one_line_with_its_position(tmp_path, capsys):
    config = tmp_path / "picar.yaml"
    config.write_text("iterations: 100\nlr: [0.01\n")
    status, err = run(capsys, "--config", config)
    assert status == 2
    assert err.strip().splitlines() == [f"train.py: error: --config {config} line 3, column 1: not valid YAML "
                                        "(expected ',' or ']', but got '<stream end>')"]  # fmt: skip


def test_unknown_config_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "picar.yaml"
    config.write_text("iteration: 100\n")
    status, err = run(capsys, "--config", config)
    assert status == 2 and err == f"train.py: error: --config {config}: unknown option 'iteration'\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (["--train-folder", "{tmp}/nowhere"], "nowhere: dataset folder not found"),
        (["--data-root", "{picar}"], "is a VOC-format folder, not a VOCdevkit: give it as --train-folder {picar}"),
        (["--train-folder", "{devkit}"], "is a VOCdevkit (VOC2012), not a VOC-format folder: give it as --data-root"),
        (["--train-folder", "{picar}", "--resume", "{tmp}/notes.txt"], "notes.txt: is not a checkpoint"),
        # torch would raise mid-step: SSDlite's 1x1 maps give training BatchNorm one value per channel.
        (
            ["--train-folder", "{picar}", "--batch-size", "1"],
            "--batch-size 1 gives each of 1 process(es) 1 image: ssdlite320_mobilenet_v3's BatchNorm layers need "
            "at least 2 per process while training",
        ),
    ],
    ids=["missing-folder", "folder-as-devkit", "devkit-as-folder", "resume-not-a-checkpoint", "batch-of-one"],
)
def test_data_errors_exit_2_before_the_output_folder_exists(tmp_path, capsys, source, message):
    paths = {
        "tmp": tmp_path,
        "picar": shared_data("picar_camera", "detection", "test"),
        "devkit": shared_data("voc2012_sample"),
    }
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    out = tmp_path / "run"
    status, err = run(capsys, *(s.format(**paths) for s in source), *SMALL, "--output-dir", out)
    assert status == 2 and message.format(**paths) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_truncated_image_is_one_line_naming_it(tmp_path, capsys, workers):
    # Found when its sample is drawn, in this process or in a DataLoader worker (whose traceback is dropped).
    folder = tmp_path / "data"
    shutil.copytree(shared_data("picar_camera", "detection", "test"), folder)
    broken = sorted(folder.glob("*.jpg"))[2]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    argv = ["--train-folder", folder, *SMALL, "--workers", workers, "--iterations", "4", "--batch-size", "5"]
    argv += ["--output-dir", tmp_path / "run"]
    if workers == "0":
        status, err = run(capsys, *argv)
    else:
        # DataLoader workers are forked: in a process of its own, as users run it. Forked from the suite's
        # process, which earlier tests left with DDS threads, a worker can abort (SIGABRT) at its shutdown.
        script = REPO_ROOT / "training" / "train.py"
        result = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=ros_env())
        status, err = result.returncode, result.stderr
    assert status == 2
    # The one line also says what of the run is kept: here nothing, it stopped before its first checkpoint.
    last = tmp_path / "run" / "last.pt"
    assert err.splitlines() == [f"error: {broken}: truncated JPEG: no end-of-image marker after its image data "
                                f"({len(data) // 2} bytes) (fix or remove the image; stopped before the first "
                                f"checkpoint ({last} not written): nothing to resume)"]  # fmt: skip


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "run"
    taken.write_text("a file")
    folder = shared_data("picar_camera", "detection", "test")
    status, err = run(capsys, "--train-folder", folder, *SMALL, "--output-dir", taken)
    assert status == 2 and f"--output-dir {taken} is a file" in err
