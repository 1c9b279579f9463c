"""Read one NIfTI file (.nii or .nii.gz, NIfTI-1 or -2) no further than its header says it holds: the header's
shape and data type bound what is read, so a hostile file is refused before it costs memory: a header declaring an
absurd shape (10000³ voxels) before anything is allocated, a small .nii.gz that inflates past its declared size (a
decompression bomb) after at most its declared size plus one chunk. A .nii.gz is decompressed whole (not lazily, as
nibabel would), so its checksum catches flipped bytes that would otherwise read as wrong voxels."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

# A BraTS volume has 8.9 M voxels and the largest research MRI a few hundred million: past 2^30 (1024³, 4 GiB as
# float32) a header is damaged or hostile.
MAX_VOXELS = 2**30
_HEADERS = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_IMAGES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


class RefusedFile(ValueError):
    """A file whose header declares more than a scan holds, or whose contents run past what its header declares."""


def _header_size(first_bytes: bytes) -> int:
    for order in ("little", "big"):
        size = int.from_bytes(first_bytes[:4], order)
        if size in _HEADERS:
            return size
    raise ValueError("no NIfTI header (its first 4 bytes are not the header size 348 or 540)")


def _declared_bytes(first_bytes: bytes) -> int:
    """Header, extensions and voxels as the header declares them; refuses an absurd shape."""
    size = _header_size(first_bytes)
    if len(first_bytes) < size:
        raise ValueError(f"truncated: {len(first_bytes)} bytes, shorter than its {size}-byte header")
    header = _HEADERS[size](first_bytes[:size], check=False)
    shape = header.get_data_shape()
    voxels = int(np.prod(shape, dtype=object))  # Python integers: a hostile shape must not overflow to a small count
    if voxels > MAX_VOXELS:
        raise RefusedFile(
            f"its header declares shape {shape} ({voxels:,} voxels), more than the {MAX_VOXELS:,} a scan can have "
            "here: a damaged or hostile header; not read"
        )
    return int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize


def _decompress(inflater, chunk: bytes, max_length: int) -> bytes:
    try:
        return inflater.decompress(chunk, max_length)
    except zlib.error as error:  # zlib's words for the gzip trailer's checks, as Python's gzip module says them
        if "incorrect data check" in str(error):
            raise ValueError("CRC check failed: the data does not match the gzip checksum (corrupt bytes)") from None
        if "incorrect length check" in str(error):
            raise ValueError("length check failed: the data does not match the gzip trailer's length") from None
        raise


def _inflate(compressed, limit: int) -> bytes:
    """A gzip stream (every member) decompressed, refused once it passes `limit` bytes."""
    out, inflater, inside_member = bytearray(), zlib.decompressobj(wbits=31), False
    while chunk := compressed.read(_CHUNK):
        while chunk:
            inside_member = True
            out += _decompress(inflater, chunk, limit + 1 - len(out))
            if len(out) > limit:
                raise RefusedFile(
                    f"decompresses past the {limit:,} bytes its header declares: a damaged file or a decompression "
                    "bomb; not read further"
                )
            if inflater.eof:  # a member ends; another may follow (pigz and concatenated files write several)
                chunk, inflater, inside_member = inflater.unused_data, zlib.decompressobj(wbits=31), False
            else:
                chunk = inflater.unconsumed_tail
    if inside_member:
        raise ValueError("truncated gzip stream: the file ends inside a compressed member")
    return bytes(out)


def read_nifti(path: str | Path) -> nib.Nifti1Image:
    """The image, its voxels in memory (a Nifti1Image or Nifti2Image). Raises `RefusedFile` for a file that holds or
    declares more than a scan (the message says which), other exceptions for an unreadable file."""
    with open(path, "rb") as file:
        compressed = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if compressed:
            inflater = zlib.decompressobj(wbits=31)
            start = inflater.decompress(file.read(_CHUNK), max(_HEADERS))
            file.seek(0)
            raw = _inflate(file, _declared_bytes(start))
        else:
            limit = _declared_bytes(file.read(max(_HEADERS)))
            file.seek(0)
            raw = file.read(limit)  # bytes past the declared voxels are no part of the image
    return _IMAGES[_header_size(raw)].from_bytes(raw)
