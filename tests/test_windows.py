"""Long text in windows (issue #12): every word of a row is embedded, searched and exported, exactly once.

The fast tier uses WordWindowEmbedder (tests/doubles.py): words are its tokens and its window is 8
words, so a window's vector is the hash of exactly the window's text and spans can be written down.
"""

from __future__ import annotations

import json
from dataclasses import replace

import apsw
import numpy as np
import pytest
import sqlite_vec

from conftest import STORES, run_cli, store_counts, write_csv
from csvembed.errors import InputError
from csvembed.store import StoredRow, open_existing_store, open_store
from csvembed.submissions import SubmissionRecords
from csvembed.windows import MAX_WINDOWS, Split, split
from doubles import WordWindowEmbedder

BOTH_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]

WORDS = " ".join(f"w{i}" for i in range(20))  # 20 words: windows of 8 with overlap 2
# (start, end) of "w0 .. w7", "w6 .. w13", "w12 .. w19"
WORD_SPANS = [(0, 23), (18, 45), (38, 69)]


@pytest.fixture
def words():
    return WordWindowEmbedder()


def stored_windows(env, submission: str) -> dict[str, tuple[list[tuple[int, int]], np.ndarray]]:
    store = open_store(env.db)
    try:
        return {row_id: (spans, vectors) for row_id, _, _, _, spans, vectors in store.windows_of_submission(submission)}
    finally:
        store.close()


def shape_counts(env, submission: str) -> tuple[int, int, int, int, int, int]:
    s = SubmissionRecords(env.connection).snapshot(submission)
    return s.done, s.failed, s.rows_whole, s.rows_windowed, s.windows, s.rows_truncated


# --- splitting ----------------------------------------------------------------------------------


def test_a_long_text_is_split_into_overlapping_windows_of_whole_words(words):
    found = split(WORDS, words.token_spans, 8, 2, MAX_WINDOWS, words.text_cap)
    assert (found.spans, found.truncated) == (WORD_SPANS, False)
    assert [WORDS[a:b] for a, b in found.spans] == ["w0 w1 w2 w3 w4 w5 w6 w7", "w6 w7 w8 w9 w10 w11 w12 w13",
                                                    "w12 w13 w14 w15 w16 w17 w18 w19"]
    assert split(WORDS, words.token_spans, 8, 0, MAX_WINDOWS, words.text_cap).spans == [(0, 23), (24, 53), (54, 69)]
    # An overlap of more than half a window is held to half of it.
    assert split(WORDS, words.token_spans, 8, 7, MAX_WINDOWS, words.text_cap).spans == split(
        WORDS, words.token_spans, 8, 4, MAX_WINDOWS, words.text_cap).spans
    assert split("a few words", words.token_spans, 8, 2, MAX_WINDOWS, words.text_cap).spans == [(0, 11)]
    assert split(WORDS, words.token_spans, 8, 2, 1, words.text_cap).spans == [(0, 23)]
    assert split(WORDS, words.token_spans, 8, 2, 1, words.text_cap).truncated


def test_a_window_ends_after_a_whole_word_when_one_ends_in_its_second_half():
    # Tokens of "abcd efgh": ab, ##cd, ef, ##gh; a window of 3 ends after "abcd", not after "ef".
    def pieces(text: str) -> list[tuple[int, int]]:
        return [(start + i, start + i + 2) for start in range(0, len(text), 5) for i in (0, 2)
                if start + i < len(text)]

    text = "abcd efgh ijkl"
    assert split(text, pieces, 3, 0, MAX_WINDOWS, len(text)).spans == [(0, 4), (5, 9), (10, 14)]


def test_the_tokenizer_never_sees_more_than_a_bounded_piece_and_a_huge_cell_costs_only_its_windows(words):
    huge = "word " * 2_000_000  # 10 MB
    found = split(huge, words.token_spans, 8, 2, MAX_WINDOWS, words.text_cap)
    assert (len(found.spans), found.truncated) == (MAX_WINDOWS, True)
    assert found.spans[0] == (0, 39) and found.spans[-1][1] == 6 * 5 * 511 + 39
    assert max(words.tokenized) <= 8 * 128
    assert sum(words.tokenized) <= 6 * 5 * MAX_WINDOWS + 2 * 8 * 128  # what the windows read, and a piece more


# 6 words over 2,012 characters: fewer than a window's 8 tokens, more than the 1,280 characters that
# WordWindowEmbedder's encode reads (its text_cap, as a real model's): "w3" ends at 1,208, "w4" at 1,610.
SPREAD = (" " * 400).join(f"w{i}" for i in range(6))
SPREAD_SPANS = [(0, 1208), (804, 2012)]


def test_a_window_ends_where_the_model_stops_reading_when_its_words_are_spread_over_whitespace(words):
    found = split(SPREAD, words.token_spans, 8, 2, MAX_WINDOWS, words.text_cap)
    assert (found.spans, found.truncated) == (SPREAD_SPANS, False)
    for start, end in found.spans:  # every word of every window is read by the model call
        assert words.token_spans(SPREAD[start:end][: words.text_cap]) == words.token_spans(SPREAD[start:end])
    # Counting tokens alone (a cap as long as the text), all of it is one window: it was stored so, with its last
    # two words never read.
    assert split(SPREAD, words.token_spans, 8, 2, MAX_WINDOWS, len(SPREAD)).spans == [(0, len(SPREAD))]
    assert split(SPREAD, words.token_spans, 8, 2, 1, words.text_cap) == Split([(0, 1208)], truncated=True)


# --- the pipeline -------------------------------------------------------------------------------


def long_rows_csv(env):
    return write_csv(env.dir / "long.csv", f"id,text\nshort,a few words\nlong,{WORDS}\nempty,\n")


def test_a_batch_is_counted_in_one_tokenizer_call_and_only_rows_that_do_not_fit_are_split(env, submit, drain,
                                                                                          words):
    huge = "x " * 600  # past what 8 tokens can span (8 * CHARS_PER_TOKEN characters): not even counted
    path = write_csv(env.dir / "mixed.csv", f"id,text\nshort,a few words\nlong,{WORDS}\nhuge,{huge}\nfit,one two\n")
    result = submit(path, model=words.name, id_column="id", text_columns=("text",), window_overlap=2)
    drain(model=words)
    assert [sorted(batch) for batch in words.counted] == [sorted(["a few words", WORDS, "one two"])]
    assert min(words.tokenized) == len(WORDS)  # split tokenizes the two long rows (the huge one in pieces) only
    stored = stored_windows(env, result.id)
    assert {row_id: spans for row_id, (spans, _) in stored.items()} == {
        "short": [(0, 11)], "fit": [(0, 7)], "long": WORD_SPANS,
        "huge": split(huge, words.token_spans, 8, 2, MAX_WINDOWS, words.text_cap).spans}
    assert shape_counts(env, result.id)[:4] == (4, 0, 2, 2)


def test_a_row_of_few_words_spread_past_what_the_model_reads_is_stored_in_windows_it_reads_whole(env, submit,
                                                                                                drain, words):
    path = write_csv(env.dir / "spread.csv", f'id,text\nspread,"{SPREAD}"\n')
    result = submit(path, model=words.name, id_column="id", text_columns=("text",), window_overlap=2)
    drain(model=words)
    spans, vectors = stored_windows(env, result.id)["spread"]
    assert spans == SPREAD_SPANS
    np.testing.assert_array_equal(vectors, np.stack([words.vector(SPREAD[a:b]) for a, b in SPREAD_SPANS]))
    assert shape_counts(env, result.id) == (1, 0, 0, 1, 2, 0)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_a_long_row_is_stored_as_windows_whose_vectors_are_the_models(env, submit, drain, words):
    result = submit(long_rows_csv(env), model=words.name, id_column="id", text_columns=("text",),
                    window_overlap=2)
    drain(model=words)
    stored = stored_windows(env, result.id)
    assert sorted(stored) == ["long", "short"]
    spans, vectors = stored["long"]
    assert spans == WORD_SPANS
    np.testing.assert_array_equal(vectors, np.stack([words.vector(WORDS[a:b]) for a, b in WORD_SPANS]))
    assert stored["short"][0] == [(0, 11)]
    np.testing.assert_array_equal(stored["short"][1], words.vector("a few words")[None])
    assert store_counts(env) == (2, 4)
    assert shape_counts(env, result.id) == (2, 1, 1, 1, 3, 0)
    # Every window went into the one model call.
    assert sorted(words.calls[0]) == sorted(["a few words", *(WORDS[a:b] for a, b in WORD_SPANS)])


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_search_returns_each_row_once_with_the_window_that_matched(env, words):
    store = open_store(env.db)
    dim = words.dimension
    query = words.vector("query")
    rows = [StoredRow("c", "A", "s", 1, "x" * 100, "{}", "m", spans=[(i, i + 5) for i in range(20)]),
            *(StoredRow("c", name, "s", n, name, "{}", "m") for n, name in enumerate("BCDEF", start=2))]
    near = [query + np.full(dim, 0.001 * i, np.float32) for i in range(1, 6)]
    # All of A's windows are nearer than any other row, its 8th window the nearest of all.
    a_windows = [query + np.full(dim, 0.0001 * (i + 1), np.float32) for i in range(20)]
    a_windows[7] = query
    try:
        store.write(rows, np.stack([*a_windows, *near]).astype(np.float32))
        hits = store.search(query, 3)
        assert [(hit.id, hit.match) for hit in hits] == [("A", {"start": 7, "end": 12}), ("B", {"start": 0, "end": 1}),
                                                        ("C", {"start": 0, "end": 1})]
        assert hits[0].distance == pytest.approx(0, abs=1e-6)
        assert [hit.id for hit in store.search(query, 10, collection="c")] == list("ABCDEF")
    finally:
        store.close()


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_a_rerun_replaces_all_windows_and_a_shrunk_row_loses_its_extra_ones(env, submit, drain, words):
    path = long_rows_csv(env)
    first = submit(path, model=words.name, id_column="id", text_columns=("text",), window_overlap=2)
    drain(model=words)
    again = submit(path, model=words.name, id_column="id", text_columns=("text",), window_overlap=2, force=True)
    drain(model=words)
    assert store_counts(env) == (2, 4)
    assert stored_windows(env, first.id) == {}
    assert stored_windows(env, again.id)["long"][0] == WORD_SPANS
    write_csv(path, "id,text\nshort,a few words\nlong,w0 w1 w2\n")
    shrunk = submit(path, model=words.name, id_column="id", text_columns=("text",))
    assert (shrunk.enqueued, shrunk.skipped) == (1, 1)
    drain(model=words)
    assert store_counts(env) == (2, 2)
    spans, vectors = stored_windows(env, shrunk.id)["long"]
    assert spans == [(0, 8)]
    np.testing.assert_array_equal(vectors, words.vector("w0 w1 w2")[None])


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_an_id_twice_in_one_batch_keeps_the_later_rows_windows_only(env, submit, drain, words):
    later = " ".join(f"v{i}" for i in range(12))  # two windows: "v0 .. v7", "v6 .. v11"
    path = write_csv(env.dir / "twice.csv", f"id,text\nX,{WORDS}\nX,{later}\n")
    result = submit(path, model=words.name, id_column="id", text_columns=("text",), window_overlap=2)
    drain(model=words)
    spans, vectors = stored_windows(env, result.id)["X"]
    assert spans == [(0, 23), (18, len(later))]
    np.testing.assert_array_equal(vectors, np.stack([words.vector(later[a:b]) for a, b in spans]))
    assert store_counts(env) == (1, 2)


@pytest.mark.parametrize("env", BOTH_STORES, indirect=True)
def test_deleting_a_submission_removes_every_window(env, submit, drain, words):
    from csvembed.delete import delete_submission

    result = submit(long_rows_csv(env), model=words.name, id_column="id", text_columns=("text",))
    drain(model=words)
    store = open_store(env.db)
    try:
        assert delete_submission(env.connection, store, result.id).rows == 2
    finally:
        store.close()
    assert store_counts(env) == (0, 0)


def test_truncate_keeps_the_first_window_and_counts_it(env, submit, drain, words):
    result = submit(long_rows_csv(env), model=words.name, id_column="id", text_columns=("text",),
                    long_text="truncate")
    drain(model=words)
    stored = stored_windows(env, result.id)
    assert stored["long"][0] == [(0, 23)]
    np.testing.assert_array_equal(stored["long"][1], words.vector(WORDS[:23])[None])
    assert shape_counts(env, result.id) == (2, 1, 1, 0, 0, 1)


def test_fail_fails_long_rows_alone_with_the_models_window(env, submit, drain, words):
    result = submit(long_rows_csv(env), model=words.name, id_column="id", text_columns=("text",), long_text="fail")
    drain(model=words)
    assert sorted(stored_windows(env, result.id)) == ["short"]
    reasons = {f["id"]: f["reason"] for f in SubmissionRecords(env.connection).failures(result.id)}
    assert reasons == {"long": "longer than the model's window (10 tokens)", "empty": "empty text: nothing to embed"}
    assert shape_counts(env, result.id) == (1, 2, 1, 0, 0, 0)


def test_past_the_window_cap_a_row_is_cut_off_and_counted(env, submit, drain, words):
    text = " ".join(f"w{i}" for i in range(6 * MAX_WINDOWS + 10))
    path = write_csv(env.dir / "cap.csv", f"id,text\nbig,{text}\n")
    result = submit(path, model=words.name, id_column="id", text_columns=("text",), window_overlap=2)
    drain(model=words)
    spans, _ = stored_windows(env, result.id)["big"]
    assert len(spans) == MAX_WINDOWS and spans[-1][1] < len(text)
    assert shape_counts(env, result.id) == (1, 0, 0, 1, MAX_WINDOWS, 1)


def test_another_policy_re_embeds_only_the_rows_it_changes(env, submit, drain, words):
    path = long_rows_csv(env)
    submit(path, model=words.name, id_column="id", text_columns=("text",))
    drain(model=words)
    truncated = submit(path, model=words.name, id_column="id", text_columns=("text",), long_text="truncate")
    assert (truncated.enqueued, truncated.skipped) == (2, 1)  # the long row, and the empty one that failed
    drain(model=words)
    again = submit(path, model=words.name, id_column="id", text_columns=("text",), long_text="truncate")
    assert (again.enqueued, again.skipped) == (1, 2)


def test_export_writes_the_mean_per_row_and_every_window_on_request(env, submit, drain, words):
    from csvembed.export import export

    result = submit(long_rows_csv(env), model=words.name, id_column="id", text_columns=("text",),
                    window_overlap=2)
    drain(model=words)
    store = open_store(env.db)
    try:
        for windows in (False, True):
            out = (env.dir / f"out-{windows}.jsonl").open("wb")
            with out:
                count = export(store, result.id, ["id", "text"], "jsonl", words.dimension, out, windows=windows)
            lines = [json.loads(line) for line in (env.dir / f"out-{windows}.jsonl").read_text().splitlines()]
            assert count == len(lines) == (4 if windows else 2)
            if not windows:
                mean = np.mean([words.vector(WORDS[a:b]) for a, b in WORD_SPANS], axis=0)
                np.testing.assert_allclose(lines[1]["vector"], mean / np.linalg.norm(mean), rtol=1e-6)
                assert lines[0]["vector"] == words.vector("a few words").tolist()
            else:
                assert [(line["id"], line["window"], line["start"], line["end"]) for line in lines] == [
                    ("short", 0, 0, 11), *(("long", i, a, b) for i, (a, b) in enumerate(WORD_SPANS))]
                assert lines[2]["vector"] == words.vector(WORDS[18:45]).tolist()
    finally:
        store.close()


def test_submit_refuses_an_unknown_policy_before_anything_is_queued(env, submit):
    with pytest.raises(InputError, match="unknown --long-text 'cut': use one of window, truncate, fail"):
        submit(long_rows_csv(env), long_text="cut")
    assert env.connection.keys("csvembed:sub:*") == []


def test_a_store_made_before_windows_is_migrated_when_opened(env):
    connection = apsw.Connection(env.db)
    connection.enable_load_extension(True)
    connection.load_extension(sqlite_vec.loadable_path())
    connection.execute("""
        CREATE TABLE csvembed_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE rows(rowid INTEGER PRIMARY KEY, collection TEXT NOT NULL, id TEXT NOT NULL,
            submission TEXT NOT NULL, row_number INTEGER NOT NULL, text TEXT NOT NULL, row_json TEXT NOT NULL,
            content_hash TEXT NOT NULL, model TEXT NOT NULL, stored_at REAL NOT NULL, UNIQUE(collection, id));
        CREATE TABLE deleted_submissions(submission TEXT PRIMARY KEY, deleted_at REAL NOT NULL);
        CREATE VIRTUAL TABLE vectors USING vec0(embedding float[4] distance_metric=cosine, collection text,
            submission text);
        INSERT INTO csvembed_meta VALUES ('schema_version', '1'), ('dimension', '4');
        INSERT INTO rows VALUES (5, 'c', 'A', 's', 1, 'café au lait', '{}', 'h', 'm', 0);
    """)
    vector = (np.array([1, 2, 3, 4]) / np.linalg.norm([1, 2, 3, 4])).astype(np.float32)
    connection.execute("INSERT INTO vectors(rowid, embedding, collection, submission) VALUES (5, ?, 'c', 's')",
                       (vector.tobytes(),))
    connection.close()
    store = open_existing_store(env.db, read_only=True)  # search's way in: it migrates the file it may write
    try:
        assert store.counts() == (1, 1)
        [(row_id, _, text, _, spans, vectors)] = store.windows_of_submission("s")
        assert (row_id, text, spans) == ("A", "café au lait", [(0, 12)])
        np.testing.assert_array_equal(vectors, vector[None])
        [hit] = store.search(vector, 5)
        assert (hit.id, hit.match, store.dimension) == ("A", {"start": 0, "end": 12}, 4)
    finally:
        store.close()


def test_search_json_names_the_matching_window(env, submit, drain, words, monkeypatch):
    import csvembed.search

    result = submit(long_rows_csv(env), model=words.name, id_column="id", text_columns=("text",),
                    window_overlap=2)
    drain(model=words)
    monkeypatch.setattr(csvembed.search, "load_embedder", lambda settings, **options: words)
    [hit] = csvembed.search.search(replace(env.settings, model=words.name), WORDS[18:45], 1)
    assert (hit.id, hit.submission, hit.match, hit.distance) == ("long", result.id, {"start": 18, "end": 45},
                                                                pytest.approx(0, abs=1e-6))


def test_submit_long_text_options_on_the_command_line(env):
    path = long_rows_csv(env)
    bad = run_cli(env, "submit", str(path), "--long-text", "cut")
    assert (bad.returncode, bad.stderr.decode().strip().splitlines()[-1]) == (
        2, "csvembed: error: unknown --long-text 'cut': use one of window, truncate, fail")
    done = run_cli(env, "submit", str(path), "--long-text", "truncate", "--window-overlap", "4", "--json")
    assert done.returncode == 0, done.stderr.decode()
    submission = json.loads(done.stdout)["id"]
    status = json.loads(run_cli(env, "status", submission, "--json").stdout)
    assert {key: status[key] for key in ("long_text", "window_overlap", "rows_whole", "rows_windowed", "windows",
                                         "rows_truncated")} == {"long_text": "truncate", "window_overlap": 4,
                                                                "rows_whole": 0, "rows_windowed": 0, "windows": 0,
                                                                "rows_truncated": 0}


@pytest.mark.slow
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_a_postgres_store_made_before_windows_is_migrated_when_opened(env):
    import psycopg

    vector = (np.array([1, 2, 3, 4]) / np.linalg.norm([1, 2, 3, 4])).astype(np.float32)
    with psycopg.connect(env.db, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        connection.execute("CREATE TABLE csvembed_meta(key text PRIMARY KEY, value text NOT NULL)")
        connection.execute("INSERT INTO csvembed_meta VALUES ('dimension', '4')")
        connection.execute("""
            CREATE TABLE csvembed_rows(collection text NOT NULL, id text NOT NULL, submission text NOT NULL,
                row_number bigint NOT NULL, text text NOT NULL, row jsonb NOT NULL, content_hash text NOT NULL,
                model text NOT NULL, stored_at timestamptz NOT NULL DEFAULT now(), embedding vector(4) NOT NULL,
                PRIMARY KEY (collection, id));
            CREATE INDEX csvembed_rows_embedding ON csvembed_rows USING hnsw (embedding vector_cosine_ops)""")
        connection.execute("INSERT INTO csvembed_rows(collection, id, submission, row_number, text, row, content_hash,"
                           " model, embedding) VALUES ('c', 'A', 's', 1, 'café au lait', '{}', 'h', 'm', %s::vector)",
                           (str(vector.tolist()),))
    store = open_store(env.db)
    try:
        assert store.counts() == (1, 1)
        [(row_id, _, text, _, spans, vectors)] = store.windows_of_submission("s")
        assert (row_id, text, spans) == ("A", "café au lait", [(0, 12)])
        np.testing.assert_allclose(vectors, vector[None], rtol=1e-6)
        [hit] = store.search(vector, 5)
        assert (hit.id, hit.match) == ("A", {"start": 0, "end": 12})
        assert store.connection.execute("SELECT to_regclass('csvembed_rows_embedding')").fetchone() == (None,)
    finally:
        store.close()


# --- the real model -----------------------------------------------------------------------------

FILLER = " ".join(
    ["Water the tomato seedlings every morning and mulch the beds with straw to keep the soil moist."] * 25)
NEEDLE = "The submarine surfaced at dawn and its periscope and sonar found the enemy convoy."
OTHERS = ["A sailing boat crossed the bay at dawn.", "The recipe needs two cups of flour.",
          "Stock markets fell sharply on Monday."]
QUERY = "a submarine found the enemy convoy with its sonar"


@pytest.mark.slow
@pytest.mark.parametrize("env", STORES, indirect=True)
def test_a_match_past_the_models_window_is_found_with_window_and_not_with_truncate(env, submit, drain, embedder):
    text = f"{FILLER} {NEEDLE}"
    at = text.index(NEEDLE)
    assert len(embedder.token_spans(text[:at])) > 2 * embedder.max_seq_length - 32  # past the second window
    path = write_csv(env.dir / "tickets.csv", "id,text\n" + "".join(
        f'{name},"{body}"\n' for name, body in [("long", text), *((f"o{i}", o) for i, o in enumerate(OTHERS))]))
    query = embedder.encode([QUERY])[0]
    hits = {}
    for policy in ("window", "truncate"):
        result = submit(path, id_column="id", text_columns=("text",), long_text=policy)
        assert result.enqueued == (4 if policy == "window" else 1)  # only the long row reads differently
        drain()
        store = open_store(env.db)
        try:
            hits[policy] = store.search(query, 1)
            [(spans, vectors)] = [(s, v) for row_id, *_, s, v in store.windows_of_submission(result.id)
                                  if row_id == "long"]
        finally:
            store.close()
        expected = [(0, 1210), (1055, 2263), (2117, len(text))] if policy == "window" else [(0, 1210)]
        assert spans == expected
        np.testing.assert_allclose(vectors, embedder.encode([text[a:b] for a, b in spans]), atol=1e-6)
        assert max(len(embedder.model.tokenizer(text[a:b])["input_ids"]) for a, b in spans) == 256
    [hit] = hits["window"]
    assert (hit.id, hit.match) == ("long", {"start": 2117, "end": len(text)})
    assert hit.match["start"] < at < at + len(NEEDLE) <= hit.match["end"]
    assert [hit.id for hit in hits["truncate"]] == ["o0"]


@pytest.mark.slow
def test_the_real_model_reads_every_word_of_a_row_spread_over_whitespace(env, submit, drain, embedder):
    # 150 one-token words 300 spaces apart: fewer tokens than MiniLM's window, over 45,000 characters, past the
    # 32,768 that its encode reads; it was stored as one window whose last third the model never read.
    text = (" " * 300).join(["alpha", "river", "stone", "cloud", "green"] * 30)
    assert len(embedder.token_spans(text)) == 150 < embedder.window_tokens and len(text) > embedder.text_cap
    result = submit(write_csv(env.dir / "spread.csv", f'id,text\nspread,"{text}"\n'), id_column="id",
                    text_columns=("text",))
    drain()
    store = open_store(env.db)
    try:
        [(spans, vectors)] = [(s, v) for *_, s, v in store.windows_of_submission(result.id)]
    finally:
        store.close()
    assert len(spans) == 2 and spans[0][0] == 0 and spans[-1][1] == len(text)
    for start, end in spans:  # every token of each window within what the model reads
        assert embedder.token_spans(text[start:end][: embedder.text_cap]) == embedder.token_spans(text[start:end])
    np.testing.assert_allclose(vectors, embedder.encode([text[a:b] for a, b in spans]), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("env", STORES, indirect=True)
def test_windowed_rows_survive_a_worker_kill_exactly_once(env, submit, embedder):
    import signal

    from rq.registry import StartedJobRegistry
    from test_crashes import start_worker, wait_for

    count = 60
    texts = {f"r{i}": f"row {i}: " + " ".join(f"ticket{i} line{j} says" for j in range(150)) for i in range(count)}
    path = write_csv(env.dir / "long.csv", "id,text\n" + "".join(f"{k},{v}\n" for k, v in texts.items()))
    result = submit(path, id_column="id", text_columns=("text",))
    records, started = SubmissionRecords(env.connection), StartedJobRegistry("csvembed", connection=env.connection)
    victim = start_worker(env, "--batch-size", "10")
    wait_for(lambda: records.snapshot(result.id).done >= 10 and started.count > 0, 180, "a batch in flight")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert records.snapshot(result.id).done < count
    survivor = start_worker(env, "--batch-size", "10")
    try:
        wait_for(lambda: records.snapshot(result.id).state == "done", 300, "all rows done")
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(60) == 0
    expected = {row_id: split(text, embedder.token_spans, embedder.window_tokens, 32, MAX_WINDOWS,
                              embedder.text_cap).spans for row_id, text in texts.items()}
    windows = sum(map(len, expected.values()))
    assert windows == 4 * count
    stored = stored_windows(env, result.id)
    assert {row_id: spans for row_id, (spans, _) in stored.items()} == expected
    assert store_counts(env) == (count, windows)  # no window without its row, none twice
    assert shape_counts(env, result.id) == (count, 0, 0, count, windows, 0)
