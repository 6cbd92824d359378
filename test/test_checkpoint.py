"""Self-describing checkpoints: roundtrip, training payload, and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import torchvision_coco_model, wait_until

import ssd_ros
from ssd_ros.vision.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_payload, save_checkpoint
from ssd_ros.vision.model import VOC_CLASSES, build_model, coco_class_names, coco_label_map
from ssd_ros.vision.model_card import ModelCard, coco_model_card

LITE = "ssdlite320_mobilenet_v3"  # small and fast: most file-level cases use it
NAMES = ("person", "stop sign", "traffic light")  # names with spaces, like the PiCar data set


def _lite_model(num_names: int = len(NAMES), seed: int = 0):
    torch.manual_seed(seed)
    return build_model(LITE, num_names + 1)


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lite.pt"
    model = _lite_model()
    card = ModelCard.for_architecture(LITE, NAMES, dataset="picar_camera", iterations=123, metric={"mAP": 0.5})
    save_checkpoint(path, model, card)
    return path, model


class _Evil:
    """Unpickling this runs ``touch <marker>`` (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_roundtrip_vgg_same_outputs(tmp_path):
    torch.manual_seed(1)
    model = build_model("ssd300_vgg16", 21)
    card = ModelCard.for_architecture("ssd300_vgg16", VOC_CLASSES, dataset="VOC07+12", iterations=120000)
    path = save_checkpoint(tmp_path / "sub" / "voc.pt", model, card)
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name != "voc.pt"]  # no temp left
    loaded, loaded_card = load_checkpoint(path, expect_architecture="ssd300_vgg16", expect_classes=VOC_CLASSES)
    assert loaded_card == ModelCard.from_dict(card.to_dict())
    assert loaded_card.class_names == VOC_CLASSES
    assert loaded_card.default_boxes["scales"] == [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05]
    assert loaded_card.training["code_version"] == ssd_ros.__version__
    assert loaded_card.training["dataset"] == "VOC07+12" and loaded_card.training["iterations"] == 120000
    assert not loaded.training
    image = [torch.rand(3, 200, 260)]
    model.score_thresh = loaded.score_thresh = 0.0
    with torch.inference_mode():
        a, b = model(image)[0], loaded(image)[0]
    assert len(a["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(a[key], b[key])


def test_roundtrip_lite_and_card_fields(lite_file):
    path, model = lite_file
    rng = torch.get_rng_state()
    loaded, card = load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), rng)  # loading mid-training leaves the RNG alone
    assert card.architecture == LITE and card.class_names == NAMES
    assert card.input_size == (320, 320) and card.image_mean == (0.5, 0.5, 0.5)
    assert card.training["metric"] == {"mAP": 0.5} and card.num_classes == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_extra_training_state_roundtrip(tmp_path):
    model = _lite_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[80000, 100000], gamma=0.1)
    model.train()
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    scheduler.step()
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),  # holds a collections.Counter
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": list(range(3))},
        "iteration": 1,
    }
    card = ModelCard.for_architecture(LITE, NAMES, dataset="x", iterations=1, note="free-form")
    path = save_checkpoint(tmp_path / "resume.pt", model, card, extra=extra)
    payload = read_checkpoint_payload(path)
    assert payload.card.training["note"] == "free-form"
    assert payload.extra["iteration"] == 1
    assert torch.equal(payload.extra["rng"]["torch"], torch.get_rng_state())
    assert payload.extra["rng"]["torch"].dtype == torch.uint8
    assert payload.extra["scheduler"]["milestones"] == scheduler.state_dict()["milestones"]
    restored = torch.optim.SGD(_lite_model().parameters(), lr=1.0)
    restored.load_state_dict(payload.extra["optimizer"])  # really resumable
    assert restored.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert set(payload.state_dict) == set(model.state_dict())


def test_save_refuses_what_would_not_load_safely(tmp_path):
    import numpy as np

    model = _lite_model()
    card = ModelCard.for_architecture(LITE, NAMES)
    with pytest.raises(TypeError, match=r"holds .*numpy.ndarray"):
        save_checkpoint(tmp_path / "x.pt", model, card, extra={"rng": {"numpy": np.zeros(3)}})
    with pytest.raises(ValueError, match="class-count mismatch"):
        save_checkpoint(tmp_path / "x.pt", model, ModelCard.for_architecture(LITE, NAMES[:2]))
    with pytest.raises(ValueError, match="does not match its card"):
        save_checkpoint(tmp_path / "x.pt", model, ModelCard.for_architecture("ssd300_vgg16", NAMES))
    assert not list(tmp_path.iterdir())  # nothing written


def test_save_is_atomic_over_an_existing_file(tmp_path, lite_file, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes((lite_file[0]).read_bytes())

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _lite_model(seed=5), ModelCard.for_architecture(LITE, NAMES))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # temp file removed
    monkeypatch.undo()
    load_checkpoint(path)  # the old file is intact


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nothing\.pt: no such file"):
        load_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"this is a text file, not weights\n", b"", b"PK\x03\x04not really a zip"],
    ids=["random-bytes", "text", "empty", "zip-magic-garbage"],
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert any(word in info.value.problem for word in ("not a checkpoint", "empty", "truncated or corrupted"))


def test_truncated(tmp_path, lite_file):
    data = lite_file[0].read_bytes()
    for fraction in (0.5, 0.99):
        path = tmp_path / f"cut{fraction}.pt"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_corrupted_inside(tmp_path, lite_file):
    data = bytearray(lite_file[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the weights
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_malicious_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "PWNED"
    # A torch.save zip (what a checkpoint looks like) and a raw pickle, both carrying the payload.
    zipped = tmp_path / "evil.pt"
    torch.save({"format": "ssd_ros.checkpoint", "card": _Evil(marker), "state_dict": {}}, zipped)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    # The payload is real: plain pickle would run it.
    with open(raw, "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(zipped)
    assert "system" in str(info.value) and str(zipped) in str(info.value)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(raw)
    with pytest.raises(CheckpointError):
        read_checkpoint_payload(zipped)
    assert not marker.exists()


def _save_payload(path, payload):
    torch.save(payload, path)
    return path


def test_missing_keys_and_bad_structure(tmp_path, lite_file):
    good = torch.load(lite_file[0], weights_only=True)
    cases = {
        "bare state_dict": (dict(good["state_dict"]), "bare state_dict"),
        "list": ([1, 2, 3], "holds a list"),
        "no card": ({k: v for k, v in good.items() if k != "card"}, "missing required key.*card"),
        "no weights": ({k: v for k, v in good.items() if k != "state_dict"}, "missing required key.*state_dict"),
        "card lacks names": (
            {**good, "card": {k: v for k, v in good["card"].items() if k != "class_names"}},
            "invalid model card: model card lacks class_names",
        ),
        "future format": ({**good, "format_version": 99}, "format_version 99"),
        "bad architecture": ({**good, "card": {**good["card"], "architecture": "yolov8"}}, "unknown architecture"),
        "missing weights": (
            {**good, "state_dict": dict(list(good["state_dict"].items())[:-5])},
            "5 missing",
        ),
    }
    for name, (payload, pattern) in cases.items():
        path = _save_payload(tmp_path / f"{name.replace(' ', '_')}.pt", payload)
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value), name


def test_architecture_mismatch_between_card_and_weights(tmp_path, lite_file):
    good = torch.load(lite_file[0], weights_only=True)
    vgg_card = ModelCard.for_architecture("ssd300_vgg16", NAMES).to_dict()
    path = _save_payload(tmp_path / "liar.pt", {**good, "card": vgg_card})
    with pytest.raises(CheckpointError, match="do not match architecture 'ssd300_vgg16'"):
        load_checkpoint(path)


def test_class_count_mismatch_between_card_and_weights(tmp_path, lite_file):
    good = torch.load(lite_file[0], weights_only=True)
    card = {**good["card"], "class_names": list(VOC_CLASSES)}
    path = _save_payload(tmp_path / "classes.pt", {**good, "card": card})
    with pytest.raises(CheckpointError, match=r"class-count mismatch: the card lists 20 classes .* weights have 4"):
        load_checkpoint(path)


def test_expectation_mismatch(lite_file):
    path = lite_file[0]
    with pytest.raises(CheckpointError, match="architecture mismatch: expected 'ssd300_vgg16'"):
        load_checkpoint(path, expect_architecture="ssd300_vgg16")
    with pytest.raises(CheckpointError, match="expected 20 classes, the checkpoint has 3"):
        load_checkpoint(path, expect_classes=VOC_CLASSES)
    with pytest.raises(CheckpointError, match="different names/order at 0"):
        load_checkpoint(path, expect_classes=("stop sign", "person", "traffic light"))
    load_checkpoint(path, expect_architecture=LITE, expect_classes=list(NAMES))


def test_card_validation():
    with pytest.raises(ValueError, match="duplicates"):
        ModelCard.for_architecture(LITE, ["a", "a"])
    with pytest.raises(ValueError, match="background"):
        ModelCard.for_architecture(LITE, ["__background__", "a"])
    with pytest.raises(ValueError, match="input_size"):
        ModelCard(LITE, ("a",), (300, 300), (0.5,) * 3, (0.5,) * 3, {})
    card = ModelCard.for_architecture(LITE, NAMES)
    data = card.to_dict()
    assert type(data["class_names"]) is list and ModelCard.from_dict(data) == card


def test_coco_card_describes_torchvision_coco_model():
    card = coco_model_card()
    assert card.class_names == coco_class_names() and len(card.label_map) == 91 and card.num_classes == 91
    assert card.default_boxes["scales"][0] == 0.07
    # The card rebuilds torchvision's COCO structure (91 outputs, COCO anchors), so the downloaded
    # model saved with save_checkpoint loads offline like any other checkpoint.
    rebuilt = card.build_model()
    assert rebuilt.head.classification_head.module_list[0].out_channels == 91 * 4
    assert rebuilt.anchor_generator.scales == [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]


def test_coco_ssdlite_card_and_checkpoint_round_trip(tmp_path):
    """torchvision's COCO SSDlite (reduced MobileNetV3 tail) saved as a checkpoint loads offline like any other."""
    card = coco_model_card(LITE)
    assert card.architecture == LITE and card.reduced_tail and card.class_names == coco_class_names()
    assert card.label_map == coco_label_map() and card.num_classes == 91 and "person" in card.class_names
    assert ModelCard.from_dict(card.to_dict()) == card and card.to_dict()["reduced_tail"] is True
    model = torchvision_coco_model(LITE)
    path = save_checkpoint(tmp_path / "coco_ssdlite.pt", model, card)
    loaded, loaded_card = load_checkpoint(path, expect_architecture=LITE)
    assert loaded_card.reduced_tail and loaded_card.label_map == card.label_map
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # The same weights under a card without the reduced tail: refused, naming the shapes.
    full_tail = ModelCard.from_dict({**card.to_dict(), "reduced_tail": False})
    with pytest.raises(ValueError, match="tensor shape"):
        save_checkpoint(tmp_path / "wrong.pt", model, full_tail)


def test_reduced_tail_in_the_card_is_checked():
    data = ModelCard.for_architecture(LITE, NAMES).to_dict()
    assert data["reduced_tail"] is False
    del data["reduced_tail"]  # a card written before the field existed
    assert ModelCard.from_dict(data).reduced_tail is False
    with pytest.raises(ValueError, match="reduced_tail must be true or false, got 'yes'"):
        ModelCard.from_dict({**data, "reduced_tail": "yes"})
    vgg = ModelCard.for_architecture("ssd300_vgg16", NAMES).to_dict()
    with pytest.raises(ValueError, match="reduced_tail is a MobileNetV3 option; ssd300_vgg16 has no such backbone"):
        ModelCard.from_dict({**vgg, "reduced_tail": True})


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask):
    """Like any file write (not mkstemp's 0600): a robot service running as another user must read it."""
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "model.pt", _lite_model(seed=1), ModelCard.for_architecture(LITE, NAMES))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


_KILLED_SAVER = """
import sys, torch
from ssd_ros.vision.checkpoint import save_checkpoint
from ssd_ros.vision.model_card import ModelCard
from ssd_ros.vision.model import build_model
model = build_model("ssd300_vgg16", 4)  # ~100 MB: the write takes long enough to be killed in the middle
card = ModelCard.for_architecture("ssd300_vgg16", ["a", "b", "c"])
print("saving", flush=True)
while True:
    save_checkpoint(sys.argv[1], model, card)
"""


def kill_9_while_saving(path):
    """Start a process that saves ``path`` in a loop and SIGKILL it once its temp file exists; its pid."""
    saver = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline() == "saving\n"
        # Polled every millisecond: the kill must land while the temp file is being written.
        wait_until(
            lambda: list(path.parent.glob(f".{path.name}.*.tmp")), 120, "the temp file", step=lambda: time.sleep(0.001)
        )
        saver.kill()  # SIGKILL: no handler, no cleanup
    finally:
        saver.kill()
        saver.wait()
    return saver.pid


def test_kill_9_during_save_leaves_a_temp_file_the_next_save_removes(tmp_path):
    path = tmp_path / "last.pt"
    # The kill lands mid-write unless this process was descheduled for the whole ~100 MB write: retry then.
    for _ in range(3):
        pid = kill_9_while_saving(path)
        if list(tmp_path.glob(".last.pt.*.tmp")):
            break
    leftovers = list(tmp_path.glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1 and f".{pid}." in leftovers[0].name
    # A temp file of a save still running in another process (this one's pid, alive) is left alone.
    in_progress = tmp_path / f".last.pt.{os.getpid()}.0123abcd.tmp"
    in_progress.write_bytes(b"partial")
    legacy = tmp_path / ".last.pt.k3j2h1g0.tmp"  # the earlier mkstemp naming: always a leftover
    legacy.write_bytes(b"partial")

    save_checkpoint(path, _lite_model(seed=2), ModelCard.for_architecture(LITE, NAMES))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", in_progress.name])
    load_checkpoint(path)
