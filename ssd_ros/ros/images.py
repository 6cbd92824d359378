"""sensor_msgs Image / CompressedImage <-> RGB uint8 arrays (the project's replacement for cv_bridge).

Thin wrappers over :mod:`ssd_ros.vision.image_codec` that read and fill message fields; the nodes and the bag
tools use these so every entry point decodes camera data the same way.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ssd_ros.vision.image_codec import decode_compressed, decode_raw, encode_compressed, encode_raw

__all__ = ["compressed_msg_to_rgb", "image_msg_to_rgb", "rgb_to_compressed_msg", "rgb_to_image_msg"]


def image_msg_to_rgb(msg: Image, *, copy: bool = True) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` copy of a ``sensor_msgs/Image``; raises ``ImageDecodeError`` naming the problem.

    ``copy=False``: an ``rgb8`` image is a view of ``msg.data`` instead (see :func:`decode_raw`).
    """
    return decode_raw(msg.encoding, msg.width, msg.height, msg.step, bool(msg.is_bigendian), msg.data, copy=copy)


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` image from a ``sensor_msgs/CompressedImage`` (jpeg/png)."""
    return decode_compressed(msg.format, msg.data)


def _as_uint8_array(data: bytes) -> array.array:
    # The generated setter validates a bytes value element by element (tens of ms per VGA frame);
    # an array.array('B') is taken as is.
    return array.array("B", data)


def rgb_to_image_msg(rgb: np.ndarray, header: Header | None = None, encoding: str = "rgb8") -> Image:
    """``sensor_msgs/Image`` holding ``rgb`` in ``encoding`` (no row padding, little-endian)."""
    data, step = encode_raw(rgb, encoding)
    msg = Image(
        header=header or Header(),
        height=rgb.shape[0],
        width=rgb.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=step,
    )
    msg.data = _as_uint8_array(data)
    return msg


def rgb_to_compressed_msg(rgb: np.ndarray, header: Header | None = None, fmt: str = "jpeg") -> CompressedImage:
    """``sensor_msgs/CompressedImage`` holding ``rgb`` compressed as ``fmt`` (``"jpeg"`` or ``"png"``)."""
    msg = CompressedImage(header=header or Header(), format=fmt)
    msg.data = _as_uint8_array(encode_compressed(rgb, fmt))
    return msg
