"""Image conversion core: every encoding, row padding, byte order, compressed formats and each error case."""

from __future__ import annotations

import array
import io
import struct

import cv2
import numpy as np
import pytest
from conftest import forged_png, shared_data
from PIL import Image

from ssd_ros.vision.image_codec import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    RAW_ENCODINGS,
    ImageDecodeError,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
    read_image_file,
)

BYTES_PER_PIXEL = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "yuv422_yuy2": 2,
    "yuyv": 2,
    "yuv422": 2,
    "uyvy": 2,
    "mono16": 2,
}


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A 37x50 image with distinct values in every channel (odd height, non-square)."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def real_rgb() -> np.ndarray:
    """A real photo (smooth regions, so chroma subsampling errors stay small)."""
    path = next(iter(sorted(shared_data("voc2012_sample", "VOC2012", "JPEGImages").glob("*.jpg"))))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr[:, : bgr.shape[1] // 2 * 2], cv2.COLOR_BGR2RGB)


_YUV422 = {
    "yuv422_yuy2": cv2.COLOR_RGB2YUV_YUY2,
    "yuyv": cv2.COLOR_RGB2YUV_YUY2,
    "yuv422": cv2.COLOR_RGB2YUV_UYVY,
    "uyvy": cv2.COLOR_RGB2YUV_UYVY,
}


def encode_any(rgb: np.ndarray, encoding: str, *, row_padding: int = 0, is_bigendian: bool = False):
    """``(data, step)`` in any encoding decode_raw reads: encode_raw's, plus those only cameras write.

    YUV 4:2:2 and ``mono16`` (grey ``g`` as ``g * 257`` in the ``is_bigendian`` byte order) are made here;
    ``row_padding`` zero bytes end each row, as some camera drivers align them.
    """
    if encoding in _YUV422:
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), _YUV422[encoding])
    elif encoding == "mono16":
        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        pixels = (grey.astype(np.uint16) * 257).astype(">u2" if is_bigendian else "<u2")
    else:
        data, step = encode_raw(rgb, encoding)
        pixels = np.frombuffer(data, np.uint8)
    rows = pixels.reshape(rgb.shape[0], -1).view(np.uint8)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], row_padding), np.uint8)], axis=1)
    return rows.tobytes(), rows.shape[1]


def _pad_rows(data: bytes, height: int, step: int, padding: int, fill: int = 0xAB) -> bytes:
    """Append ``padding`` garbage bytes to each row (a driver's aligned rows)."""
    rows = np.frombuffer(data, np.uint8).reshape(height, step)
    return np.concatenate([rows, np.full((height, padding), fill, np.uint8)], axis=1).tobytes()


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip_exactly(rgb, encoding):
    data, step = encode_raw(rgb, encoding)
    assert step == rgb.shape[1] * BYTES_PER_PIXEL[encoding]
    out = decode_raw(encoding, rgb.shape[1], rgb.shape[0], step, False, data)
    np.testing.assert_array_equal(out, rgb)


def test_channel_order_is_decoded_not_assumed():
    # One pixel whose bytes are (10, 20, 30[, 40]) in each encoding's own order.
    pixel = bytes([10, 20, 30, 40])
    assert decode_raw("rgb8", 1, 1, 3, False, pixel[:3]).tolist() == [[[10, 20, 30]]]
    assert decode_raw("bgr8", 1, 1, 3, False, pixel[:3]).tolist() == [[[30, 20, 10]]]
    assert decode_raw("rgba8", 1, 1, 4, False, pixel).tolist() == [[[10, 20, 30]]]
    assert decode_raw("bgra8", 1, 1, 4, False, pixel).tolist() == [[[30, 20, 10]]]
    assert decode_raw("mono8", 1, 1, 1, False, pixel[:1]).tolist() == [[[10, 10, 10]]]


def test_mono8_replicates_grey(rgb):
    grey = np.repeat(rgb[:, :, :1], 3, axis=2)
    data, step = encode_raw(grey, "mono8")
    assert step == rgb.shape[1] and len(data) == rgb.shape[0] * rgb.shape[1]
    np.testing.assert_array_equal(decode_raw("mono8", rgb.shape[1], rgb.shape[0], step, False, data), grey)


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        # Two pixel pairs, (black, white) then (white, black), neutral chroma U = V = 128, video-range Y.
        ("yuv422_yuy2", bytes([16, 128, 235, 128, 235, 128, 16, 128])),  # Y0 U Y1 V
        ("yuv422", bytes([128, 16, 128, 235, 128, 235, 128, 16])),  # U Y0 V Y1
        # Jazzy's sensor_msgs names them by fourcc (image_encodings.hpp: the yuv422 names are deprecated).
        ("yuyv", bytes([16, 128, 235, 128, 235, 128, 16, 128])),
        ("uyvy", bytes([128, 16, 128, 235, 128, 235, 128, 16])),
    ],
)
def test_yuv422_byte_order(encoding, data):
    out = decode_raw(encoding, 4, 1, 8, False, data)
    assert out.shape == (1, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], [0, 255, 255, 0], atol=2)
    assert (np.ptp(out[0], axis=1) <= 2).all(), "neutral chroma must decode to grey"


@pytest.mark.parametrize(("fourcc", "deprecated"), [("yuyv", "yuv422_yuy2"), ("uyvy", "yuv422")])
def test_fourcc_yuv_names_decode_like_the_deprecated_ones(real_rgb, fourcc, deprecated):
    """Cameras on Jazzy (camera_ros on a Pi) send "yuyv"/"uyvy"; the same bytes as the older names."""
    data, step = encode_any(real_rgb, fourcc)
    height, width = real_rgb.shape[:2]
    out = decode_raw(fourcc, width, height, step, False, data)
    np.testing.assert_array_equal(out, decode_raw(deprecated, width, height, step, False, data))
    with pytest.raises(ImageDecodeError, match=rf"{fourcc} needs an even width"):
        decode_raw(fourcc, 3, 1, 6, False, bytes(6))


def test_yuy2_real_image_close_to_original(real_rgb):
    data, step = encode_any(real_rgb, "yuv422_yuy2")
    assert step == real_rgb.shape[1] * 2
    out = decode_raw("yuv422_yuy2", real_rgb.shape[1], real_rgb.shape[0], step, False, data)
    error = np.abs(out.astype(np.int16) - real_rgb.astype(np.int16))
    # Only chroma is subsampled (2:1 horizontally): mean error is a few grey levels on a photo.
    assert error.mean() < 6, error.mean()
    assert np.abs(out.astype(np.float64).mean((0, 1)) - real_rgb.mean((0, 1))).max() < 3


@pytest.mark.parametrize("encoding", sorted(RAW_ENCODINGS))
def test_row_padding_is_skipped(rgb, encoding):
    image = rgb[:, :50]  # even width for YUV 4:2:2
    data, step = encode_any(image, encoding)
    expected = decode_raw(encoding, image.shape[1], image.shape[0], step, False, data)
    padded = _pad_rows(data, image.shape[0], step, padding=13)
    out = decode_raw(encoding, image.shape[1], image.shape[0], step + 13, False, padded)
    np.testing.assert_array_equal(out, expected)
    # Zero padding instead of garbage: the same image.
    data2, step2 = encode_any(image, encoding, row_padding=13)
    assert step2 == step + 13
    np.testing.assert_array_equal(decode_raw(encoding, image.shape[1], image.shape[0], step2, False, data2), expected)


def test_mono16_honours_byte_order():
    # 0x12AB as big-endian bytes (12 AB) and little-endian bytes (AB 12): the 8-bit value is the high byte 0x12.
    big = decode_raw("mono16", 1, 1, 2, True, b"\x12\xab")
    little = decode_raw("mono16", 1, 1, 2, False, b"\xab\x12")
    assert big.tolist() == little.tolist() == [[[0x12] * 3]]
    # Reading the same bytes with the other order gives the other byte: the flag is really used.
    assert decode_raw("mono16", 1, 1, 2, False, b"\x12\xab").tolist() == [[[0xAB] * 3]]


@pytest.mark.parametrize("is_bigendian", [False, True])
def test_mono16_round_trip(rgb, is_bigendian):
    grey = np.repeat(rgb[:, :, 1:2], 3, axis=2)
    data, step = encode_any(grey, "mono16", is_bigendian=is_bigendian)
    out = decode_raw("mono16", grey.shape[1], grey.shape[0], step, is_bigendian, data)
    np.testing.assert_array_equal(out, grey)


def test_is_bigendian_irrelevant_for_8bit_encodings(rgb):
    data, step = encode_raw(rgb, "bgr8")
    np.testing.assert_array_equal(
        decode_raw("bgr8", rgb.shape[1], rgb.shape[0], step, True, data),
        decode_raw("bgr8", rgb.shape[1], rgb.shape[0], step, False, data),
    )


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_a_view_of_the_message_buffer_when_asked(rgb, encoding):
    """``copy=False`` (the detector node's rgb8 frames): the pixels stay in the message's array."""
    data, step = encode_raw(rgb, encoding)
    buffer = array.array("B", data)
    out = decode_raw(encoding, rgb.shape[1], rgb.shape[0], step, False, buffer, copy=False)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(buffer, np.uint8)) == (encoding == "rgb8")
    rows = np.frombuffer(data, np.uint8).reshape(rgb.shape[0], step)
    padded = array.array("B", np.pad(rows, ((0, 0), (0, 5))).tobytes())
    out = decode_raw(encoding, rgb.shape[1], rgb.shape[0], step + 5, False, padded, copy=False)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("container", [bytes, bytearray, lambda b: array.array("B", b), memoryview])
def test_accepts_message_buffers_and_returns_a_writable_copy(rgb, container):
    data, step = encode_raw(rgb, "rgb8")
    buffer = container(data)
    out = decode_raw("rgb8", rgb.shape[1], rgb.shape[0], step, False, buffer)
    assert out.flags.writeable and out.flags.c_contiguous
    out[:] = 0  # must not write through to the message buffer
    assert bytes(buffer) == data


# --- raw error cases: each names what is wrong -------------------------------------------------------------------


def test_unknown_encoding_is_named():
    with pytest.raises(ImageDecodeError, match=r"unknown encoding '32FC1'"):
        decode_raw("32FC1", 2, 2, 16, False, bytes(32))


@pytest.mark.parametrize(("width", "height"), [(0, 4), (4, 0), (-1, 4)])
def test_non_positive_size(width, height):
    with pytest.raises(ImageDecodeError, match=rf"invalid image size {width}x{height}"):
        decode_raw("rgb8", width, height, 12, False, bytes(48))


def test_step_smaller_than_row():
    with pytest.raises(ImageDecodeError, match=r"step 10 is smaller than one row of rgb8 \(4 px x 3 B = 12 B\)"):
        decode_raw("rgb8", 4, 2, 10, False, bytes(20))


def test_truncated_data_gives_both_lengths(rgb):
    data, step = encode_raw(rgb, "rgb8")
    expected = step * rgb.shape[0]
    with pytest.raises(ImageDecodeError, match=rf"truncated data: {expected - 7} bytes, expected .* = {expected}"):
        decode_raw("rgb8", rgb.shape[1], rgb.shape[0], step, False, data[:-7])


def test_step_that_does_not_match_data_is_rejected(rgb):
    # A publisher that claims padded rows but sends tight ones: the data is too short for the claimed step.
    data, step = encode_raw(rgb, "rgb8")
    with pytest.raises(ImageDecodeError, match=r"truncated data"):
        decode_raw("rgb8", rgb.shape[1], rgb.shape[0], step + 4, False, data)
    # ... or claims tight rows but sends padded ones: more bytes than step x height.
    padded = _pad_rows(data, rgb.shape[0], step, padding=2)
    with pytest.raises(ImageDecodeError, match=rf"data too long: {len(padded)} bytes, expected .* = {len(data)}"):
        decode_raw("rgb8", rgb.shape[1], rgb.shape[0], step, False, padded)


def test_odd_width_yuv():
    with pytest.raises(ImageDecodeError, match=r"yuv422_yuy2 needs an even width"):
        decode_raw("yuv422_yuy2", 3, 1, 6, False, bytes(6))


# --- compressed --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "PNG", "rgb8; png compressed bgr8", "bgr8; png compressed "])
def test_png_round_trip_exact(rgb, fmt):
    np.testing.assert_array_equal(decode_compressed(fmt, encode_compressed(rgb, "png")), rgb)


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "rgb8; jpeg compressed bgr8", ""])
def test_jpeg_decodes_in_rgb_order(fmt):
    # Flat colours survive JPEG well; a red/green/blue stripe image catches any BGR/RGB swap.
    image = np.zeros((48, 96, 3), np.uint8)
    image[:, :32, 0] = 220
    image[:, 32:64, 1] = 220
    image[:, 64:, 2] = 220
    out = decode_compressed(fmt, encode_compressed(image, "jpeg", jpeg_quality=95))
    assert out.shape == image.shape and out.dtype == np.uint8
    for stripe, channel in ((slice(4, 28), 0), (slice(36, 60), 1), (slice(68, 92), 2)):
        means = out[:, stripe].reshape(-1, 3).mean(0)
        assert means.argmax() == channel and means[channel] > 200, means


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``rgb`` whose EXIF says to show it turned (6: 90 degrees clockwise), as phones and IP cameras write."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_camera_frames_keep_the_sensors_pixel_grid_whatever_their_exif_orientation(orientation):
    """Detections are in the pixels of the camera's image: the frame is not turned by its EXIF orientation.

    image_transport's compressed subscriber (OpenCV's IMREAD_UNCHANGED), RViz and the CameraInfo all use the
    pixels as sent; a turned frame would give boxes in another grid (and 480x640 for a 640x480 camera).
    """
    path = sorted(shared_data("picar_camera", "detection", "test").glob("*.jpg"))[0]
    rgb = cv2.imread(str(path))[:, :, ::-1]
    data = jpeg_with_orientation(rgb, orientation)
    as_sent = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    out = decode_compressed("jpeg", data)
    assert out.shape == (480, 640, 3)
    np.testing.assert_array_equal(out, as_sent)


def test_real_jpeg_file_decodes_like_opencv():
    path = next(iter(sorted(shared_data("picar_camera", "detection", "test").glob("*.jpg"))))
    data = path.read_bytes()
    out = decode_compressed("jpeg", data)
    assert out.shape == (480, 640, 3)
    np.testing.assert_array_equal(out, cv2.imread(str(path))[:, :, ::-1])


def test_corrupt_jpeg_is_undecodable():
    data = encode_compressed(np.full((16, 16, 3), 100, np.uint8), "jpeg")
    garbage = bytes(len(data))  # right size, no JPEG structure
    with pytest.raises(ImageDecodeError, match=rf"undecodable jpeg data \({len(garbage)} bytes\)"):
        decode_compressed("jpeg", garbage)


def test_truncated_jpeg_is_detected():
    data = encode_compressed(np.full((64, 64, 3), 100, np.uint8), "jpeg")
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG: no end-of-image marker"):
        decode_compressed("jpeg", data[: len(data) // 2])


# --- truncation judged by the JPEG structure: real files carry bytes after their end-of-image marker ----------

SOS, EOI = b"\xff\xda", b"\xff\xd9"


@pytest.fixture(scope="module")
def real_jpeg(real_rgb) -> bytes:
    """A real photo encoded by OpenCV: SOI, header segments, one scan, EOI."""
    return encode_compressed(real_rgb, "jpeg", jpeg_quality=90)


def _with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """``jpeg`` with an EXIF-like APP1 segment after its SOI holding ``thumbnail``, a whole JPEG (SOI..SOS..EOI)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">HI", 0, 0)  # big-endian header, empty IFD0
    body = b"Exif\x00\x00" + tiff + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _cut_in_scan(jpeg: bytes) -> bytes:
    """``jpeg`` cut halfway through its (last) scan, as a transfer that stopped."""
    scan = jpeg.rindex(SOS)
    return jpeg[: scan + (len(jpeg) - scan) // 2]


@pytest.mark.parametrize(
    "trailer",
    [
        b"\x00" * 64,  # padding
        b"SEFH\x01\x02\x03\x04 camera maker trailer \xff\xe0\x10",  # non-zero bytes after EOI
        b"ftypmp42" + SOS + b"\x12\x34 an appended motion-photo video" + SOS + b"\x00\xff",  # its own SOS, no EOI
        encode_compressed(np.full((8, 8, 3), 50, np.uint8), "jpeg"),  # a second image (multi-picture format)
    ],
    ids=["nul-padding", "maker-trailer", "video-with-sos", "second-jpeg"],
)
def test_bytes_after_the_end_of_image_marker_are_accepted(real_jpeg, trailer):
    expected = decode_compressed("jpeg", real_jpeg)
    np.testing.assert_array_equal(decode_compressed("jpeg", real_jpeg + trailer), expected)


def test_real_jpeg_cut_in_its_scan_is_refused(real_jpeg):
    assert real_jpeg.count(SOS) == 1 and real_jpeg.endswith(EOI)
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG: no end-of-image marker after its image data"):
        decode_compressed("jpeg", _cut_in_scan(real_jpeg))
    # Trailing NULs (a zero-filled buffer) do not hide the cut.
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG"):
        decode_compressed("jpeg", _cut_in_scan(real_jpeg) + bytes(100))


def test_real_jpeg_cut_in_its_header_is_refused(real_jpeg):
    header = real_jpeg[: real_jpeg.index(SOS)]
    for cut in (3, 20, len(header) // 2, len(header) - 1, len(header) + 3):
        with pytest.raises(ImageDecodeError, match=r"truncated JPEG"):
            decode_compressed("jpeg", real_jpeg[:cut])


def test_exif_thumbnail_end_marker_does_not_hide_a_cut_main_scan(real_jpeg, real_rgb):
    thumbnail = encode_compressed(np.ascontiguousarray(real_rgb[::8, ::8]), "jpeg")
    assert thumbnail.startswith(b"\xff\xd8") and SOS in thumbnail and thumbnail.endswith(EOI)
    with_thumbnail = _with_exif_thumbnail(real_jpeg, thumbnail)
    np.testing.assert_array_equal(decode_compressed("jpeg", with_thumbnail), decode_compressed("jpeg", real_jpeg))
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG"):
        decode_compressed("jpeg", _cut_in_scan(with_thumbnail))
    # Cut right after the main scan's start: the thumbnail's SOS and EOI come before it and do not count.
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG"):
        decode_compressed("jpeg", with_thumbnail[: with_thumbnail.rindex(SOS) + 20])


def test_progressive_jpeg_cut_between_scans_is_refused(real_rgb):
    ok, encoded = cv2.imencode(".jpg", real_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = encoded.tobytes()
    scans = [i for i in range(len(data)) if data.startswith(SOS, i)]
    assert ok and len(scans) > 2  # several scans, refining the image
    np.testing.assert_array_equal(decode_compressed("jpeg", data), cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])
    # libjpeg shows a coarser image from the complete scans before the cut; the frame is still incomplete.
    with pytest.raises(ImageDecodeError, match=r"truncated JPEG"):
        decode_compressed("jpeg", data[: scans[2]])


# --- image files: the one reader ----------------------------------------------------------------------------------


def test_every_real_image_reads_exactly_like_opencv():
    """The strict reader on all real images at hand (VOC2012 sample, rover frames): nothing refused, same pixels."""
    files = sorted(p for p in shared_data().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    assert len(files) >= 148, files
    for path in files:
        np.testing.assert_array_equal(read_image_file(path), cv2.imread(str(path))[:, :, ::-1], err_msg=str(path))


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_image_file_formats_read_as_rgb(tmp_path, rgb, suffix):
    path = tmp_path / f"frame{suffix.upper()}"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    out = read_image_file(path)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, cv2.imread(str(path))[:, :, ::-1])
    if suffix in (".png", ".bmp"):  # lossless
        np.testing.assert_array_equal(out, rgb)


def test_grey_and_alpha_image_files_become_rgb(tmp_path, rgb):
    grey, rgba = tmp_path / "grey.png", tmp_path / "rgba.png"
    cv2.imwrite(str(grey), rgb[:, :, 0])
    cv2.imwrite(str(rgba), np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 128, np.uint8)]))
    np.testing.assert_array_equal(read_image_file(grey), np.repeat(rgb[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(read_image_file(rgba), rgb)


def test_image_file_errors_name_the_file(tmp_path, real_jpeg):
    cases = {
        "gone.jpg": (None, r"gone\.jpg: image file not found"),
        "folder.jpg": ("dir", r"folder\.jpg: cannot read image file \(Is a directory\)"),
        "empty.jpg": (b"", r"empty\.jpg: empty image file \(0 bytes\)"),
        "corrupt.jpg": (b"not a jpeg at all", r"corrupt\.jpg: undecodable image data \(17 bytes\)"),
        "cut.jpg": (_cut_in_scan(real_jpeg), r"cut\.jpg: truncated JPEG: no end-of-image marker"),
        "huge.png": (forged_png(10000, 6000), r"huge\.png: image header of 10000x6000 exceeds the 50,000,000-pixel"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(ImageDecodeError, match=message):
            read_image_file(str(path))


def test_truncated_png_is_undecodable():
    data = encode_compressed(np.full((64, 64, 3), 100, np.uint8), "png")
    with pytest.raises(ImageDecodeError, match=r"undecodable png data"):
        decode_compressed("png", data[: len(data) // 2])


def _forged_jpeg(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is patched to claim ``width`` x ``height``."""
    data = bytearray(encode_compressed(np.full((16, 16, 3), 100, np.uint8), "jpeg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    ("fmt", "data", "size"),
    [
        ("png", forged_png(70000, 70000), "4900000000 pixels"),  # beyond OpenCV's own limit: cv2.error before
        ("jpeg", _forged_jpeg(65500, 65500), "4290250000 pixels"),
        ("jpeg", _forged_jpeg(20000, 20000), "400000000 pixels"),  # under OpenCV's limit: 1.2 GB of grey before
        ("jpeg", _forged_jpeg(8000, 8000), "8000x8000"),
        ("png", forged_png(10000, 6000), "10000x6000"),
    ],
)
def test_forged_huge_headers_are_refused_before_decoding(fmt, data, size):
    with pytest.raises(ImageDecodeError, match=f"{fmt} image header.* exceeds the 50,000,000-pixel limit") as info:
        decode_compressed(fmt, data)
    assert size in str(info.value)


def test_raw_size_beyond_the_limit_is_refused():
    width, height = 10_000, MAX_PIXELS // 10_000 + 1
    with pytest.raises(ImageDecodeError, match="exceeds the 50,000,000-pixel limit"):
        decode_raw("mono8", width, height, width, False, bytes(1))


def test_empty_compressed_data():
    with pytest.raises(ImageDecodeError, match=r"empty jpeg data \(0 bytes\)"):
        decode_compressed("jpeg", b"")


def test_unsupported_compressed_format_is_named():
    with pytest.raises(ImageDecodeError, match=r"unsupported compressed format 'tiff'"):
        decode_compressed("tiff", encode_compressed(np.zeros((4, 4, 3), np.uint8), "png"))


def test_encoders_reject_non_rgb_input():
    # The one RGB validator (the Detector's too): it names what is wrong.
    with pytest.raises(ValueError, match=r"image must be uint8 \(RGB 0..255, HxWx3\), got dtype float32"):
        encode_raw(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"unknown encoding 'nv12'"):
        encode_raw(np.zeros((4, 4, 3), np.uint8), "nv12")
    with pytest.raises(ValueError, match=r"image must have 3 dimensions \(HxWx3 RGB\), got shape \(4, 4\)"):
        encode_compressed(np.zeros((4, 4), np.uint8))
