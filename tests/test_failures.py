"""Transient failures are retried up to the limit, then listed; `retry` brings rows back with exact counts."""

from __future__ import annotations

import json

import apsw
import pytest

from conftest import STORES, run_cli, write_csv
from csvembed import defaults
from csvembed.store import Store, open_store
from csvembed.submissions import SubmissionRecords

pytestmark = [pytest.mark.parametrize("env", STORES, indirect=True), pytest.mark.slow]


class FaultyStoreDouble:
    """Test double: the real store, but its first `failures` writes fail with a transient fault of the store
    (not an outage: a locked or unreachable store is waited out, see test_store_outage.py)."""

    def __init__(self, real: Store, failures: int) -> None:
        self.real, self.failures_left, self.attempts = real, failures, 0

    def write(self, rows, vectors):
        self.attempts += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            raise apsw.IOError("disk I/O error")
        return self.real.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_retried_to_the_limit_then_listed_then_retried_after_the_fix(env, submit, drain):
    path = write_csv(env.dir / "f.csv", "id,text\nx1,a row that will be unlucky\n")
    result = submit(path, id_column="id", text_columns=("text",))
    faulty = FaultyStoreDouble(open_store(env.db), failures=100)
    drain(store=faulty)
    assert faulty.attempts == 1 + defaults.MAX_RETRIES  # the first try and every retry
    records = SubmissionRecords(env.connection)
    snapshot = records.snapshot(result.id)
    assert (snapshot.state, snapshot.done, snapshot.failed, snapshot.pending) == ("failed", 0, 1, 0)

    listed = run_cli(env, "failures", result.id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"row_number": 1, "id": "x1", "reason": "IOError: disk I/O error",
                                         "permanent": False}]
    waited = run_cli(env, "status", result.id, "--wait")
    assert waited.returncode == 1

    retried = run_cli(env, "retry", result.id, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"requeued": [1], "expired": [], "skipped": []}
    snapshot = records.snapshot(result.id)
    assert (snapshot.state, snapshot.done, snapshot.failed, snapshot.pending) == ("running", 0, 0, 1)

    fixed = FaultyStoreDouble(open_store(env.db), failures=1)  # one more transient error, then it works
    drain(store=fixed)
    assert fixed.attempts == 2
    snapshot = records.snapshot(result.id)
    assert (snapshot.state, snapshot.done, snapshot.failed, snapshot.pending) == ("done", 1, 0, 0)
    assert records.failures(result.id) == []
    assert run_cli(env, "status", result.id, "--wait").returncode == 0
    assert open_store(env.db).counts() == (1, 1)
