"""Streaming CSV reading: every field exactly as written, in chunks, from a file or stdin.

pandas reads with dtype=object and no NA handling, so "" stays "", 007 stays 007 and nothing
becomes NaN. The header is read as a row too, so column names also stay as written: pandas would
rename a duplicate `a` to `a.1` and an empty name to `Unnamed: 1`. Duplicate names are refused.
The encoding (UTF-8, or UTF-8, UTF-16 or UTF-32 with a BOM) and the delimiter are detected from
the first block unless given. A NUL anywhere in the text rejects the input, not only in the first block.

Compressed input (gzip, bzip2, xz, zstd) is recognised by its magic bytes, on stdin too, and
decompressed as it streams; a file named for one format must hold it. A corrupt or truncated
stream is one InputError when the reader reaches the damage.

Ragged rows: a row with more fields than the header rejects the submission, naming its line; a
row with fewer fields reads its missing trailing fields as "" (as csv.DictReader and Excel do).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import os
import re
import stat
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import pandas as pd
import zstandard

from csvembed import defaults
from csvembed.errors import InputError

T = TypeVar("T")

STDIN = "-"
DELIMITER_CANDIDATES = ",;\t|"
# pandas' C parser splits on one byte of UTF-8, and a quote, line break or NUL cannot separate fields.
FORBIDDEN_DELIMITERS = '"\r\n\0'
# Codecs that need a byte-order mark to know their byte order, and the marks they accept.
BOM_CODECS = {
    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
    "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
}


# Compressed formats by the suffix that names each; the bytes their streams start with are in _compression.
SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
# Bytes read to recognise a compressed stream: bzip2 needs ten.
MAGIC_BYTES = 10
# zstd frames are decompressed from this much input at a time: a bound on one step's output.
ZSTD_FEED = 16 * 1024


def _compression(head: bytes) -> str | None:
    """The compressed format that `head` starts, if any.

    bzip2's "BZh" is plain text, so its block or end-of-stream marker must follow: a CSV whose
    header starts "BZh" stays a CSV.
    """
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    # "BZh", the block size 1-9, then a block's magic (pi's digits) or the end-of-stream magic (sqrt(pi)'s).
    if re.match(rb"BZh[1-9](\x31\x41\x59\x26\x53\x59|\x17\x72\x45\x38\x50\x90)", head):
        return "bzip2"
    return None


class _Counting(io.RawIOBase):
    """The input's own bytes, counted as they are consumed: for a compressed file, compressed bytes."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


@dataclass
class Source:
    """An opened input: a display name for messages and a binary stream (decompressed if need be).

    `size` (bytes on disk, when the input is a regular file) and `bytes_read` measure how far it
    has been read, for a progress bar.
    """

    name: str
    stream: BinaryIO
    is_stdin: bool
    size: int | None = None
    compression: str | None = None
    counter: _Counting | None = None

    @property
    def stem(self) -> str:
        """The default collection: `data` for data.csv and data.csv.gz alike."""
        if self.is_stdin:
            return "stdin"
        path = Path(self.name)
        return (path.with_suffix("") if path.suffix.lower() in SUFFIXES else path).stem

    @property
    def bytes_read(self) -> int:
        return self.counter.count if self.counter else 0


def open_source(path: str) -> Source:
    """Open FILE, or standard input for "-", with a clear error for what cannot be read."""
    if path == STDIN:
        return _opened("<stdin>", _stdin(), is_stdin=True)
    file = Path(path)
    if not file.exists():
        raise InputError(f"{path}: no such file")
    if file.is_dir():
        raise InputError(f"{path}: is a directory, not a CSV file")
    try:
        raw = open(file, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror}") from None
    return _opened(path, raw, is_stdin=False, named=SUFFIXES.get(file.suffix.lower()))


def open_stream(name: str, raw: BinaryIO, is_stdin: bool = False) -> Source:
    """Open an already opened binary file (an HTTP upload's spool) as `name`, as open_source opens a path:
    decompressed by its magic bytes, and a name ending .gz must hold gzip."""
    return _opened(name, raw, is_stdin=is_stdin, named=None if is_stdin else SUFFIXES.get(Path(name).suffix.lower()))


def _opened(name: str, raw: BinaryIO, is_stdin: bool, named: str | None = None) -> Source:
    """The input decompressed if its first bytes say it is compressed, and counted as it is read.

    A file whose name says `named` must hold it: a .gz that is not gzip is damaged or misnamed.
    """
    info = os.fstat(raw.fileno())
    size = info.st_size if stat.S_ISREG(info.st_mode) else None
    counter = _Counting(raw)
    head = _read_head(counter, MAGIC_BYTES)
    compression = _compression(head)
    if named and head and compression != named:
        raise InputError(f"{name} is not {named} data, though its name says so")
    stream: BinaryIO = _Replay(head, counter)  # type: ignore[assignment]
    if compression:
        stream = _Decompressed(name, compression, io.BufferedReader(stream))  # type: ignore[assignment]
    return Source(name, stream, is_stdin, size, compression, counter)


def _stdin() -> BinaryIO:
    """Standard input's bytes; `submit - <&-` starts Python with sys.stdin None (or a dead descriptor)."""
    try:
        os.fstat(sys.stdin.fileno())
        return sys.stdin.buffer
    except (AttributeError, OSError, ValueError):
        raise InputError("standard input is closed: pipe a CSV into submit -") from None


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


class _ZstdReader(io.RawIOBase):
    """zstd frames one after another, as `zstd -d` reads them.

    zstandard's stream_reader returns a truncated stream's data as if it were whole; this one
    raises EOFError when the input ends inside a frame, as gzip, bz2 and lzma do.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._out:
            data = self._raw.read(ZSTD_FEED)
            if not data:
                if self._in_frame:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return 0
            self._out = memoryview(self._decompress(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            parts.append(self._frame.decompress(data))
            self._in_frame = not self._frame.eof
            if self._in_frame:
                break
            data = self._frame.unused_data
            self._frame = zstandard.ZstdDecompressor().decompressobj()
        return b"".join(parts)


DECOMPRESSORS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw),  # type: ignore[dict-item]
    "bzip2": lambda raw: bz2.BZ2File(raw),  # type: ignore[dict-item]
    "xz": lambda raw: lzma.LZMAFile(raw),  # type: ignore[dict-item]
    "zstd": _ZstdReader,  # type: ignore[dict-item]
}
# What a damaged stream raises: gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors.
DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


class _Decompressed(io.RawIOBase):
    """A compressed stream's text bytes; damage is one InputError where the reader reaches it."""

    def __init__(self, name: str, compression: str, raw: BinaryIO) -> None:
        self._name = name
        self._compression = compression
        self._stream = DECOMPRESSORS[compression](raw)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self._stream.read(len(buffer))
        except EOFError:
            raise InputError(
                f"{self._name} is truncated: its {self._compression} stream ends before its end marker"
            ) from None
        except DECOMPRESSION_ERRORS as exc:
            raise InputError(f"{self._name} is not valid {self._compression} data: {exc}") from None
        buffer[: len(data)] = data
        return len(data)


def _start_of(exc: UnicodeDecodeError, end: int) -> int:
    """Where in the input the bytes of `exc` begin, given where they end: they are the bytes the decoder held
    back from the last block and this one, less a byte-order mark utf-8-sig dropped from the first."""
    return end - len(exc.object)


class _Decoded(io.TextIOBase):
    """The input's text, decoded block by block as pandas reads it, each block's offset in the input known.

    TextIOWrapper's decode errors count from the start of its current block, so a bad byte deep in a
    file was placed "near byte 35649" of whichever block held it; here it is placed in the input.
    """

    def __init__(self, raw: BinaryIO, encoding: str, fail: Callable[[UnicodeDecodeError, int], InputError]) -> None:
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._fail = fail
        self._offset = 0  # bytes given to the decoder before this block

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        while True:
            block = self._raw.read(size if size and size > 0 else -1)
            try:
                text = self._decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise self._fail(exc, _start_of(exc, self._offset + len(block))) from None
            self._offset += len(block)
            if text or not block:  # "" only at the end: pandas would take it for one
                return text


class _NulGuard(io.TextIOBase):
    """The decoded text pandas reads, refused at the first NUL wherever it is in the input.

    The head check sees only the first block; pandas would take a later NUL into a field. Checking
    the text (not the bytes) covers UTF-16 and UTF-32 too, where a NUL byte is normal.
    """

    def __init__(self, text: io.TextIOBase, name: str) -> None:
        self._text = text
        self._name = name
        self._lines = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        block = self._text.read(size)
        if "\x00" in block:
            line = self._lines + block.count("\n", 0, block.index("\x00")) + 1
            raise InputError(f"{self._name} contains a NUL character on line {line}, which CSV text cannot hold")
        # Counting lines, only to say where a NUL is, takes ~7 ms per 9 MB: about 1% of reading it.
        self._lines += block.count("\n")
        return block


# Where _HeaderWidth is: outside quotes, inside them, just past a quote inside them, or just past a blank
# line ended by a lone carriage return.
_PLAIN, _QUOTED, _AFTER_QUOTE, _AFTER_CR = range(4)


class _HeaderWidth(io.TextIOBase):
    """The decoded text pandas reads, refused once its header has more than MAX_COLUMNS fields.

    pandas builds an object per column per chunk, so a header of a million fields costs minutes and
    gigabytes before any check could see it. The fields are counted here, in the text pandas pulls,
    as its C parser splits them: a quote opens a quoted field only at the field's start, `""` inside
    one is a quote, and blank lines before the header are skipped (and a delimiter right after one's
    lone carriage return, which pandas gives back if the line goes on with blanks: then its header has
    one field more than counted here). After the header it only passes text on.
    """

    def __init__(self, text: io.TextIOBase, name: str, delimiter: str) -> None:
        self._text = text
        self._name = name
        self._delimiter = delimiter
        # Outside quotes, what ends a stretch of plain text: a delimiter, a quote or a line break.
        self._plain = re.compile(f'[{re.escape(delimiter)}"\r\n]')
        self._fields = 1
        self._state = _PLAIN
        self._field_start = True
        self._line_has_text = False
        self._counting = True
        self._started = False  # whether any text was read

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        block = self._text.read(size)
        if self._counting:
            # pandas skips a byte-order mark at the very start (one --encoding utf-8 leaves in the text).
            mark = not self._started and block.startswith("\ufeff")
            self._started = self._started or bool(block)
            self._count(block[mark:])
        return block

    def _count(self, block: str) -> None:
        """Go on counting the header's fields through `block`; stop counting where the header ends."""
        at = 0
        while at < len(block):
            if self._state == _QUOTED:
                close = block.find('"', at)
                if close < 0:
                    return
                self._state, at = _AFTER_QUOTE, close + 1
            elif self._state == _AFTER_QUOTE:
                # A quote right after the closing one is an escaped quote: the field stays quoted.
                escaped = block[at] == '"'
                self._state, self._field_start, at = (_QUOTED if escaped else _PLAIN), False, at + escaped
            elif self._state == _AFTER_CR:
                # pandas drops a delimiter that follows a blank line's lone carriage return.
                self._state, at = _PLAIN, at + (block[at] == self._delimiter)
            else:
                found = self._plain.search(block, at)
                end = found.start() if found else len(block)
                if end > at:
                    self._field_start = False
                    self._line_has_text = self._line_has_text or bool(block[at:end].strip(" \t"))
                if not found:
                    return
                char, at = found.group(), end + 1
                if char == '"':
                    self._state = _QUOTED if self._field_start else _PLAIN
                    self._field_start, self._line_has_text = False, True
                elif char == self._delimiter:
                    self._fields += 1
                    self._field_start, self._line_has_text = True, True
                    if self._fields > defaults.MAX_COLUMNS:
                        raise InputError(f"{self._name} has more than {defaults.MAX_COLUMNS:,} columns, which is"
                                         " the most a file may have")
                elif self._line_has_text:  # the header's line break: the rest is pandas' alone
                    self._counting = False
                    return
                else:  # a blank line before the header, which pandas skips
                    self._state, self._field_start = (_AFTER_CR if char == "\r" else _PLAIN), True


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
    # Before UTF-16: UTF-32's little-endian mark begins with UTF-16's.
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
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


def _check_delimiter(delimiter: str | None) -> None:
    if delimiter is not None and (
        len(delimiter) != 1 or not delimiter.isascii() or delimiter in FORBIDDEN_DELIMITERS
    ):
        raise InputError(
            f"--delimiter {delimiter!r} cannot separate fields: give one ASCII character other than"
            " a double quote, a line break or NUL"
        )


def _check_unique(name: str, columns: list[str]) -> None:
    """Rows are stored as {column: value}, so a repeated name would lose a field."""
    repeated = [column if column else '""' for column, count in Counter(columns).items() if count > 1]
    if repeated:
        raise InputError(f"{name}: duplicate column names: {', '.join(repeated)}")


class CsvFile:
    """One CSV input, validated up front (options, encoding, header, at least one row), then streamed."""

    def __init__(
        self,
        source: Source,
        delimiter: str | None = None,
        encoding: str | None = None,
        chunk_rows: int = defaults.READ_CHUNK_ROWS,
    ) -> None:
        self.source = source
        _check_delimiter(delimiter)
        head = _read_head(source.stream, defaults.SNIFF_BYTES)
        if not head.strip():
            raise InputError(f"{source.name} is empty: expected a header line and rows")
        # Only None detects: an empty --encoding is refused as unknown, as an empty --delimiter is.
        self.encoding = detect_encoding(head) if encoding is None else encoding
        wide = self._check_codec(head).startswith(("utf-16", "utf-32"))
        if (b"\x00" in head and not wide) or "\x00" in (text := self._decode_head(head)):
            hint = "" if wide else " (for UTF-16 without a BOM, pass --encoding utf-16-le)"
            raise InputError(f"{source.name} contains NUL bytes: it looks like a binary file, not CSV text{hint}")
        self.delimiter = delimiter or _sniff_delimiter(text)
        stream = _Decoded(io.BufferedReader(_Replay(head, source.stream)), self.encoding, self._decode_error)
        self._reader = self._guard(
            lambda: pd.read_csv(
                _HeaderWidth(_NulGuard(stream, source.name), source.name, self.delimiter),
                sep=self.delimiter,
                # The header is read as a row, so pandas cannot rename duplicate or empty names.
                header=None,
                dtype=object,
                na_filter=False,
                keep_default_na=False,
                index_col=False,
                skip_blank_lines=True,
                chunksize=chunk_rows,
                engine="c",
            )
        )
        self.columns: list[str] = list(self._guard(lambda: self._reader.get_chunk(1)).iloc[0])
        _check_unique(source.name, self.columns)
        self._first = self._guard(lambda: next(self._reader, None))
        if self._first is None:
            raise InputError(f"{source.name} has a header but no rows")

    def _check_codec(self, head: bytes) -> str:
        """Refuse what would fail later with a traceback; return the codec's canonical name."""
        try:
            info = codecs.lookup(self.encoding)
        except (LookupError, ValueError):  # ValueError: a name with a NUL in it (it can come over HTTP)
            raise InputError(f"unknown encoding {self.encoding!r}: pass a Python codec name such as utf-8, latin-1"
                             " or cp1252") from None
        # rot13, base64, zlib, hex and the like are codecs, but from bytes to bytes, not to text.
        if not info._is_text_encoding:  # type: ignore[attr-defined]
            raise InputError(f"{self.encoding!r} is not a text encoding: pass one such as utf-8 or latin-1")
        marks = BOM_CODECS.get(info.name)
        if marks and not head.startswith(marks):
            raise InputError(
                f"{self.source.name} has no byte-order mark, which {self.encoding} needs:"
                f" pass --encoding {info.name}-le or --encoding {info.name}-be"
            )
        return info.name

    def _decode_head(self, head: bytes) -> str:
        try:
            return codecs.getincrementaldecoder(self.encoding)().decode(head, final=False)
        except UnicodeDecodeError as exc:
            raise self._decode_error(exc, _start_of(exc, len(head))) from None
        except UnicodeError as exc:
            raise self._decode_error(exc) from None

    def _decode_error(self, exc: UnicodeError, offset: int = 0) -> InputError:
        """The error for undecodable input; `offset` is where in the input the bytes of `exc` begin."""
        if not isinstance(exc, UnicodeDecodeError):
            # Codecs such as punycode or "undefined" fail with no position to point at.
            return InputError(f"{self.source.name} cannot be read as {self.encoding}: {exc}")
        return InputError(
            f"{self.source.name} is not valid {self.encoding} (byte 0x{exc.object[exc.start]:02x} near byte"
            f" {offset + exc.start}): pass --encoding, for example --encoding latin-1"
        )

    def _guard(self, read: Callable[[], T]) -> T:
        """Run a pandas read step, turning its errors into one-line input errors."""
        try:
            return read()
        except UnicodeError as exc:
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
            chunk = self._guard(lambda: next(self._reader, None))
