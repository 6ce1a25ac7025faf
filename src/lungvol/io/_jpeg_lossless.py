"""Encoder for DICOM JPEG Lossless, First-Order Prediction (1.2.840.10008.1.2.4.70).

Hand-written because neither pydicom nor the pylibjpeg plugins can *encode* JPEG process 14
(they only decode it), yet it is the most common compressed transfer syntax of clinical CT and
the reader must be tested against it. The encoder is deliberately simple: predictor 1 (left
neighbour), point transform 0, and a fixed Huffman table with 5-bit codes for the 17 difference
categories (valid per ITU-T T.81 Annex H; not size-optimal, which does not matter for fixtures).
Decoding is left to pylibjpeg-libjpeg / GDCM, so a round trip checks this encoder independently.
"""

from __future__ import annotations

import numpy as np

_N_CATEGORIES = 17  # SSSS = 0..16 for 16-bit samples
_CODE_BITS = 5  # fixed-length code per category: code value = category (never all ones)
_PRECISION_BITS = 16


def _marker(code: int, payload: bytes) -> bytes:
    return bytes([0xFF, code]) + (len(payload) + 2).to_bytes(2, "big") + payload


def encode_jpeg_lossless_sv1(frame: np.ndarray) -> bytes:
    """Encode one 2-D 16-bit frame as a JPEG process-14 SV1 codestream.

    Parameters
    ----------
    frame : ndarray of uint16 or int16, shape (rows, cols)
        Stored pixel values; int16 is encoded by its two's-complement bit pattern, as DICOM
        expects for PixelRepresentation 1.

    Returns
    -------
    bytes
        A complete JPEG codestream (SOI ... EOI), one DICOM frame.
    """
    if frame.ndim != 2 or frame.dtype.itemsize != 2:
        raise ValueError(f"need a 2-D 16-bit frame, got shape {frame.shape} dtype {frame.dtype}")
    rows, cols = frame.shape
    x = frame.view(np.uint16).astype(np.int64)
    pred = np.empty_like(x)
    pred[:, 1:] = x[:, :-1]  # Ra (left) for every column but the first
    pred[1:, 0] = x[:-1, 0]  # Rb (above) for the first column
    pred[0, 0] = 1 << (_PRECISION_BITS - 1)
    diff = (x - pred) % (1 << 16)
    diff = np.where(diff > 32768, diff - 65536, diff).ravel()  # modulo-2^16 difference
    magnitude = np.abs(diff)
    category = np.zeros(magnitude.shape, dtype=np.int64)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    # Category 16 (difference 32768) carries no extra bits (T.81 H.1.2.2).
    extra_len = np.where(category == 16, 0, category)
    extra = np.where(diff < 0, diff + (1 << extra_len) - 1, diff) & ((1 << extra_len) - 1)
    value = (category << extra_len) | extra
    length = _CODE_BITS + extra_len
    width = _CODE_BITS + 16
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((value[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    keep = np.arange(width)[None, :] >= (width - length)[:, None]
    stream = bits[keep]
    pad = (-stream.size) % 8
    stream = np.concatenate([stream, np.ones(pad, dtype=np.uint8)])  # pad with 1-bits
    data = np.packbits(stream)
    ff = np.flatnonzero(data == 0xFF)
    data = np.insert(data, ff + 1, 0)  # byte stuffing

    sof3 = bytes([_PRECISION_BITS]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    sof3 += bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[_CODE_BITS - 1] = _N_CATEGORIES
    dht = bytes([0x00]) + bytes(counts) + bytes(range(_N_CATEGORIES))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns=1, Cs=1, Td/Ta=0, Ss=predictor 1, Se=0, Ah/Al=0
    return (
        b"\xff\xd8"
        + _marker(0xC3, sof3)
        + _marker(0xC4, dht)
        + _marker(0xDA, sos)
        + data.tobytes()
        + b"\xff\xd9"
    )
