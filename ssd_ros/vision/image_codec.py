"""Camera image bytes <-> RGB uint8 arrays, without cv_bridge and without ROS.

The functions take the fields of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` as plain
values so the core, the nodes and the offline tools share one implementation (the ROS-message wrappers
live in :mod:`ssd_ros.ros.images`). Every decoded image is a new, writable, C-contiguous
``(height, width, 3)`` uint8 array in RGB order.

Raw encodings (names as in ``sensor_msgs/image_encodings``):

=============== ============== ===================================================================
encoding        bytes / pixel  notes
=============== ============== ===================================================================
``rgb8``        3
``bgr8``        3
``rgba8``       4              alpha dropped
``bgra8``       4              alpha dropped
``mono8``       1              grey replicated to three channels
``yuyv``        2              YUYV byte order (Y0 U Y1 V); width must be even
``yuv422_yuy2`` 2              the same as ``yuyv`` (its older name)
``uyvy``        2              UYVY byte order (U Y0 V Y1); width must be even
``yuv422``      2              the same as ``uyvy`` (its older name)
``mono16``      2              scaled to 8 bits (high byte); ``is_bigendian`` selects the byte order
=============== ============== ===================================================================

Jazzy's ``sensor_msgs`` names the YUV 4:2:2 layouts by their fourcc (``yuyv``, ``uyvy``: what camera_ros
sends) and keeps ``yuv422_yuy2`` and ``yuv422`` as deprecated aliases (usb_cam, v4l2_camera): both are read.

``is_bigendian`` only matters for encodings whose channels are wider than one byte (``mono16`` here);
for the 8-bit encodings there is no byte order to honour, so it is accepted and ignored.

``step`` is the length of one row in bytes and may include padding after the pixels
(``step >= width * bytes_per_pixel``); the padding is dropped. ``data`` must be exactly
``step * height`` bytes long.

Image files (training and evaluation data, ``make_bag --images``, int8 calibration images) are read by
:func:`read_image_file` alone, with the same checks as a camera's compressed frames; :data:`IMAGE_SUFFIXES`
are the file name endings that count as images, in any letter case.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "COMPRESSED_FORMATS",
    "IMAGE_SUFFIXES",
    "RAW_ENCODINGS",
    "MAX_PIXELS",
    "ImageDecodeError",
    "ImageFolderError",
    "decode_compressed",
    "decode_raw",
    "encode_compressed",
    "encode_raw",
    "image_files",
    "read_image_file",
    "validate_image",
]


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB image; the message says what is wrong."""


# Larger than any camera this package meets (8K is 33 MP). A forged header may ask for more: decoding it
# would take gigabytes (OOM on a Pi) or make OpenCV raise past its own limit, so it is refused up front.
MAX_PIXELS = 50_000_000


def _check_pixel_count(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"{what} of {width}x{height} exceeds the {MAX_PIXELS:,}-pixel limit")


def _check_header_size(raw: bytes, what: str) -> None:
    """Refuse an image whose header asks for too many pixels; Pillow reads only the header, not the pixels."""
    try:
        # Pillow warns between its two limits; ours is lower and says it once per frame as an error instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Image.open itself warns
            with Image.open(io.BytesIO(raw)) as image:
                size = image.size
    except Image.DecompressionBombError as error:  # beyond Pillow's own limit, which is above ours
        raise ImageDecodeError(f"{what} exceeds the {MAX_PIXELS:,}-pixel limit ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # unknown or broken header: cv2 decides
        return
    _check_pixel_count(*size, what)


# encoding -> (bytes per pixel, cv2 conversion to RGB of the unpadded (H, W, C) array, or None for a copy).
_RAW: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "yuyv": (2, cv2.COLOR_YUV2RGB_YUY2),
    "yuv422_yuy2": (2, cv2.COLOR_YUV2RGB_YUY2),
    "uyvy": (2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": (2, cv2.COLOR_YUV2RGB_UYVY),
    "mono16": (2, cv2.COLOR_GRAY2RGB),
}
RAW_ENCODINGS: tuple[str, ...] = tuple(_RAW)
"""Encodings :func:`decode_raw` accepts."""
# Two bytes per pixel, a chroma pair shared by two neighbouring pixels.
_YUV422 = frozenset(("yuyv", "yuv422_yuy2", "uyvy", "yuv422"))

# The 8-bit encodings encode_raw writes (RGB -> encoding); the nodes and tools publish rgb8 or bgr8.
_FROM_RGB: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_RGB2BGR,
    "rgba8": cv2.COLOR_RGB2RGBA,
    "bgra8": cv2.COLOR_RGB2BGRA,
    "mono8": cv2.COLOR_RGB2GRAY,
}

# CompressedImage codecs by the names image_transport and cameras write, -> file extension for OpenCV.
_CODECS: dict[str, str] = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
COMPRESSED_FORMATS: tuple[str, ...] = tuple(_CODECS)
"""Codec names :func:`decode_compressed` accepts (also inside ``"rgb8; jpeg compressed bgr8"`` strings)."""

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")


class ImageFolderError(ValueError):
    """A folder of images that is missing or holds none; the message names it."""


def image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` (IMAGE_SUFFIXES in any letter case) in sorted name order (the frame order)."""
    if not folder.is_dir():
        raise ImageFolderError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageFolderError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


"""Image file name endings, compared case-insensitively (``a.JPG`` is an image), in order of preference."""

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_JPEG_SCAN = 0xDA
# A marker: 0xFF fill bytes, then a byte that is neither 0xFF nor 0x00 (FF 00 is a stuffed 0xFF data byte).
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RST0-7, SOI: markers without a length field
_JPEG_MAX_HEADER_MARKERS = 1000  # real files have a few dozen; past this the data is not a camera's JPEG


def _jpeg_truncated(raw: bytes) -> bool:
    """True when a JPEG ends before its end-of-image marker (libjpeg would fill the missing rows with grey).

    The header segments are walked by their lengths (an EXIF thumbnail, a whole JPEG inside APP1, is
    skipped with its segment) to the first start-of-scan marker; after it, FF D9 can only be the
    end-of-image marker, since entropy-coded data stuffs every 0xFF data byte with 0x00 and markers
    between the scans of a progressive JPEG are never D9. Bytes after the end-of-image marker (camera
    trailers, padding, a phone's appended motion-photo video) do not matter. Cost: a few dozen header steps
    and one ``bytes.rfind`` that stops at the file's last bytes unless the JPEG is in fact cut.
    """
    position = 2  # after the start-of-image marker
    for _ in range(_JPEG_MAX_HEADER_MARKERS):
        match = _JPEG_MARKER.search(raw, position)  # stray bytes before a marker are skipped, as libjpeg does
        if match is None:
            return True  # the data ends in the header segments
        marker, position = match.group(1)[0], match.end()
        if marker == _JPEG_SCAN:
            return raw.rfind(_JPEG_END, position) < 0  # from the end: found at once in a whole file
        if marker == _JPEG_END[1]:
            return False  # an image without a scan (tables only): not truncated, OpenCV refuses it
        if marker not in _JPEG_NO_LENGTH:
            if position + 2 > len(raw):
                return True
            position += int.from_bytes(raw[position : position + 2], "big")
    last_scan = raw.rfind(bytes([0xFF, _JPEG_SCAN]))  # a forged header of endless markers: the cheap test
    return last_scan < 0 or raw.find(_JPEG_END, last_scan) < 0


def decode_raw(
    encoding: str, width: int, height: int, step: int, is_bigendian: bool, data, *, copy: bool = True
) -> np.ndarray:
    """RGB uint8 ``(height, width, 3)`` image from the fields of a ``sensor_msgs/Image``.

    Args:
        encoding: one of :data:`RAW_ENCODINGS`.
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        step: row length in bytes, ``>= width * bytes_per_pixel``; extra bytes per row are padding.
        is_bigendian: byte order of multi-byte channels (only ``mono16``; ignored for 8-bit encodings).
        data: the pixel bytes (``bytes``, ``bytearray``, ``array.array('B')``, ``memoryview``...),
            exactly ``step * height`` long.
        copy: False returns a view of ``data`` where the pixels need no conversion (``rgb8``), read-only if
            ``data`` is: for a buffer that only the caller holds and nobody reuses.

    Raises:
        ImageDecodeError: unknown encoding, non-positive size, odd width for a YUV 4:2:2 encoding,
            step smaller than a row, or data of the wrong length (both lengths given).
    """
    if encoding not in _RAW:
        raise ImageDecodeError(f"unknown encoding {encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"invalid image size {width}x{height}: width and height must be > 0")
    _check_pixel_count(width, height, "image")
    bytes_per_pixel, conversion = _RAW[encoding]
    if encoding in _YUV422 and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width (pixels come in pairs), got {width}")
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than one row of {encoding} ({width} px x {bytes_per_pixel} B = {row_bytes} B)"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    expected = step * height
    if buffer.size < expected:
        raise ImageDecodeError(
            f"truncated data: {buffer.size} bytes, expected step x height = {step} x {height} = {expected}"
        )
    if buffer.size > expected:
        raise ImageDecodeError(
            f"data too long: {buffer.size} bytes, expected step x height = {step} x {height} = {expected}"
        )
    # Strided view of the pixels without the row padding; cvtColor copies it into a fresh array.
    rows = buffer.reshape(height, step)[:, :row_bytes]
    if encoding == "mono16":
        # The high byte of each sample is the 8-bit value; which byte that is depends on the byte order.
        pixels = rows.reshape(height, width, 2)[:, :, 0 if is_bigendian else 1]
        return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)
    channels = 2 if encoding in _YUV422 else bytes_per_pixel
    pixels = rows.reshape(height, width, channels)
    if conversion is None:
        # By default a copy: the caller's buffer may be read-only or reused by the middleware.
        return np.array(pixels, dtype=np.uint8, order="C", copy=True) if copy else pixels
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def _codec(fmt: str) -> str | None:
    """The codec named by a CompressedImage ``format`` (None when the format is empty)."""
    text = fmt.strip().lower()
    if not text:
        return None
    # image_transport writes "<raw encoding>; <codec> compressed <encoding>"; the codec follows the ';'.
    words = text.split(";", 1)[-1].replace(",", " ").split()
    for word in words:
        if word in _CODECS:
            return word
    raise ImageDecodeError(f"unsupported compressed format {fmt!r} (supported codecs: {', '.join(COMPRESSED_FORMATS)})")


def decode_compressed(fmt: str, data) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` image from the fields of a ``sensor_msgs/CompressedImage``.

    Args:
        fmt: ``"jpeg"``, ``"png"`` or an image_transport string such as ``"rgb8; jpeg compressed bgr8"``.
            An empty format is accepted (some drivers leave it blank); the codec is then read from the bytes.
        data: the compressed bytes.

    The image is the pixels as sent: a JPEG's EXIF orientation is not applied (as in image_transport).

    Raises:
        ImageDecodeError: unsupported format, empty data, a JPEG without its end-of-image marker
            (truncated in transit: libjpeg would silently fill the rest with grey), or bytes OpenCV
            cannot decode.
    """
    codec = _codec(fmt)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageDecodeError(f"empty {fmt or 'compressed'} data (0 bytes)")
    # The pixels as sent, never turned by an EXIF orientation (phones, IP cameras): image_transport's compressed
    # subscriber (IMREAD_UNCHANGED), RViz and the camera's CameraInfo all use them, so the boxes must too.
    return _decode(buffer, codec or "compressed", cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` image from a JPEG, PNG or BMP file: the one reader of image files.

    The bytes go through the camera frames' decoder (:func:`decode_compressed`), so a file is held to the
    same checks: a truncated JPEG is refused rather than silently completed with grey, and a header
    claiming more than :data:`MAX_PIXELS` is refused before decoding. Grey and alpha images become RGB.

    Raises:
        ImageDecodeError: the file is missing, unreadable or empty, a truncated JPEG, too large, or not
            an image OpenCV decodes; the message starts with the path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: image file not found") from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise ImageDecodeError(f"{path}: cannot read image file ({error.strerror or error})") from None
    if not data:
        raise ImageDecodeError(f"{path}: empty image file (0 bytes)")
    try:
        return _decode(np.frombuffer(data, dtype=np.uint8), "image")
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{path}: {error}") from None


def _decode(buffer: np.ndarray, what: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """RGB image from non-empty encoded bytes; ``what`` names them in messages (codec, "compressed", "image").

    ``flags``: OpenCV's read flags; the default turns an image file by its EXIF orientation, as ``cv2.imread`` does.
    """
    raw = buffer.tobytes()
    if raw[:2] == _JPEG_START and _jpeg_truncated(raw):
        raise ImageDecodeError(f"truncated JPEG: no end-of-image marker after its image data ({buffer.size} bytes)")
    _check_header_size(raw, f"{what} image header" if what != "image" else "image header")
    try:
        bgr = cv2.imdecode(buffer, flags)
    except cv2.error as error:  # e.g. a header beyond OpenCV's own size limit in a format Pillow cannot read
        raise ImageDecodeError(f"undecodable {what} data ({buffer.size} bytes): {error}") from error
    if bgr is None:
        raise ImageDecodeError(f"undecodable {what} data ({buffer.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def validate_image(image: Any, what: str = "image") -> np.ndarray:
    """Return ``image`` if it is an RGB uint8 HxWx3 numpy array, else raise ValueError saying why."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (RGB uint8 HxWx3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (RGB 0..255, HxWx3), got dtype {image.dtype}")
    if image.ndim != 3:
        raise ValueError(f"{what} must have 3 dimensions (HxWx3 RGB), got shape {image.shape}")
    if image.shape[2] != 3:
        raise ValueError(f"{what} must have 3 channels (RGB, HxWx3), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {image.shape}")
    return image


def encode_raw(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[bytes, int]:
    """``(data, step)`` for a ``sensor_msgs/Image`` holding ``rgb`` in an 8-bit ``encoding``, rows unpadded.

    ``encoding``: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8`` (:func:`decode_raw` reads more).
    """
    validate_image(rgb)
    if encoding not in _FROM_RGB:
        raise ValueError(f"unknown encoding {encoding!r} (supported: {', '.join(_FROM_RGB)})")
    conversion = _FROM_RGB[encoding]
    pixels = np.ascontiguousarray(rgb) if conversion is None else cv2.cvtColor(np.ascontiguousarray(rgb), conversion)
    rows = pixels.reshape(rgb.shape[0], -1)
    return rows.tobytes(), rows.shape[1]


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", *, jpeg_quality: int = 90) -> bytes:
    """JPEG or PNG bytes of ``rgb`` for a ``sensor_msgs/CompressedImage`` (``fmt`` as in :func:`decode_compressed`)."""
    validate_image(rgb)
    codec = _codec(fmt) or "jpeg"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if _CODECS[codec] == ".jpg" else []
    ok, encoded = cv2.imencode(_CODECS[codec], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return encoded.tobytes()
