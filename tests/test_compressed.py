"""The files people really have: compressed CSVs by name and on stdin, read as they stream, with a
reading bar on a terminal and the submission id out before any wait."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import select
import subprocess
import sys
import threading
import time

import pytest
import zstandard
from rich import filesize
from rich.console import Console
from typer.testing import CliRunner

from conftest import Env, stored_rows, write_csv
from csvembed import defaults
from csvembed.cli import app
from csvembed.errors import InputError
from csvembed.reader import CsvFile, Source, open_source

COMPRESSORS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}
SUBMISSION_ID = re.compile(r"[0-9a-f]{10}")


def csv_text(rows: int) -> str:
    """More than the 64 KiB sniffed up front, with quoted commas, line breaks and non-ASCII text."""
    lines = ["sku,title,note"]
    lines += [f'{i:05d},"Boot {i}, size {i % 13}","Zoë 日本 {i}\nline two"' for i in range(1, rows + 1)]
    return "\n".join(lines) + "\n"


def compressed(kind: str, data: bytes) -> bytes:
    """Two members (gzip), streams (bzip2, xz) or frames (zstd) one after another, as `cat a.gz b.gz` makes."""
    cut = data.index(b"\n", len(data) // 2) + 1
    return COMPRESSORS[kind](data[:cut]) + COMPRESSORS[kind](data[cut:])


def read_all(source: Source) -> tuple[list[str], list[list[str]]]:
    csv_file = CsvFile(source)
    return csv_file.columns, [row for _, chunk in csv_file.chunks() for row in chunk]


def rows_of(env: Env, submission_id: str) -> list[tuple]:
    """The stored (id, row_number, text, row_json, vector) of one submission."""
    return [(*row[1:5], row[5].tolist()) for row in stored_rows(env) if row[0] == submission_id]


def cli(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="csvembed")


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_each_compressed_kind_stores_the_same_rows_as_the_plain_file(env, submit, drain, fake_embedder, kind):
    data = csv_text(1500).encode()
    plain = submit(write_csv(env.dir / "data.csv", data.decode()), model=fake_embedder.name, collection="plain")
    packed_path = env.dir / f"data.csv.{kind}"
    packed_path.write_bytes(compressed(kind, data))
    packed = submit(packed_path, model=fake_embedder.name)
    drain(model=fake_embedder)
    assert (packed.collection, packed.total, packed.enqueued) == ("data", 1500, 1500)
    expected = rows_of(env, plain.id)
    assert len(expected) == 1500
    assert rows_of(env, packed.id) == expected


@pytest.mark.parametrize(
    ("name", "stem"),
    [("data.csv.gz", "data"), ("data.CSV.ZST", "data"), ("my.data.csv.bz2", "my.data"), ("data.xz", "data"),
     ("data.csv", "data"), ("dir/data.tsv.gz", "data")],
)
def test_the_collection_of_a_compressed_file_is_its_stem_without_compression(name, stem):
    assert Source(name, io.BytesIO(), is_stdin=False).stem == stem


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_standard_input_is_detected_by_its_magic_bytes(monkeypatch, kind):
    data = csv_text(1500).encode()
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, compressed(kind, data)), os.close(write_end)))
    writer.start()
    with open(read_end, encoding="utf-8") as pipe:  # a pipe: no name, no size, no seeking
        monkeypatch.setattr(sys, "stdin", pipe)
        source = open_source("-")
        assert (source.stem, source.size) == ("stdin", None)
        assert read_all(source) == read_all(Source("data.csv", io.BytesIO(data), is_stdin=False))
    writer.join()


def test_a_csv_whose_header_starts_like_bzip2_stays_a_csv(tmp_path):
    path = write_csv(tmp_path / "t.csv", "BZh9,1AY\n1,2\n")
    assert read_all(open_source(str(path))) == (["BZh9", "1AY"], [["1", "2"]])


def test_a_file_named_for_a_format_it_does_not_hold_is_one_line(tmp_path):
    path = write_csv(tmp_path / "data.csv.gz", "a,b\n1,2\n")
    with pytest.raises(InputError) as raised:
        open_source(str(path))
    assert str(raised.value) == f"{path} is not gzip data, though its name says so"


@pytest.mark.parametrize(("kind", "name"), [("gz", "gzip"), ("bz2", "bzip2"), ("xz", "xz"), ("zst", "zstd")])
def test_a_truncated_stream_is_one_line_and_withdraws_what_was_enqueued(env, submit, drain, fake_embedder, kind,
                                                                        name):
    rows = 3 * defaults.READ_CHUNK_ROWS
    whole = COMPRESSORS[kind](csv_text(rows).encode())
    path = env.dir / f"cut.csv.{kind}"
    path.write_bytes(whole[: len(whole) * 9 // 10])
    with pytest.raises(InputError) as raised:
        submit(path, model=fake_embedder.name)
    assert str(raised.value) == f"{path} is truncated: its {name} stream ends before its end marker"
    assert env.connection.keys("rq:job:*") == []
    assert env.connection.zcard("csvembed:submissions") == 0
    drain(model=fake_embedder)
    assert stored_rows(env) == []


def test_a_truncated_gz_on_the_command_line_is_one_line_and_exit_2(env):
    whole = gzip.compress(csv_text(3 * defaults.READ_CHUNK_ROWS).encode())
    path = env.dir / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) * 9 // 10])
    result = cli("submit", str(path))
    assert result.exit_code == 2
    # The id came first, then the damage: the submission is withdrawn and the exit code says so.
    assert SUBMISSION_ID.fullmatch(result.stdout.strip())
    assert result.stderr == f"csvembed: error: {path} is truncated: its gzip stream ends before its end marker\n"
    assert env.connection.zcard("csvembed:submissions") == 0


def test_corrupt_compressed_data_is_one_line(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(b"")[:10] + b"\x07")  # a gzip header, then a deflate block of invalid type
    with pytest.raises(InputError) as raised:
        read_all(open_source(str(path)))
    assert str(raised.value) == f"{path} is not valid gzip data: Error -3 while decompressing data: invalid block type"


def test_no_bar_when_stderr_is_not_a_terminal(env):
    path = env.dir / "data.csv.gz"
    path.write_bytes(gzip.compress(csv_text(12_000).encode()))
    result = cli("submit", str(path))
    assert result.exit_code == 0
    submission_id = result.stdout.strip()
    assert result.stdout == f"{submission_id}\n"
    assert result.stderr == f"submitted 12000 rows of {path} to queue csvembed as {submission_id} (collection data)\n"


def test_a_terminal_shows_bytes_read_and_rows_per_second(env, monkeypatch):
    path = env.dir / "[red]data.csv.gz"  # not rich markup
    path.write_bytes(gzip.compress(csv_text(12_000).encode()))
    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, width=200)
    for module in ("csvembed.cli.app", "csvembed.cli.ingest"):
        monkeypatch.setattr(sys.modules[module], "err", terminal)
    result = cli("submit", str(path))
    assert result.exit_code == 0
    assert result.stdout == f"{result.stdout.strip()}\n"
    size = path.stat().st_size
    unit, suffix = filesize.pick_unit_and_suffix(size, ["bytes", "kB", "MB", "GB"], 1000)
    screen = shown.getvalue()
    assert f"reading {path}" in screen
    assert f"{size / unit:,.1f}/{size / unit:,.1f} {suffix}" in screen  # compressed bytes read, of the file's size
    assert "12,000 rows" in screen
    assert re.search(r"[\d,]+ rows/s", screen)
    assert screen.endswith(f"submitted 12000 rows of {path} to queue csvembed as {result.stdout.strip()}"
                           " (collection [red]data)\n")


@pytest.mark.slow
def test_the_id_is_printed_before_a_max_pending_wait(env):
    path = write_csv(env.dir / "big.csv", csv_text(3000))
    process = subprocess.Popen(
        [sys.executable, "-m", "csvembed", "submit", str(path), "--max-pending", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env.environ,
    )
    try:
        assert select.select([process.stdout], [], [], 60)[0], "no id on stdout within 60 s"
        submission_id = process.stdout.readline().decode().strip()
        assert SUBMISSION_ID.fullmatch(submission_id)
        assert env.connection.zscore("csvembed:submissions", submission_id) is not None
        deadline = time.monotonic() + 30
        while env.connection.llen("rq:queue:csvembed") < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        # Still holding the file: 10 rows wait, no worker takes them, and nothing more was printed.
        assert (process.poll(), env.connection.llen("rq:queue:csvembed")) == (None, 10)
    finally:
        process.kill()
        process.wait(10)
    assert process.stdout.read() == b""
