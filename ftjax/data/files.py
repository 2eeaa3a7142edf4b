"""Users' text files read as UTF-8, with one clear error for any other encoding.

Shared by the readers of users' text files (CSV/TSV/JSONL, CoNLL, inputs to predict on).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_utf8"]


def read_utf8(path: Path) -> str:
    """The file's text; a UTF-8 byte-order mark (Excel's 'CSV UTF-8') is dropped."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} (byte offset "
            f"{e.start}) is not valid UTF-8 ({e.reason}); the file was probably saved in another "
            "encoding (e.g. Latin-1 or Windows-1252): re-save it as UTF-8 (in Excel: Save As "
            "'CSV UTF-8')"
        ) from None
