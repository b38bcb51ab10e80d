"""Seeded mutants of real DICOM instances, to send to the listener (issue 29, fuzz).

Seeds are real instances: the RG1 (chest) and RG3 (extremity) radiographs of pydicom-data, the
synthetic chest phantom (``ribnode.phantom``) in MONOCHROME1 and MONOCHROME2, small DX
and CR images, a 1-pixel and a large image, each native and in the compressed syntaxes the
node accepts (JPEG 2000, RLE, JPEG-LS, JPEG baseline). A :class:`Mutator` draws one seed and
one to three mutations from its own ``random.Random(seed)``:

* header mutations: non-chest body parts and modalities, MONOCHROME1, a lying Photometric
  Interpretation or Samples per Pixel, absurd Rows/Columns, odd Bits Allocated/Stored, a Pixel
  Data length that disagrees, multi-frame claims, bad UIDs, a transfer syntax that lies;
* encoding mutations: an unknown or wrong VR (Modality, Photometric Interpretation, Rows, the
  Study UID, ...), an element length that lies;
* compressed-stream mutations: a JPEG 2000 SIZ claiming 60000 x 60000 (the decompression bomb
  of issue 29), a lying JPEG frame header, a corrupted RLE header, corrupted or truncated
  streams;
* byte mutations anywhere after the File Meta Information: flips, truncation, insertions.

The same seed gives the same specimens, byte for byte (``specimen(i)`` is a pure function of
the mutator's seed and ``i``). A specimen whose image is known to lie (``must_not_decode``) must
never be decoded by a worker without an error: the fuzz checks it.
"""

from __future__ import annotations

import copy
import io
import random
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SEED_ROWS = 256  # real radiographs are reduced to about this many rows (the fuzz sends thousands)

# Explicit VR little endian tags (group, element) of the attributes whose VR is rewritten.
TAGS = {
    "Modality": (0x0008, 0x0060),
    "PhotometricInterpretation": (0x0028, 0x0004),
    "BodyPartExamined": (0x0018, 0x0015),
    "Rows": (0x0028, 0x0010),
    "Columns": (0x0028, 0x0011),
    "BitsAllocated": (0x0028, 0x0100),
    "StudyInstanceUID": (0x0020, 0x000D),
    "SOPInstanceUID": (0x0008, 0x0018),
    "PixelData": (0x7FE0, 0x0010),
}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class Specimen:
    """One PS3.10 file to send, and what it is."""

    index: int
    name: str  # seed/mutation+mutation
    data: bytes
    must_not_decode: bool = False  # its image lies: a worker must refuse it

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.index:06d}.dcm"
        path.write_bytes(self.data)
        return path


# -- seeds --------------------------------------------------------------------------------------


def _base(sop_class: str, rows: int, columns: int, pixels: np.ndarray, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.PatientID, ds.PatientName = "RIBNODE-FUZZ", "Fuzz^Specimen"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX" if sop_class == DX else "CR", "CHEST", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _reduced(path: Path, rows: int = SEED_ROWS) -> Dataset:
    """A real radiograph with its whole header, its pixels reduced to about ``rows`` rows."""
    ds = pydicom.dcmread(path)
    image = ds.pixel_array
    step = max(1, image.shape[0] // rows)
    small = np.ascontiguousarray(image[::step, ::step])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.astype(np.uint16).tobytes()
    return ds


def _phantoms(seed: int, size: int = SEED_ROWS) -> tuple[Dataset, Dataset]:
    """The synthetic chest phantom as the repo's writer makes it: MONOCHROME2 in 12 bits and
    MONOCHROME1 in 14 bits (one phantom: generating one takes seconds on a loaded machine)."""
    from ribnode.phantom import generate_chest
    from ribnode.phantom.dicom import build_dataset

    chest = generate_chest(seed, size)
    return build_dataset(chest, seed, "MONOCHROME2", 12), build_dataset(chest, seed, "MONOCHROME1", 14)


def _compressed(ds: Dataset, syntax: str) -> Dataset:
    out = copy.deepcopy(ds)
    out.compress(syntax, generate_instance_uid=False)
    return out


def _jpeg_baseline(ds: Dataset) -> Dataset:
    """8-bit JPEG baseline (Pillow encodes; pydicom cannot)."""
    from PIL import Image

    image = ds.pixel_array.astype(np.float64)
    scaled = np.round(255 * (image - image.min()) / max(1.0, float(np.ptp(image)))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scaled).save(buffer, format="JPEG", quality=90)
    out = copy.deepcopy(ds)
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.BitsAllocated, out.BitsStored, out.HighBit = 8, 8, 7
    out.PixelData = encapsulate([buffer.getvalue()])
    out["PixelData"].VR = "OB"
    return out


def build_seeds(pydicom_data: Path | None, large: int = 1024, phantom: int = 128) -> dict[str, Dataset]:
    """The seed instances by name (deterministic; a few seconds of CPU, mostly the phantom)."""
    rng = np.random.default_rng(29)
    seeds: dict[str, Dataset] = {}
    if pydicom_data is not None:
        seeds["rg1"] = _reduced(pydicom_data / "RG1_UNCR.dcm")
        seeds["rg3-extremity"] = _reduced(pydicom_data / "RG3_UNCR.dcm")
    seeds["phantom-m2"], seeds["phantom-m1"] = _phantoms(3, phantom)
    seeds["dx-small"] = _base(DX, 64, 48, rng.integers(0, 4096, (64, 48)))
    seeds["cr-small"] = _base(CR, 32, 32, rng.integers(0, 4096, (32, 32)), BodyPartExamined="KNEE")
    seeds["one-pixel"] = _base(DX, 1, 1, np.array([[1000]]))
    ramp = (np.add.outer(np.arange(large), np.arange(large)) % 4096).astype(np.uint16)
    seeds["large"] = _base(DX, large, large, ramp)
    chest = seeds.get("rg1", seeds["phantom-m2"])
    seeds["j2k"] = _compressed(chest, JPEG2000Lossless)
    seeds["rle"] = _compressed(seeds["phantom-m2"], RLELossless)
    seeds["jpegls"] = _compressed(seeds["phantom-m1"], JPEGLSLossless)
    seeds["jpeg-baseline"] = _jpeg_baseline(seeds["phantom-m2"])
    return seeds


# -- mutations ----------------------------------------------------------------------------------


@dataclass
class Draft:
    """A specimen under construction: the dataset, then its encoded bytes."""

    ds: Dataset
    rng: random.Random
    byte_steps: list[Callable[[Draft, bytearray, int], None]] = field(default_factory=list)
    must_not_decode: bool = False

    @property
    def native(self) -> bool:
        return not self.ds.file_meta.TransferSyntaxUID.is_compressed

    def frame(self) -> bytes | None:
        """The first fragment of an encapsulated Pixel Data (None when native)."""
        if self.native:
            return None
        fragments = list(generate_fragments(self.ds.PixelData))
        return fragments[0] if fragments else None

    def set_frame(self, frame: bytes) -> None:
        self.ds.PixelData = encapsulate([frame])


def m_body_part(d: Draft) -> str:
    part = d.rng.choice(["KNEE", "HAND", "SKULL", "ABDOMEN", "chest", "CHEST ", "", None])
    if part is None:
        del d.ds.BodyPartExamined
    else:
        d.ds.BodyPartExamined = part
    return f"body-part={part}"


def m_modality(d: Draft) -> str:
    d.ds.Modality = d.rng.choice(["CT", "MR", "OT", "XA", "US", "CR", "DX", "SR"])
    return f"modality={d.ds.Modality}"


def m_monochrome1(d: Draft) -> str:
    if d.native and d.ds.PhotometricInterpretation == "MONOCHROME2":
        top = (1 << int(d.ds.BitsStored)) - 1
        d.ds.PixelData = (top - np.frombuffer(d.ds.PixelData, np.uint16).clip(0, top)).astype(np.uint16).tobytes()
    d.ds.PhotometricInterpretation = "MONOCHROME1"
    return "monochrome1"


def m_photometric_lie(d: Draft) -> str:
    d.ds.PhotometricInterpretation = d.rng.choice(["RGB", "PALETTE COLOR", "YBR_FULL", "MONOCHROME3", ""])
    return f"photometric={d.ds.PhotometricInterpretation}"


def m_samples_lie(d: Draft) -> str:
    d.ds.SamplesPerPixel = d.rng.choice([0, 3, 4])
    d.must_not_decode = True
    return f"samples={d.ds.SamplesPerPixel}"


def m_absurd_matrix(d: Draft) -> str:
    rows, columns = d.rng.choice([0, 1, 2, 65535]), d.rng.choice([0, 1, 3, 65535, int(d.ds.Columns)])
    if (rows, columns) != (int(d.ds.Rows), int(d.ds.Columns)):
        d.must_not_decode = True
    d.ds.Rows, d.ds.Columns = rows, columns
    return f"matrix={rows}x{columns}"


def m_bits(d: Draft) -> str:
    choice = d.rng.randrange(4)
    if choice == 0:
        d.ds.BitsAllocated = d.rng.choice([1, 8, 12, 32, 64])
        d.must_not_decode = d.native  # the Pixel Data length no longer agrees
    elif choice == 1:
        d.ds.BitsStored = d.rng.choice([0, 1, 17, 40])
    elif choice == 2:
        d.ds.HighBit = d.rng.choice([0, 15, 31])
    else:
        d.ds.PixelRepresentation = 1
    return f"bits#{choice}"


def m_pixel_length(d: Draft) -> str:
    if not d.native:
        return m_stream_truncate(d)
    data = bytes(d.ds.PixelData)
    cut = d.rng.choice([1, 2, 100, len(data) // 2])
    if d.rng.random() < 0.5:
        d.ds.PixelData = data[: len(data) - cut] if (len(data) - cut) % 2 == 0 else data[: len(data) - cut - 1]
        label = "pixel-data-short"
    else:
        d.ds.PixelData = data + bytes(cut + cut % 2)
        label = "pixel-data-long"
    d.must_not_decode = True
    return label


def m_frames(d: Draft) -> str:
    d.ds.NumberOfFrames = d.rng.choice([0, 2, 1000])
    if d.native and int(d.ds.NumberOfFrames) > 1:
        d.must_not_decode = True
    return f"frames={d.ds.NumberOfFrames}"


def m_uids(d: Draft) -> str:
    choice = d.rng.randrange(4)
    if choice == 0:
        d.ds.StudyInstanceUID = "1." + "9" * 68  # over 64 characters
    elif choice == 1:
        d.ds.StudyInstanceUID = ""
    elif choice == 2:
        d.ds.SeriesInstanceUID = "not a uid at all"
    else:
        d.ds.SOPInstanceUID = d.ds.SOPInstanceUID + ".1"  # disagrees with the file meta
    return f"uid#{choice}"


def m_transfer_syntax_lie(d: Draft) -> str:
    actual = d.ds.file_meta.TransferSyntaxUID
    lie = d.rng.choice(
        [ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian]
    )
    if lie != actual:
        d.byte_steps.append(_meta_syntax(lie))
    return f"syntax-lie={lie.name}"


def _meta_syntax(syntax: str) -> Callable[[Draft, bytearray, int], None]:
    def step(d: Draft, data: bytearray, meta_end: int) -> None:
        meta = d.ds.file_meta.copy()
        meta.TransferSyntaxUID = syntax
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_file_meta_info(buffer, meta, enforce_standard=True)
        data[132:meta_end] = buffer.getvalue()

    return step


def m_deflate(d: Draft) -> str:
    if d.native:
        d.ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return "deflate"


def m_charset(d: Draft) -> str:
    d.ds.SpecificCharacterSet = d.rng.choice(["ISO 2022 IR 87", "ISO_IR 192", "GB18030", "NOT A CHARSET"])
    d.ds.PatientName = bytes([0x1B, 0x24, 0x42, 0xFF, 0xFE, 0x80]).decode("latin-1")
    return f"charset={d.ds.SpecificCharacterSet}"


def m_wrong_vr(d: Draft) -> str:
    keyword = d.rng.choice(list(TAGS))
    vr = d.rng.choice([b"ZZ", b"US", b"DS", b"UN", b"OB", b"SQ", b"\x00\x00"])
    d.byte_steps.append(_rewrite_vr(keyword, vr))
    return f"vr:{keyword}={vr.decode('latin-1')!r}"


def _element_at(data: bytearray, keyword: str, meta_end: int) -> int:
    group, element = TAGS[keyword]
    return data.find(struct.pack("<HH", group, element), meta_end)


def _rewrite_vr(keyword: str, vr: bytes) -> Callable[[Draft, bytearray, int], None]:
    def step(d: Draft, data: bytearray, meta_end: int) -> None:
        at = _element_at(data, keyword, meta_end)
        if at >= 0:
            data[at + 4 : at + 6] = vr

    return step


def m_length_lie(d: Draft) -> str:
    keyword = d.rng.choice(list(TAGS))
    delta = d.rng.choice([-2, -1, 1, 2, 1000, 0x7FFF, "max"])
    d.byte_steps.append(_lie_about_length(keyword, delta))
    return f"length:{keyword}{delta:+}" if isinstance(delta, int) else f"length:{keyword}=max"


def _lie_about_length(keyword: str, delta: int | str) -> Callable[[Draft, bytearray, int], None]:
    def step(d: Draft, data: bytearray, meta_end: int) -> None:
        at = _element_at(data, keyword, meta_end)
        if at < 0:
            return
        if bytes(data[at + 4 : at + 6]) in LONG_VRS:
            (length,) = struct.unpack("<I", data[at + 8 : at + 12])
            new = 0xFFFFFFFE if delta == "max" else (length + int(delta)) % (1 << 32)
            data[at + 8 : at + 12] = struct.pack("<I", new)
        else:
            (length,) = struct.unpack("<H", data[at + 6 : at + 8])
            new = 0xFFFF if delta == "max" else (length + int(delta)) % (1 << 16)
            data[at + 6 : at + 8] = struct.pack("<H", new)

    return step


# Compressed streams.


def m_j2k_bomb(d: Draft) -> str:
    """A JPEG 2000 SIZ that claims 60000 x 60000 (or 16 x 16) in a small instance."""
    frame = d.frame()
    at = frame.find(b"\xff\x4f\xff\x51") if frame is not None else -1
    if frame is None or at < 0:
        return m_flip(d)
    size = d.rng.choice([60000, 16])
    siz = bytearray(frame)
    siz[at + 8 : at + 16] = struct.pack(">II", size, size)  # Xsiz, Ysiz (origin stays 0)
    d.set_frame(bytes(siz))
    d.must_not_decode = True
    return f"j2k-siz={size}"


def m_jpeg_sof_lie(d: Draft) -> str:
    frame = d.frame()
    if frame is None:
        return m_absurd_matrix(d)
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc3", b"\xff\xf7"):
        at = frame.find(marker, 2)
        if at > 0:
            lie = bytearray(frame)
            lie[at + 5 : at + 9] = struct.pack(">HH", d.rng.choice([1, 60000]), d.rng.choice([7, 60000]))
            d.set_frame(bytes(lie))
            d.must_not_decode = True
            return "jpeg-sof-lie"
    return m_rle_header(d)


def m_rle_header(d: Draft) -> str:
    frame = d.frame()
    if frame is None or str(d.ds.file_meta.TransferSyntaxUID) != RLELossless:
        return m_stream_corrupt(d)
    header = bytearray(frame)
    if d.rng.random() < 0.5:
        header[0:4] = struct.pack("<I", d.rng.choice([0, 3, 15, 0xFFFFFFFF]))
    else:
        header[4:8] = struct.pack("<I", d.rng.choice([0, 63, len(frame) + 10]))
    d.set_frame(bytes(header))
    d.must_not_decode = True
    return "rle-header"


def m_stream_corrupt(d: Draft) -> str:
    frame = d.frame()
    if frame is None:
        return m_flip(d)
    data = bytearray(frame)
    start = min(len(data) - 1, 64)
    for _ in range(d.rng.randint(1, 32)):
        at = d.rng.randrange(start, len(data))
        data[at] = d.rng.randrange(256)
    d.set_frame(bytes(data))
    return "stream-corrupt"


def m_stream_truncate(d: Draft) -> str:
    frame = d.frame()
    if frame is None:
        return m_truncate(d)
    keep = max(2, int(len(frame) * d.rng.uniform(0.05, 0.95)))
    d.set_frame(frame[:keep])
    if str(d.ds.file_meta.TransferSyntaxUID) in (JPEGBaseline8Bit, JPEGLSLossless):
        d.must_not_decode = True  # no end-of-image marker
    return "stream-truncate"


# Bytes after the File Meta Information.


def m_flip(d: Draft) -> str:
    count = d.rng.randint(1, 8)

    def step(d: Draft, data: bytearray, meta_end: int) -> None:
        for _ in range(count):
            at = d.rng.randrange(meta_end, len(data))
            data[at] ^= 1 << d.rng.randrange(8)

    d.byte_steps.append(step)
    return f"flip{count}"


def m_truncate(d: Draft) -> str:
    def step(d: Draft, data: bytearray, meta_end: int) -> None:
        del data[d.rng.randrange(meta_end, len(data)) :]

    d.byte_steps.append(step)
    return "truncate"


def m_insert(d: Draft) -> str:
    def step(d: Draft, data: bytearray, meta_end: int) -> None:
        at = d.rng.randrange(meta_end, len(data))
        data[at:at] = bytes(d.rng.randrange(256) for _ in range(d.rng.randint(1, 16)))

    d.byte_steps.append(step)
    return "insert"


Mutation = Callable[[Draft], str]
# What the routing rule reads: most of these are kept and ignored, never decoded by a worker.
HEADER_MUTATIONS: tuple[Mutation, ...] = (m_body_part, m_modality, m_photometric_lie, m_frames, m_uids, m_charset)
# How the data set is encoded: mostly refused by the listener (0xC210), some kept.
ENCODING_MUTATIONS: tuple[Mutation, ...] = (
    m_wrong_vr,
    m_length_lie,
    m_transfer_syntax_lie,
    m_deflate,
    m_flip,
    m_truncate,
    m_insert,
)
# The image: routed to a worker, whose decode path must refuse what lies.
IMAGE_MUTATIONS: tuple[Mutation, ...] = (
    m_monochrome1,
    m_samples_lie,
    m_absurd_matrix,
    m_bits,
    m_pixel_length,
    m_length_lie,
)
COMPRESSED_MUTATIONS = (m_j2k_bomb, m_jpeg_sof_lie, m_rle_header, m_stream_corrupt, m_stream_truncate)


def meta_end(data: bytes | bytearray) -> int:
    """Offset of the data set in a PS3.10 file: after the preamble, "DICM" and group 0002
    (whose first element, File Meta Information Group Length, says how long it is)."""
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


class Mutator:
    """Specimens from ``seeds`` by a seeded random choice of seed and mutations: one in ten is
    a seed unchanged (the node must still process good input among bad), about half have their
    image mutated (they reach a worker's decode path), a third their encoding, the rest any
    mix. Four specimens in a row share a study (studies of several instances)."""

    STUDY_SIZE = 4

    def __init__(self, seeds: dict[str, Dataset], seed: int) -> None:
        self.seed = seed
        for ds in seeds.values():
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = self.uid("seed")
        self.seeds = {name: _encode(ds) for name, ds in seeds.items()}  # read back per specimen
        self.names = sorted(seeds)

    def uid(self, *parts: object) -> str:
        return str(generate_uid(entropy_srcs=["ribnode-fuzz", str(self.seed), *map(str, parts)]))

    def specimen(self, index: int) -> Specimen:
        """The ``index``-th specimen (the same bytes for the same mutator seed and index)."""
        rng = random.Random(f"{self.seed}:{index}")
        name = rng.choice(self.names)
        ds = pydicom.dcmread(io.BytesIO(self.seeds[name]))  # a fresh copy (values stay raw until used)
        ds.StudyInstanceUID = self.uid("study", index // self.STUDY_SIZE)
        ds.SeriesInstanceUID = self.uid("series", index // self.STUDY_SIZE, name)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = self.uid("instance", index)
        draft = Draft(ds, rng)
        labels: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's value checks: the values are wrong on purpose
            kind = rng.random()
            if kind < 0.1:
                pool: tuple[Mutation, ...] = ()  # unchanged
            elif kind < 0.55:
                pool = IMAGE_MUTATIONS + (COMPRESSED_MUTATIONS * 2 if not draft.native else ())
            elif kind < 0.85:
                pool = ENCODING_MUTATIONS
            else:
                pool = HEADER_MUTATIONS + ENCODING_MUTATIONS + IMAGE_MUTATIONS
            for mutation in rng.sample(pool, min(len(pool), rng.choice([1, 1, 1, 2, 2, 3]))):
                labels.append(mutation(draft))
            data = bytearray(_encode(draft.ds))
        for step in draft.byte_steps:
            end = meta_end(data)
            if end < len(data):
                step(draft, data, end)
        return Specimen(index, f"{name}/{'+'.join(labels) or 'unchanged'}", bytes(data), draft.must_not_decode)


def _encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
