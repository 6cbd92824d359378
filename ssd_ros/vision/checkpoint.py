"""Self-describing checkpoints: model weights plus a :class:`~ssd_ros.vision.model_card.ModelCard` saying what they are.

File format (``torch.save`` zip, loaded with ``torch.load(weights_only=True)``, so loading a file never
runs code from it; everything stored is a tensor or a plain container/scalar)::

    {
        "format": "ssd_ros.checkpoint",
        "format_version": 1,
        "card": {architecture, class_names, input_size, image_mean, image_std, default_boxes,
                 label_map, training},
        "state_dict": {parameter name: tensor},      # model.state_dict(), on CPU
        "extra": {...} | None,                       # optional training state (optimizer, RNG, ...)
    }

The card is authoritative: :func:`load_checkpoint` builds the model from it with
:func:`ssd_ros.vision.model.build_model` (architecture, class count, default boxes, normalisation) and then
loads the weights strictly.  Every failure raises :class:`CheckpointError` naming the file and the
problem.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import pickle
import secrets
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ssd_ros
from ssd_ros.vision import model as model_lib
from ssd_ros.vision.model_card import ModelCard, coco_model_card

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "CheckpointPayload",
    "load_checkpoint",
    "load_coco_pretrained",
    "read_checkpoint_payload",
    "remove_stale_temp_files",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "ssd_ros.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, malformed or does not fit what was expected."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


@dataclass
class CheckpointPayload:
    """Everything in a checkpoint file, validated but not yet turned into a model."""

    path: str
    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------------
# Saving


def _serialise(card: ModelCard, model: nn.Module, extra: Mapping[str, Any] | None) -> bytes:
    """The file's bytes; raises before anything is written if the file would not load as it should."""
    card_dict = card.to_dict()
    card_dict["training"].setdefault("code_version", ssd_ros.__version__)
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    # The weights must be the architecture the card claims (catches saving the wrong card). A model on the
    # meta device has the shapes without allocating or initialising any weights.
    with torch.device("meta"):
        expected = {k: v.shape for k, v in card.build_model().state_dict().items()}
    problem = _state_dict_problem(expected, state_dict, card)
    if problem:
        raise ValueError(f"model does not match its card: {problem}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "card": card_dict,
        "state_dict": state_dict,
        "extra": None if extra is None else dict(extra),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(buffer)
    if unsafe:
        raise TypeError(
            f"the card or extra state holds {', '.join(unsafe)}; checkpoints hold only tensors and plain "
            "containers/scalars (so they load with weights_only=True): convert it (e.g. numpy -> torch.from_numpy)"
        )
    return buffer.getvalue()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    card: ModelCard,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights, ``card`` and optional ``extra`` state to ``path`` atomically.

    The file is written to a temporary file in the same directory, fsynced, then renamed over ``path``
    (a crash leaves either the old file or the new one, never half a file; the temp file a killed save
    leaves is removed by the next save, see :func:`remove_stale_temp_files`). The file mode follows the
    umask, like any file write. ``card.training`` gets ``code_version`` if it has none. ``extra``
    (optimizer/scheduler/scaler state, RNG states as ByteTensors, ...) must hold only tensors and plain
    containers/scalars; anything else raises TypeError before anything is written, as does a model whose
    weights do not fit the card (ValueError).
    """
    path = Path(path)
    data = _serialise(card, model, extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    # Our own temp name carries the writer's pid, so a later save can tell a crash leftover from a save in
    # progress. Created by os.open with 0o666 so the umask applies, as for any file write (mkstemp's 0600
    # would hide the checkpoint from a robot service running as another user).
    tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every OS)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed save of ``path`` left (``.<name>.<pid>.<hex>.tmp``); returns them.

    Only files of :func:`save_checkpoint`'s own naming are touched, and only when the process that wrote
    them is gone (``kill -9`` or power loss mid-save); a save in progress in another live process keeps its
    file. Names of the earlier ``mkstemp`` form (``.<name>.<random>.tmp``, no pid) are always leftovers.
    """
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        middle = candidate.name[len(path.name) + 2 : -len(".tmp")].split(".")
        if len(middle) == 2 and middle[0].isdigit() and _pid_alive(int(middle[0])):
            continue
        with contextlib.suppress(FileNotFoundError):  # another saver cleaned it first
            candidate.unlink()
            removed.append(candidate)
    return removed


# ---------------------------------------------------------------------------------------------------
# Loading


def _read_file(path: Path) -> Any:
    """The unpickled content of a checkpoint file, read once; only tensors and plain containers load."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from e
    if not data:
        raise CheckpointError(path, "is empty (0 bytes)")
    # torch.load does not verify the zip's CRCs (a flipped bit in the weights loads silently), so the
    # archive is tested here, on the bytes torch then reads.
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile as e:
        if data.startswith(b"PK\x03\x04"):
            raise CheckpointError(path, f"is truncated or corrupted (its zip directory is damaged: {e})") from e
        raise CheckpointError(path, f"is not a checkpoint (not a PyTorch zip archive: starts with {data[:8]!r})") from e
    if damaged is not None:
        raise CheckpointError(path, f"is corrupted (bad CRC in archive member {damaged})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": failures are reported below
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message advises weights_only=False, which is how a malicious file would run its code:
        # it is not passed on.
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        raise CheckpointError(
            path,
            f"refused to load: it pickles {', '.join(unsafe) or 'Python objects'}, and this loader never "
            "unpickles anything but tensors and plain containers (a whole model saved with torch.save(model)? "
            "save the weights with ssd_ros.vision.checkpoint.save_checkpoint, as train.py does)",
        ) from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for garbage inside a well-formed zip
        raise CheckpointError(path, f"is not a PyTorch checkpoint or is corrupted ({type(e).__name__}: {e})") from e


def read_checkpoint_payload(path: str | os.PathLike) -> CheckpointPayload:
    """Read and validate a checkpoint without building a model (for training resume and tools)."""
    path = Path(path)
    data = _read_file(path)
    if not isinstance(data, dict):
        raise CheckpointError(path, f"is not an ssd_ros checkpoint (holds a {type(data).__name__}, not a dict)")
    if data.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if "format" not in data and all(isinstance(v, torch.Tensor) for v in data.values()):
            hint = " (looks like a bare state_dict: save it with ssd_ros.vision.checkpoint.save_checkpoint + ModelCard)"
        raise CheckpointError(path, f"is not an ssd_ros checkpoint (no 'format': {CHECKPOINT_FORMAT!r} key){hint}")
    version = data.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            path, f"has format_version {version!r}; this code reads up to {CHECKPOINT_FORMAT_VERSION} (update ssd_ros)"
        )
    missing = [key for key in ("card", "state_dict") if key not in data]
    if missing:
        raise CheckpointError(path, f"is missing required key(s): {', '.join(missing)}")
    if not isinstance(data["card"], dict):
        raise CheckpointError(path, "has a malformed model card (not a dict)")
    state_dict = data["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(path, "has a malformed state_dict (expected a dict of tensors)")
    try:
        card = ModelCard.from_dict(data["card"])
    except (KeyError, ValueError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise CheckpointError(path, f"has an invalid model card: {message}") from e
    extra = data.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError(path, "has a malformed 'extra' entry (expected a dict)")
    return CheckpointPayload(str(path), card, state_dict, extra)


def _state_dict_problem(
    expected: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor], card: ModelCard
) -> str | None:
    """Why ``state_dict`` cannot be loaded into the model ``card`` describes, or None if it can."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        return (
            f"weights do not match architecture {card.architecture!r} named in the card "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    mismatched = [k for k in expected if tuple(state_dict[k].shape) != tuple(expected[k])]
    if not mismatched:
        return None
    if all(k.startswith("head.classification_head.") for k in mismatched):
        key = mismatched[0]
        outputs_expected, outputs_found = expected[key][0], state_dict[key].shape[0]
        found = outputs_found * card.num_classes / outputs_expected
        found_text = str(int(found)) if math.isclose(found, round(found)) else f"{found:.2f}"
        return (
            f"class-count mismatch: the card lists {len(card.class_names)} classes "
            f"({card.num_classes} outputs with background) but the weights have {found_text} outputs "
            f"({key}: {tuple(state_dict[key].shape)} vs {tuple(expected[key])})"
        )
    key = mismatched[0]
    return (
        f"weights do not match architecture {card.architecture!r} with the card's default boxes: "
        f"{len(mismatched)} tensor shape(s) differ, e.g. {key}: {tuple(state_dict[key].shape)} "
        f"vs {tuple(expected[key])}"
    )


def check_card(
    path: str | os.PathLike,
    card: ModelCard,
    expect_architecture: str | None = None,
    expect_classes: Sequence[str] | None = None,
) -> None:
    """Raise :class:`CheckpointError` naming ``path`` when ``card`` is not the expected architecture/classes."""
    if expect_architecture is not None and card.architecture != expect_architecture:
        raise CheckpointError(
            path, f"architecture mismatch: expected {expect_architecture!r}, the checkpoint is {card.architecture!r}"
        )
    if expect_classes is not None and tuple(expect_classes) != card.class_names:
        expected = tuple(expect_classes)
        if len(expected) != len(card.class_names):
            detail = f"expected {len(expected)} classes, the checkpoint has {len(card.class_names)}"
        else:
            diffs = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(expected, card.class_names)) if a != b]
            detail = f"same count, different names/order at {', '.join(diffs[:5])}"
        raise CheckpointError(path, f"class mismatch: {detail} ({list(card.class_names)})")


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect_architecture: str | None = None,
    expect_classes: Sequence[str] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Build the model a checkpoint's card describes, load its weights, return ``(model, card)``.

    The model is in eval mode on ``device``. ``expect_architecture`` / ``expect_classes`` (names in
    order) make a mismatch an error instead of a surprise (e.g. resuming training on another dataset).
    Raises :class:`CheckpointError` for every problem with the file.
    """
    payload = read_checkpoint_payload(path)
    card = payload.card
    check_card(path, card, expect_architecture, expect_classes)
    try:
        model = card.build_model()
    except ValueError as e:
        raise CheckpointError(path, f"has an invalid model card: {e}") from e
    problem = _state_dict_problem({k: v.shape for k, v in model.state_dict().items()}, payload.state_dict, card)
    if problem:
        raise CheckpointError(path, problem)
    model.load_state_dict(payload.state_dict, strict=True)
    return model.to(device).eval(), card


# ---------------------------------------------------------------------------------------------------
# torchvision's COCO models


def load_coco_pretrained(
    architecture: str = "ssd300_vgg16", device: str | torch.device = "cpu", *, progress: bool = False
) -> tuple[nn.Module, ModelCard]:
    """Load the COCO-trained ``architecture`` of torchvision (one of ``ARCHITECTURES``) with its card.

    ``(model, card)``: the model in eval mode on ``device``; the card carries the 80 COCO names and the label
    map of the 91 outputs. Needs internet once (or the file in torch's hub cache); raises
    :class:`ssd_ros.vision.model.WeightsUnavailableError` saying what to do otherwise, or when the cached file
    is not the published one, and ValueError for an unknown architecture. To use it offline, save it once with
    ``save_checkpoint(path, model, card)`` (or export it) and load that file.
    """
    model = model_lib.build_coco_model(architecture, progress=progress)
    return model.to(device).eval(), coco_model_card(architecture)
