"""Bounded decoding: check a compressed pixel stream's own header before any decoder runs.

A decoder allocates what the *stream* says, not what the DICOM header says: a JPEG 2000
codestream whose SIZ marker claims 60000 x 60000 inside a 256 x 256 instance makes the worker
allocate gigabytes and be killed. :func:`check_pixel_stream` reads only headers (no pixel
decoding, no numpy, no torch) and refuses, as a permanent :class:`PixelStreamError`:

* a matrix over the pixel budget (``models.max_pixels``), from Rows x Columns;
* native Pixel Data whose length is not Rows x Columns x Samples x Bits Allocated / 8 (+ one
  pad byte): "a lying Pixel Data length" (PS3.5 8.1.1, 8.4);
* JPEG (PS3.5 A.4.1, ISO 10918-1 B.2.2 SOF) and JPEG-LS (ISO 14495-1 SOF55) whose frame header
  disagrees with Rows, Columns or Samples per Pixel, whose precision exceeds Bits Allocated, or
  whose stream has no end-of-image marker (a truncated scan);
* JPEG 2000 (PS3.5 A.4.4, ISO 15444-1 A.5.1 SIZ) whose image size, component count or depth
  disagrees;
* RLE (PS3.5 G.3.1) whose header's segment count is not Samples per Pixel x Bits Allocated / 8,
  or whose segment offsets do not lie inside the frame.

Other encapsulated syntaxes (deflate, video, ...) are only held to the pixel budget: the routing
rule and ``preprocess.read_radiograph`` refuse what the models cannot take.
"""

from __future__ import annotations

import logging
import struct

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

__all__ = ["PixelStreamError", "check_pixel_stream"]

JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # baseline
    "1.2.840.10008.1.2.4.51",  # extended
    "1.2.840.10008.1.2.4.57",  # lossless
    "1.2.840.10008.1.2.4.70",  # lossless SV1
}
JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
JPEG_2000_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
# ISO 10918-1 B.1.1.3: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC); JPEG-LS SOF55 (F7).
_SOF_MARKERS = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)} | {0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length


class PixelStreamError(ValueError):
    """The pixel data's own header disagrees with the DICOM header, or the image is over the
    pixel budget: decoding it is not safe. Permanent (the file will not change)."""


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
        if value is None:
            raise PixelStreamError(f"{keyword} is missing")
        return int(value)
    except PixelStreamError:
        raise
    except Exception as exc:  # unknown VR, text in a number, ...
        raise PixelStreamError(f"{keyword} cannot be read as a number: {type(exc).__name__}: {exc}") from exc


def check_pixel_stream(ds: Dataset, max_pixels: int) -> None:
    """Raise :class:`PixelStreamError` unless the pixel data can be decoded within bounds."""
    if "PixelData" not in ds:
        return  # nothing to decode; read_radiograph refuses it with its own reason
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel", 1)
    allocated = _int(ds, "BitsAllocated")
    if rows <= 0 or columns <= 0 or samples <= 0 or allocated <= 0:
        raise PixelStreamError(f"matrix {rows}x{columns}, {samples} samples, {allocated} bits: not an image")
    if rows * columns > max_pixels:
        raise PixelStreamError(f"matrix {rows}x{columns} = {rows * columns} px: over the budget of {max_pixels} px")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    element = ds["PixelData"]
    if not element.is_undefined_length:
        frames = _int(ds, "NumberOfFrames", 1) or 1
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        _check_native(len(element.value), rows, columns, samples, allocated, frames, photometric)
        return
    frame = _first_frame(element.value)
    if syntax in JPEG_SYNTAXES or syntax in JPEG_LS_SYNTAXES:
        _check_jpeg(frame, rows, columns, samples, allocated)
    elif syntax in JPEG_2000_SYNTAXES:
        _check_jpeg_2000(frame, rows, columns, samples, allocated)
    elif syntax == RLE_SYNTAX:
        _check_rle(frame, samples, allocated)


def _check_native(
    length: int, rows: int, columns: int, samples: int, allocated: int, frames: int, photometric: str
) -> None:
    expected = rows * columns * samples * allocated * max(frames, 1) // 8
    if photometric == "YBR_FULL_422":  # PS3.3 C.7.6.3.1.2: two chroma samples per two pixels
        expected = expected * 2 // 3
    if length not in (expected, expected + 1):  # PS3.5 8.4: padded to an even length
        raise PixelStreamError(
            f"Pixel Data holds {length} bytes; Rows {rows} x Columns {columns} x {samples} sample(s) "
            f"x {allocated} bits x {frames} frame(s) needs {expected}"
        )


def _first_frame(value: bytes) -> bytes:
    """The fragments of an encapsulated single-frame Pixel Data, joined (PS3.5 A.4)."""
    try:
        items: list[bytes] = list(generate_fragments(value))
        frame = b"".join(items[1:])  # the first item is the Basic Offset Table
    except Exception as exc:  # malformed item tags or lengths
        raise PixelStreamError(f"encapsulated Pixel Data is malformed: {type(exc).__name__}: {exc}") from exc
    if not frame:
        raise PixelStreamError("encapsulated Pixel Data has no fragment")
    return frame


def _check_jpeg(frame: bytes, rows: int, columns: int, samples: int, allocated: int) -> None:
    """JPEG / JPEG-LS: the SOF frame header (P, Y, X, Nf) and the EOI marker."""
    if frame[:2] != b"\xff\xd8":
        raise PixelStreamError("JPEG stream does not start with SOI (FFD8)")
    at = 2
    while True:
        while at < len(frame) and frame[at] == 0xFF and at + 1 < len(frame) and frame[at + 1] == 0xFF:
            at += 1  # fill bytes (ISO 10918-1 B.1.1.2)
        if at + 4 > len(frame) or frame[at] != 0xFF:
            raise PixelStreamError(f"JPEG stream has no frame header (SOF) before byte {at}")
        marker = frame[at + 1]
        if marker in _STANDALONE:
            at += 2
            continue
        (length,) = struct.unpack(">H", frame[at + 2 : at + 4])
        if marker in _SOF_MARKERS:
            if at + 10 > len(frame):
                raise PixelStreamError("JPEG frame header (SOF) is truncated")
            precision = frame[at + 4]
            lines, per_line = struct.unpack(">HH", frame[at + 5 : at + 9])
            components = frame[at + 9]
            break
        if marker in (0xDA, 0xD9):  # SOS or EOI before any SOF
            raise PixelStreamError("JPEG stream has no frame header (SOF) before its scan")
        at += 2 + length
    if (lines, per_line, components) != (rows, columns, samples):
        raise PixelStreamError(
            f"JPEG frame header says {lines}x{per_line}, {components} component(s); the DICOM header "
            f"says Rows {rows}, Columns {columns}, {samples} sample(s)"
        )
    if precision > allocated:
        raise PixelStreamError(f"JPEG precision {precision} bits exceeds Bits Allocated {allocated}")
    if b"\xff\xd9" not in frame[-16:]:  # PS3.5 A.4: the item may be padded; some encoders add a byte
        raise PixelStreamError("JPEG stream does not end with EOI (FFD9): truncated or corrupted")


def _check_jpeg_2000(frame: bytes, rows: int, columns: int, samples: int, allocated: int) -> None:
    """JPEG 2000: the SIZ marker segment of the codestream (a JP2 wrapper is searched through)."""
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    if at < 0 or at + 42 > len(frame):
        raise PixelStreamError("JPEG 2000 stream has no SOC + SIZ marker")
    siz = frame[at + 4 :]
    x, y, x0, y0 = struct.unpack(">IIII", siz[4:20])
    (components,) = struct.unpack(">H", siz[36:38])
    width, height = x - x0, y - y0
    if (height, width, components) != (rows, columns, samples):
        raise PixelStreamError(
            f"JPEG 2000 SIZ says {height}x{width}, {components} component(s); the DICOM header says "
            f"Rows {rows}, Columns {columns}, {samples} sample(s)"
        )
    if len(siz) < 38 + 3 * components:
        raise PixelStreamError("JPEG 2000 SIZ marker is truncated")
    depths = [(siz[38 + 3 * c] & 0x7F) + 1 for c in range(components)]
    if max(depths) > allocated:
        raise PixelStreamError(f"JPEG 2000 depth {max(depths)} bits exceeds Bits Allocated {allocated}")


def _check_rle(frame: bytes, samples: int, allocated: int) -> None:
    """RLE: the 64-byte header's segment count and offsets (PS3.5 G.5)."""
    if len(frame) < 64:
        raise PixelStreamError(f"RLE frame of {len(frame)} bytes has no 64-byte header")
    header = struct.unpack("<16I", frame[:64])
    count, offsets = header[0], header[1:]
    expected = samples * ((allocated + 7) // 8)
    if count != expected:
        raise PixelStreamError(
            f"RLE header has {count} segment(s); {samples} sample(s) of {allocated} bits need {expected}"
        )
    used = list(offsets[:count])
    if used[0] != 64 or any(b <= a for a, b in zip(used, used[1:])) or used[-1] >= len(frame):
        raise PixelStreamError(f"RLE segment offsets {used} do not lie in order inside the {len(frame)}-byte frame")
    if any(offsets[count:]):
        raise PixelStreamError(f"RLE header has offsets beyond its {count} segment(s)")
