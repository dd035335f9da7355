"""Tests' view of a signed output without its C2PA manifest, to compare two runs' bytes.

Why: a C2PA signature is not reproducible (ECDSA and the SDK's per-assertion salts are random), so
two runs of the same seed write different manifests; everything else in the file must still be
byte-identical. PNG drops its ``caBX`` chunk, JPEG its APP11 (JUMBF) segments.
"""

from __future__ import annotations

import struct


def without_manifest(data: bytes) -> bytes:
    """``data`` (a PNG or JPEG) with the C2PA manifest store removed; other formats are refused."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        out, pos = [data[:8]], 8
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            end = pos + 12 + length
            if data[pos + 4 : pos + 8] != b"caBX":
                out.append(data[pos:end])
            pos = end
        return b"".join(out)
    if data.startswith(b"\xff\xd8"):
        out, pos = [data[:2]], 2
        while pos < len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            end = pos + 2 + length
            if data[pos + 1] != 0xEB:  # APP11: JUMBF, the C2PA manifest store
                out.append(data[pos:end])
            pos = end
        out.append(data[pos:])
        return b"".join(out)
    raise ValueError("without_manifest reads PNG and JPEG only")
