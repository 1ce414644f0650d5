"""Streaming CSV reading: every field exactly as written, in chunks, from a file or stdin.

pandas reads with dtype=object and no NA handling, so "" stays "", 007 stays 007 and nothing
becomes NaN. The encoding (UTF-8, UTF-8 with BOM, UTF-16 with BOM) and the delimiter are detected
from the first block unless given.

Ragged rows: a row with more fields than the header rejects the submission, naming its line; a
row with fewer fields reads its missing trailing fields as "" (as csv.DictReader and Excel do).
"""

from __future__ import annotations

import codecs
import csv
import io
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from csvembed import defaults
from csvembed.errors import InputError

STDIN = "-"
DELIMITER_CANDIDATES = ",;\t|"


@dataclass
class Source:
    """An opened input: a display name for messages and a binary stream."""

    name: str
    stream: BinaryIO
    is_stdin: bool

    @property
    def stem(self) -> str:
        return "stdin" if self.is_stdin else Path(self.name).stem


def open_source(path: str) -> Source:
    """Open FILE, or standard input for "-", with a clear error for what cannot be read."""
    if path == STDIN:
        return Source("<stdin>", sys.stdin.buffer, is_stdin=True)
    file = Path(path)
    if not file.exists():
        raise InputError(f"{path}: no such file")
    if file.is_dir():
        raise InputError(f"{path}: is a directory, not a CSV file")
    try:
        return Source(path, open(file, "rb"), is_stdin=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror}") from None


class _Replay(io.RawIOBase):
    """A stream that gives back the bytes already read for sniffing, then the rest of the input.

    Standard input cannot seek, so sniffing must not consume what pandas needs to see.
    """

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_head(stream: BinaryIO, size: int) -> bytes:
    parts, remaining = [], size
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def detect_encoding(head: bytes) -> str:
    """UTF-8 unless a byte-order mark says otherwise; binary data is refused here."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8"


def _sniff_delimiter(text: str) -> str:
    sample = text[: defaults.SNIFF_BYTES]
    # Sniff on whole lines only: a cut last line misleads the sniffer.
    if "\n" in sample:
        sample = sample[: sample.rfind("\n")]
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITER_CANDIDATES).delimiter
    except csv.Error:
        return ","


class CsvFile:
    """One CSV input, validated up front (encoding, header, at least one row), then streamed."""

    def __init__(
        self,
        source: Source,
        delimiter: str | None = None,
        encoding: str | None = None,
        chunk_rows: int = defaults.READ_CHUNK_ROWS,
    ) -> None:
        self.source = source
        head = _read_head(source.stream, defaults.SNIFF_BYTES)
        if not head.strip():
            raise InputError(f"{source.name} is empty: expected a header line and rows")
        self.encoding = encoding or detect_encoding(head)
        self._check_codec()
        wide = codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32"))
        if (b"\x00" in head and not wide) or "\x00" in (text := self._decode_head(head)):
            raise InputError(
                f"{source.name} contains NUL bytes: it looks like a binary file, not CSV text"
                " (for UTF-16 without a BOM, pass --encoding utf-16-le)"
            )
        self.delimiter = delimiter or _sniff_delimiter(text)
        stream = io.TextIOWrapper(io.BufferedReader(_Replay(head, source.stream)), encoding=self.encoding, newline="")
        self._chunks = self._guard(
            lambda: pd.read_csv(
                stream,
                sep=self.delimiter,
                dtype=object,
                na_filter=False,
                keep_default_na=False,
                index_col=False,
                skip_blank_lines=True,
                chunksize=chunk_rows,
                engine="c",
            )
        )
        self._first = self._guard(lambda: next(self._chunks, None))
        if self._first is None or self._first.empty:
            raise InputError(f"{source.name} has a header but no rows")
        self.columns: list[str] = [str(name) for name in self._first.columns]

    def _check_codec(self) -> None:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise InputError(f"unknown encoding {self.encoding!r}") from None

    def _decode_head(self, head: bytes) -> str:
        try:
            return codecs.getincrementaldecoder(self.encoding)().decode(head, final=False)
        except UnicodeDecodeError as exc:
            raise self._decode_error(exc) from None

    def _decode_error(self, exc: UnicodeDecodeError) -> InputError:
        return InputError(
            f"{self.source.name} is not valid {self.encoding} (byte 0x{exc.object[exc.start]:02x} near byte"
            f" {exc.start}): pass --encoding, for example --encoding latin-1"
        )

    def _guard(self, read):
        """Run a pandas read step, turning its errors into one-line input errors."""
        try:
            with warnings.catch_warnings():
                # pandas only warns, and drops data, when the first row has an extra field.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                return read()
        except pd.errors.ParserWarning:
            raise InputError(f"{self.source.name}: malformed CSV: row 1 has more fields than the header") from None
        except UnicodeDecodeError as exc:
            raise self._decode_error(exc) from None
        except pd.errors.EmptyDataError:
            raise InputError(f"{self.source.name} is empty: expected a header line and rows") from None
        except pd.errors.ParserError as exc:
            detail = str(exc).split("C error: ")[-1].strip()
            raise InputError(f"{self.source.name}: malformed CSV: {detail}") from None

    def chunks(self) -> Iterator[tuple[int, list[list[str]]]]:
        """Yield (first row number, rows as lists of fields); row numbers count data rows from 1."""
        chunk = self._first
        row_number = 1
        while chunk is not None:
            rows = chunk.to_numpy(dtype=object).tolist()
            yield row_number, rows
            row_number += len(rows)
            chunk = self._guard(lambda: next(self._chunks, None))
