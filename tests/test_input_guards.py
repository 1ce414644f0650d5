"""Input that used to pass silently or end in a traceback: each is one clear InputError now."""

from __future__ import annotations

import codecs
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import stored_rows, write_csv
from csvembed import defaults
from csvembed.errors import InputError
from csvembed.reader import CsvFile, Source, open_source
from csvembed.rowtext import TextSpec

PLAIN_FIELDS_ONLY = (
    "only plain {column} fields are allowed, without :format, !conversion, .attribute or [index]"
    " (embed a column whose name has . [ : or ! with --text-column)"
)


def read(data: bytes, **options) -> tuple[list[str], list[list[str]]]:
    csv_file = CsvFile(Source("t.csv", io.BytesIO(data), is_stdin=False), **options)
    return csv_file.columns, [row for _, chunk in csv_file.chunks() for row in chunk]


def rejected(data: bytes, **options) -> str:
    with pytest.raises(InputError) as raised:
        read(data, **options)
    return str(raised.value)


@pytest.mark.parametrize(
    ("data", "columns", "rows"),
    [
        (b"a,,b\n1,2,3\n", ["a", "", "b"], [["1", "2", "3"]]),  # pandas said "Unnamed: 1"
        (b"a,b,\n1,2,3\n", ["a", "b", ""], [["1", "2", "3"]]),
        ('\ufeff"x;y";;b\n1;2;3\n'.encode(), ["x;y", "", "b"], [["1", "2", "3"]]),
        ('"x,y",,b\n1,2,3\n'.encode("utf-16"), ["x,y", "", "b"], [["1", "2", "3"]]),
        ('"x,y",b\n1,2\n'.encode("utf-32"), ["x,y", "b"], [["1", "2"]]),  # was misread as UTF-16
    ],
)
def test_header_names_are_kept_as_written(data, columns, rows):
    assert read(data) == (columns, rows)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a,a,b\n1,2,3\n", "t.csv: duplicate column names: a"),  # pandas said a, a.1
        (b"b,a,b,a,c\n1,2,3,4,5\n", "t.csv: duplicate column names: b, a"),
        (b"a,,,b\n1,2,3,4\n", 't.csv: duplicate column names: ""'),
        ('\ufeff"x,y",x;y,"x,y"\n1,2,3\n'.encode(), "t.csv: duplicate column names: x,y"),
        ("n,n\n1,2\n".encode("utf-16"), "t.csv: duplicate column names: n"),
    ],
)
def test_duplicate_column_names_are_refused(data, message):
    assert rejected(data) == message


@pytest.mark.parametrize("delimiter", [";;", "", '"', "\n", "\r", "\0", "§"])
def test_a_delimiter_must_be_one_plain_character(delimiter):
    assert rejected(b"a;b\n1;2\n", delimiter=delimiter) == (
        f"--delimiter {delimiter!r} cannot separate fields: give one ASCII character other than"
        " a double quote, a line break or NUL"
    )


@pytest.mark.parametrize(
    ("data", "encoding", "message"),
    [
        ("a,b\n1,2\n".encode("utf-16-le"), "utf-16",
         "t.csv has no byte-order mark, which utf-16 needs: pass --encoding utf-16-le or --encoding utf-16-be"),
        ("a,b\n1,2\n".encode("utf-32-be"), "UTF32",
         "t.csv has no byte-order mark, which UTF32 needs: pass --encoding utf-32-le or --encoding utf-32-be"),
        (b"a,b\n1,2\n", "rot13", "'rot13' is not a text encoding: pass one such as utf-8 or latin-1"),
        (b"a,b\n1,2\n", "base64", "'base64' is not a text encoding: pass one such as utf-8 or latin-1"),
        (b"a,b\n1,2\n", "zlib", "'zlib' is not a text encoding: pass one such as utf-8 or latin-1"),
        (b"a,b\n1,2\n", "hex", "'hex' is not a text encoding: pass one such as utf-8 or latin-1"),
        (b"a,b\n1,2\n", "undefined", "t.csv cannot be read as undefined: undefined encoding"),
        (b"a,b\n1,2\n", "punycode", "t.csv cannot be read as punycode: Invalid extended code point ','"),
    ],
)
def test_encodings_that_cannot_decode_this_file_are_one_line(data, encoding, message):
    assert rejected(data, encoding=encoding) == message


def test_closed_standard_input_is_one_line(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # how Python starts under `<&-`
    with pytest.raises(InputError, match="^standard input is closed: pipe a CSV into submit -$"):
        open_source("-")
    read_end, write_end = os.pipe()
    with open(read_end, "rb", closefd=False) as pipe:
        os.close(read_end)
        os.close(write_end)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(pipe))  # a dead descriptor under a live sys.stdin
        with pytest.raises(InputError, match="^standard input is closed: pipe a CSV into submit -$"):
            open_source("-")


def many_rows(count: int) -> str:
    """Rows of 60 characters: `count` of them span several read chunks and pandas' 256 KB blocks."""
    return "id,text\n" + "".join(f"{i:06d},{'row text':<52}\n" for i in range(1, count + 1))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1"])
def test_a_nul_past_the_first_block_is_refused_with_its_line(encoding):
    rows = 3 * defaults.READ_CHUNK_ROWS
    data = (many_rows(rows) + "x,\0\n").encode(encoding)
    assert len(data) > 3 * defaults.SNIFF_BYTES
    assert rejected(data, encoding=encoding) == (
        f"t.csv contains a NUL character on line {rows + 2}, which CSV text cannot hold"
    )


def test_a_nul_at_the_start_of_utf16_gives_no_utf16_hint():
    assert rejected("a,b\n1,\0\n".encode("utf-16")) == (
        "t.csv contains NUL bytes: it looks like a binary file, not CSV text"
    )


def test_a_late_nul_withdraws_the_rows_already_enqueued(env, submit, drain, fake_embedder, monkeypatch):
    import csvembed.producer

    rows = 4 * defaults.READ_CHUNK_ROWS
    path = write_csv(env.dir / "late.csv", many_rows(rows - 1) + "x,\0\n")
    queued_at_withdrawal = []
    withdraw = csvembed.producer.delete_submission

    def spy(connection, store, submission_id):
        queued_at_withdrawal.append(connection.llen("rq:queue:csvembed"))
        return withdraw(connection, store, submission_id)

    monkeypatch.setattr(csvembed.producer, "delete_submission", spy)
    with pytest.raises(InputError) as raised:
        submit(path)
    assert str(raised.value) == f"{path} contains a NUL character on line {rows + 1}, which CSV text cannot hold"
    assert queued_at_withdrawal == [3 * defaults.READ_CHUNK_ROWS]  # three chunks went out, then came back
    assert env.connection.keys("rq:job:*") == []
    assert env.connection.llen("rq:queue:csvembed") == 0
    assert env.connection.zcard("csvembed:submissions") == 0
    drain(model=fake_embedder)
    assert stored_rows(env) == []


@pytest.mark.parametrize(
    "template", ["{title:>999999999}", "{title:.2f}", "{title!r}", "{a.b}", "{a[0]}", "{title:{width}}"]
)
def test_templates_take_plain_column_fields_only(template):
    with pytest.raises(InputError) as raised:
        TextSpec(["title", "a.b", "a"], template=template)
    assert str(raised.value) == f"bad --template {template!r}: {PLAIN_FIELDS_ONLY}"


def test_a_template_fills_fields_as_written_and_dotted_columns_need_text_column():
    columns = ["title", "a.b", ""]
    assert TextSpec(columns, template="{{x}} {title}: {title}!").render(["T {0}", "AB", "E"]) == "{x} T {0}: T {0}!"
    assert TextSpec(columns, text_columns=["a.b", ""]).render(["T", "AB", "E"]) == "AB\nE"


def test_every_text_choice_renders_the_fields_by_their_column():
    columns, row = ["id", "title", "note"], ["7", "Tent", ""]
    assert TextSpec(columns).render(row) == "id: 7\ntitle: Tent\nnote: "
    assert TextSpec(columns, text_columns=["title"]).render(row) == "Tent"
    assert TextSpec(columns, text_columns=["note", "title", "note"]).render(row) == "\nTent\n"
    assert TextSpec(columns, template="{note}[{title}]{id}").render(row) == "[Tent]7"


@pytest.mark.slow
def test_submit_with_standard_input_closed_is_one_line(env):
    result = subprocess.run(
        ["sh", "-c", f"exec {sys.executable} -m csvembed submit - <&-"], check=False, capture_output=True,
        env=env.environ, timeout=120,
    )
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == "csvembed: error: standard input is closed: pipe a CSV into submit -\n"
    assert env.connection.zcard("csvembed:submissions") == 0


def test_an_empty_column_name_is_stored_as_written(env, submit, drain, fake_embedder):
    submit(write_csv(env.dir / "blank.csv", "a,,b\n1,2,3\n"), model=fake_embedder.name)
    drain(model=fake_embedder)
    [(_, row_id, row_number, text, row, _)] = stored_rows(env)
    assert (row_id, row_number, text) == ("1", 1, "a: 1\n: 2\nb: 3")
    assert json.loads(row) == {"a": "1", "": "2", "b": "3"}


def wide(columns: int, delimiter: str = ",") -> bytes:
    """A header of `columns` names and one row of as many fields."""
    return (delimiter.join(f"c{i}" for i in range(columns)) + "\n" + delimiter.join("x" * columns) + "\n").encode()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-32"])
def test_a_header_wider_than_the_column_limit_is_refused_before_pandas_reads_it(encoding):
    # A million columns took 164 s and 2.3 GB to submit one row: pandas builds an object per column per chunk.
    data = wide(defaults.MAX_COLUMNS + 1).decode().encode(encoding)
    assert rejected(data) == f"t.csv has more than {defaults.MAX_COLUMNS:,} columns, which is the most a file may have"


def test_a_header_of_exactly_the_column_limit_is_read():
    columns, rows = read(wide(defaults.MAX_COLUMNS))
    assert (len(columns), columns[-1], rows) == (defaults.MAX_COLUMNS, f"c{defaults.MAX_COLUMNS - 1}",
                                                 [["x"] * defaults.MAX_COLUMNS])


@pytest.mark.parametrize(
    "header",
    [
        '"a,b",x,y,z',  # delimiters inside quotes are part of a field
        '"a"",b",x,y,z',  # an escaped quote does not end the quoted field
        'a"b,c"d,x,y',  # a quote inside an unquoted field is a plain character
        ' "a,b",x,y',  # so is a quote after a space
        "\r\n  \n" + "a,b,c,d",  # blank lines before the header are skipped, as pandas skips them
    ],
)
def test_the_column_limit_counts_fields_as_pandas_splits_them(header, monkeypatch):
    monkeypatch.setattr(defaults, "MAX_COLUMNS", 4)
    assert len(read(f"{header}\r\n1,2,3,4\r\n".encode())[0]) == 4
    refused = rejected(f"{header},e\n1,2,3,4,5\n".encode())
    assert refused == "t.csv has more than 4 columns, which is the most a file may have"


def test_the_column_limit_skips_a_byte_order_mark_as_pandas_does(monkeypatch):
    # --encoding utf-8 leaves a file's mark in its text, which pandas skips: its first field is still quoted.
    monkeypatch.setattr(defaults, "MAX_COLUMNS", 4)
    data = codecs.BOM_UTF8 + b'"a,b,c,d",x,y,z\n1,2,3,4\n'
    assert read(data, encoding="utf-8") == (["a,b,c,d", "x", "y", "z"], [["1", "2", "3", "4"]])
    wider = codecs.BOM_UTF8 + b'"a,b",x,y,z,w\n1,2,3,4,5\n'
    assert rejected(wider, encoding="utf-8") == "t.csv has more than 4 columns, which is the most a file may have"


@pytest.mark.parametrize(("encoding", "bad"), [("utf-8", b"\xe9"), ("utf-16", b"\x00\xd8")])
def test_a_bad_byte_deep_in_the_file_is_placed_by_its_offset_in_the_file(encoding, bad):
    # pandas reads through a decoder whose errors count from the start of its current block: a bad byte at
    # offset 297,793 was reported "near byte 35649". (In UTF-16, a lone surrogate.)
    body = ("id,text\n" + "".join(f"{i},row {i}\n" for i in range(20000)) + "9,").encode(encoding)
    data = body + bad + "x\n".encode(encoding)[2 if encoding == "utf-16" else 0:]
    assert rejected(data) == (f"t.csv is not valid {encoding} (byte 0x{bad[0]:02x} near byte {len(body)}):"
                              " pass --encoding, for example --encoding latin-1")


@pytest.mark.parametrize("rows", [3, 10000])  # in the block the encoding is detected from, and in pandas' first
def test_a_bad_byte_after_a_utf8_byte_order_mark_is_placed_by_its_offset_in_the_file(rows):
    # The utf-8-sig decoder drops the mark from its first block before it decodes: its errors counted from
    # the byte after it, so the bad byte was placed 3 bytes before where it is.
    body = codecs.BOM_UTF8 + ("id,text\n" + "".join(f"{i},row {i}\n" for i in range(rows)) + "9,").encode()
    assert rejected(body + b"\xe9x\n") == (f"t.csv is not valid utf-8-sig (byte 0xe9 near byte {len(body)}):"
                                           " pass --encoding, for example --encoding latin-1")
