"""Rosbag2 reading and writing shared by the bag tools (no ROS graph needed).

The container (MCAP or sqlite3 rosbag2) is handled by the pure-Python ``rosbags`` library, because
``rosbag2`` itself has no wheels. Messages are (de)serialised with ``rclpy.serialization``: the tools
then work on the very message classes the live nodes receive and publish, and reuse the nodes'
conversions (``ssd_ros.ros.messages``) instead of re-implementing them for ``rosbags`` dataclasses.
``rosbags``' typestore only supplies each connection's message definition and RIHS01 type hash;
``vision_msgs`` is not in it, so its types are registered from the installed ``.msg`` files, i.e.
exactly the definitions the messages were built from.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

STORAGE_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)


class BagToolError(Exception):
    """A problem with a tool's input the user must fix (message names the bag, topic or file)."""


@functools.cache
def typestore() -> Typestore:
    """ROS 2 Jazzy types plus the installed ``vision_msgs`` definitions."""
    store = get_typestore(Stores.ROS2_JAZZY)
    try:
        msg_dir = Path(get_package_share_directory("vision_msgs")) / "msg"
    except PackageNotFoundError as exc:
        raise BagToolError("vision_msgs is not installed: source the workspace (scripts/env.sh)") from exc
    types = {}
    for path in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"vision_msgs/msg/{path.stem}"))
    store.register(types)
    return store


# ROS 2 interface names (REP 144 package names, CamelCase type names); a bag's type string must be one.
_MSGTYPE = re.compile(r"(?P<package>[a-z][a-z0-9_]*)/msg/(?P<name>[A-Z][A-Za-z0-9]*)")


def message_class(msgtype: str) -> type:
    """The rclpy message class for a type name such as ``sensor_msgs/msg/Image``; ``BagToolError`` otherwise.

    A bag's type names are data from whoever wrote the bag: only ``pkg/msg/Type`` names of installed
    rosidl-generated interface packages are imported. The package is recognised before anything of it is
    imported (its ``<pkg>_s__rosidl_typesupport_c`` library and ``msg`` package, which rosidl_generator_py
    generates), so a name like ``os/msg/X`` or ``this/msg/Zen`` never runs the module it names.
    """
    match = _MSGTYPE.fullmatch(msgtype)
    if match is None:
        raise BagToolError(f"type {msgtype!r} is not a ROS 2 message type name (package/msg/Type)")
    package, name = match["package"], match["name"]
    spec = importlib.util.find_spec(package)  # a top-level name: found, not executed
    folders = [Path(folder) for folder in (spec.submodule_search_locations or [])] if spec else []
    if not any(
        (folder / "msg" / "__init__.py").is_file() and any(folder.glob(f"{package}_s__rosidl_typesupport_c*"))
        for folder in folders
    ):
        raise BagToolError(f"type {msgtype}: {package} is not an installed ROS 2 interface package")
    cls = getattr(importlib.import_module(f"{package}.msg"), name, None)
    if not (isinstance(cls, type) and hasattr(cls, "get_fields_and_field_types")):
        raise BagToolError(f"type {msgtype}: {package} has no message {name}")
    return cls


def serialize(msg) -> bytes:
    """CDR bytes of an rclpy message, as a rosbag2 recorder stores them."""
    return serialize_message(msg)


def deserialize(raw: bytes, msgtype: str):
    """The rclpy message stored as CDR ``raw`` with type name ``msgtype``."""
    return deserialize_message(bytes(raw), message_class(msgtype))


def check_new_bag(path: Path) -> None:
    """Refuse an output bag path that exists already (BagToolError): rosbag2 bags are never overwritten."""
    if path.exists():
        raise BagToolError(f"output {path} exists already; rosbag2 bags are never overwritten")


@contextmanager
def open_writer(path: Path, storage: str) -> Iterator[Writer]:
    """A rosbag2 writer (format version 9) that is closed, with its metadata, even when the caller fails.

    Closing on error is deliberate: whatever was written before a fault stays a readable bag.
    """
    if storage not in STORAGE_PLUGINS:
        raise BagToolError(f"unknown storage {storage!r}; choose one of {sorted(STORAGE_PLUGINS)}")
    check_new_bag(path)
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGE_PLUGINS[storage])
    writer.open()
    try:
        yield writer
    finally:
        writer.close()


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C as a request the caller checks between messages (an event it sets), not a KeyboardInterrupt mid-write.

    A KeyboardInterrupt can land between writing a message and counting it, so what a tool says it wrote would
    differ from its output; the caller stops at its next message instead. A second Ctrl-C raises KeyboardInterrupt
    (a stop that cannot wait). Where SIGINT is ignored (a background job) or cannot be handled (not the main
    thread), the event is never set.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield requested
        return

    def request(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def add_topic(writer: Writer, topic: str, msgtype: str) -> Connection:
    """Register a topic whose type is in :func:`typestore`."""
    return writer.add_connection(topic, msgtype, typestore=typestore())


def copy_connection(writer: Writer, source: Connection) -> Connection:
    """Register ``source``'s topic in ``writer`` with its original definition, hash and offered QoS."""
    if source.msgdef.data and source.digest:
        return writer.add_connection(
            source.topic,
            source.msgtype,
            msgdef=source.msgdef.data,
            rihs01=source.digest,
            offered_qos_profiles=source.ext.offered_qos_profiles,
        )
    # Older bags carry neither definition nor hash: take both from the Jazzy typestore when known.
    return writer.add_connection(
        source.topic, source.msgtype, typestore=typestore(), offered_qos_profiles=source.ext.offered_qos_profiles
    )


MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_DATA_END, _MCAP_FOOTER = 0x0F, 0x02


def recover_mcap(source: Path, target: Path) -> int:
    """Copy of an MCAP file cut short (recorder killed, copy interrupted) that ``rosbags`` can read.

    The copy keeps every complete top-level record (a cut chunk is dropped whole) and ends with a
    footer without summary, so the reader scans the records instead of needing the lost index; like
    ``mcap recover``, but only the part the reader lacks. Returns the number of bytes kept.
    """
    size = source.stat().st_size
    with source.open("rb") as src:
        if src.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise BagToolError(f"{source} is not an MCAP file (bad magic)")
        end = len(MCAP_MAGIC)
        while True:
            head = src.read(9)  # opcode, uint64 little-endian content length
            if len(head) < 9 or head[0] in (_MCAP_DATA_END, _MCAP_FOOTER):
                break
            length = int.from_bytes(head[1:], "little")
            if end + 9 + length > size:
                break
            end += 9 + length
            src.seek(end)
        src.seek(0)
        with target.open("wb") as dst:
            remaining = end
            while remaining:
                block = src.read(min(remaining, 1 << 20))
                dst.write(block)
                remaining -= len(block)
            # Footer record: summary start 0 (none), summary offset start 0, summary CRC 0; closing magic.
            dst.write(bytes([_MCAP_FOOTER]) + (20).to_bytes(8, "little") + bytes(20) + MCAP_MAGIC)
    return end


def _mcap_files(path: Path) -> list[Path]:
    """The MCAP files a bag path stands for: the path itself, the files its metadata.yaml lists, or its only one.

    Empty when the bag is not (only) MCAP: a sqlite3 bag, a folder of several MCAP files and no metadata.
    """
    if path.is_file():
        return [path] if path.suffix == ".mcap" else []
    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        listed = [path / name for name in info["relative_file_paths"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        listed = []
    if listed:
        return listed if all(p.suffix == ".mcap" and p.is_file() for p in listed) else []
    files = sorted(path.glob("*.mcap")) if path.is_dir() else []
    return files if len(files) == 1 else []


def _mcap_intact(path: Path) -> bool:
    """Whether an MCAP file ends with its closing magic, as one the recorder closed does."""
    size = path.stat().st_size
    if size < 2 * len(MCAP_MAGIC):
        return False
    with path.open("rb") as file:
        file.seek(size - len(MCAP_MAGIC))
        return file.read() == MCAP_MAGIC


@contextmanager
def open_bag(path: Path) -> Iterator[tuple[Reader, str | None]]:
    """An open ``rosbags`` reader for a bag folder or a single ``.mcap``/``.db3`` file, and a salvage note.

    A damaged MCAP bag (no footer: the recorder died, a copy was cut), single-file or split into several files,
    has each cut file read through :func:`recover_mcap`; the note then says what was lost. Anything else unreadable
    raises :class:`BagToolError` naming the bag and the reader's complaint.
    """
    if not path.exists():
        raise BagToolError(f"input bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").exists() and not _mcap_files(path):
        # rosbags would say "Expected metadata file ... does not exist", which reads like a damaged bag.
        # rosbag2 writes metadata.yaml when the recorder closes: a split recording cut by a power loss has none.
        split = len(list(path.glob("*.mcap"))) + len(list(path.glob("*.db3"))) > 1
        raise BagToolError(
            f"{path} is not a rosbag2 bag: the folder has no metadata.yaml (a bag folder holds metadata.yaml "
            "and its .mcap or .db3 files)"
            + (f"; for a split recording cut before it closed, `ros2 bag reindex {path}` writes one" if split else "")
        )
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags/apsw raise assorted exception types on damaged files
        files = _mcap_files(path)
        if not files:
            raise BagToolError(f"cannot read bag {path}: {exc}") from exc
        with TemporaryDirectory(prefix="ssd_ros_recover_") as tmp:
            # The bag rebuilt beside: intact files linked, each damaged one (the last of a split bag, usually)
            # salvaged, so a cut file costs its own lost records, not the whole recording.
            losses = []
            damaged = [file for file in files if not _mcap_intact(file)] or files
            for file in files:
                if file not in damaged:
                    (Path(tmp) / file.name).symlink_to(file.absolute())
                else:
                    kept = recover_mcap(file, Path(tmp) / file.name)
                    losses.append(
                        f"read the complete records in the first {kept} of {file.stat().st_size} bytes of {file.name}"
                    )
            if path.is_dir() and len(files) > 1:
                shutil.copyfile(path / "metadata.yaml", Path(tmp) / "metadata.yaml")
                recovered = Path(tmp)
            else:
                recovered = Path(tmp) / files[0].name
            try:
                reader = Reader(recovered)
                reader.open()
            except Exception as second:  # the salvage failed too: report the original problem
                raise BagToolError(f"cannot read bag {path}: {exc} (recovery failed: {second})") from exc
            note = f"bag {path} is damaged ({exc}); {'; '.join(losses)}, the rest is lost"
            try:
                yield reader, note
            finally:
                reader.close()
        return
    try:
        yield reader, None
    finally:
        reader.close()
