"""A minimal PNG reader (8-bit RGB/RGBA, not interlaced: what Chromium writes), stdlib only."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_rows(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB bytes of every row (alpha dropped)."""
    data = path.read_bytes()
    assert data[:8] == SIGNATURE, f"{path} is not a PNG"
    pos, chunks = 8, []
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, "unsupported PNG"
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            chunks.append(body)
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, prev, channels)
        rgb = line if channels == 3 else bytearray(b for i, b in enumerate(line) if i % 4 != 3)
        rows.append(bytes(rgb))
        prev = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    n = len(line)
    if kind == 1:  # Sub
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 255
    elif kind == 2:  # Up
        for i in range(n):
            line[i] = (line[i] + prev[i]) & 255
    elif kind == 3:  # Average
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + (left + prev[i]) // 2) & 255
    elif kind == 4:  # Paeth
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255


def colour_counts(path: Path) -> Counter[str]:
    """How many pixels of each colour, as '#rrggbb'."""
    _, _, rows = read_rows(path)
    counts: Counter[str] = Counter()
    for row in rows:
        counts.update(row[i : i + 3].hex() for i in range(0, len(row), 3))
    return Counter({f"#{k}": v for k, v in counts.items()})


def near(counts: Counter[str], rgb: tuple[int, int, int], tolerance: int) -> int:
    """Pixels whose every channel is within ``tolerance`` of ``rgb``."""
    total = 0
    for colour, n in counts.items():
        channels = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))
        if all(abs(a - b) <= tolerance for a, b in zip(channels, rgb, strict=True)):
            total += n
    return total
