"""CSV reading: every field comes back exactly as written, whatever the file's shape."""

from __future__ import annotations

import io

import pytest

from csvembed.errors import InputError
from csvembed.reader import CsvFile, Source


def read(data: bytes, **options) -> tuple[list[str], list[list[str]]]:
    csv_file = CsvFile(Source("test.csv", io.BytesIO(data), is_stdin=False), **options)
    rows = [row for _, chunk in csv_file.chunks() for row in chunk]
    return csv_file.columns, rows


def test_fields_come_back_byte_exact():
    data = (
        'id,name,note\r\n'
        '007,"Smith, John","He said ""hi"""\r\n'
        '010,,"line one\nline two"\r\n'
        '011,Zoë 日本,"crlf\r\ninside"\r\n'
        '012,NA,null\r\n'
    ).encode()
    columns, rows = read(data)
    assert columns == ["id", "name", "note"]
    assert rows == [
        ["007", "Smith, John", 'He said "hi"'],
        ["010", "", "line one\nline two"],
        ["011", "Zoë 日本", "crlf\r\ninside"],
        ["012", "NA", "null"],
    ]


def test_utf8_bom_is_removed_from_the_first_column_name():
    columns, rows = read("\ufeffsku,title\n001,Café\n".encode())
    assert columns == ["sku", "title"]
    assert rows == [["001", "Café"]]


def test_utf16_with_bom_is_detected():
    columns, rows = read("sku,title\n001,Crème brûlée\n".encode("utf-16"))
    assert columns == ["sku", "title"]
    assert rows == [["001", "Crème brûlée"]]


def test_delimiter_is_sniffed_and_can_be_forced():
    assert read(b"a;b\n1;2\n3;4\n")[1] == [["1", "2"], ["3", "4"]]
    assert read(b"a|b\n1|2\n", delimiter="|")[1] == [["1", "2"]]


def test_rows_stream_in_chunks_with_row_numbers():
    data = b"n\n" + b"".join(f"{i}\n".encode() for i in range(1, 11))
    csv_file = CsvFile(Source("t.csv", io.BytesIO(data), is_stdin=False), chunk_rows=4)
    chunks = list(csv_file.chunks())
    assert [(first, len(rows)) for first, rows in chunks] == [(1, 4), (5, 4), (9, 2)]
    assert chunks[2][1] == [["9"], ["10"]]


def test_a_field_larger_than_pythons_csv_limit_is_read_whole():
    big = "x" * 200_000
    columns, rows = read(f"id,text\n1,{big}\n2,small\n".encode())
    assert rows == [["1", big], ["2", "small"]]


def test_missing_trailing_fields_read_as_empty():
    assert read(b"a,b,c\n1,2\n")[1] == [["1", "2", ""]]


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        (b"", {}, "test.csv is empty: expected a header line and rows"),
        (b"a,b\n", {}, "test.csv has a header but no rows"),
        (b"a,b\n1,2,3\n", {}, "test.csv: malformed CSV: Expected 2 fields in line 2, saw 3"),
        (b"a,b\n1,2\n3,4,5\n", {}, "test.csv: malformed CSV: Expected 2 fields in line 3, saw 3"),
        ("a,b\n1,caf\xe9\n".encode("latin-1"), {},
         "test.csv is not valid utf-8 (byte 0xe9 near byte 9): pass --encoding, for example --encoding latin-1"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {},
         "test.csv contains NUL bytes: it looks like a binary file, not CSV text"
         " (for UTF-16 without a BOM, pass --encoding utf-16-le)"),
        (b"a,b\n1,2\x00\n", {},
         "test.csv contains NUL bytes: it looks like a binary file, not CSV text"
         " (for UTF-16 without a BOM, pass --encoding utf-16-le)"),
        (b"a,b\n1,2\n", {"encoding": "klingon"},
         "unknown encoding 'klingon': pass a Python codec name such as utf-8, latin-1 or cp1252"),
    ],
)
def test_bad_input_is_one_clear_error(data, options, message):
    with pytest.raises(InputError) as raised:
        read(data, **options)
    assert str(raised.value) == message


def test_latin1_reads_with_the_encoding_given():
    assert read("a,b\n1,café\n".encode("latin-1"), encoding="latin-1")[1] == [["1", "café"]]
