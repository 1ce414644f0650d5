"""When the store cannot be reached: the worker keeps its rows and waits, instead of failing them.

An unreachable store is not the rows' fault. Failing them spent every row's retries within seconds
of a PostgreSQL restart (436 rows failed in 9 s of a 20 s outage), so a write that fails because the
server is gone, restarting or out of connections, or because SQLite stayed locked past its busy
timeout, is tried again with backoff until it succeeds. The worker keeps the rows alive in Redis
meanwhile (worker.py). An error about the rows themselves (a value PostgreSQL refuses, a row too big
for an index) is never waited out: it would never succeed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator

from csvembed import defaults
from csvembed.errors import ServiceUnavailable
from csvembed.redact import mask_secrets

log = logging.getLogger(__name__)

# PostgreSQL error classes that say the server, not the statement, is the problem: connection
# exceptions, insufficient resources (disk full, out of memory, too many connections), and the server
# shutting down or not yet accepting connections. Client-side connection failures carry no SQLSTATE.
_SERVER_SQLSTATES = ("08", "53", "57P")


class StopWaiting(BaseException):
    """A stop was asked for while the store was unreachable: nothing of the batch was written.

    A BaseException, like KeyboardInterrupt: it ends the wait, and no handler of row errors may take it
    for a failure of the rows.
    """


def unreachable_reason(error: BaseException) -> str | None:
    """Why the store cannot be used right now, masked and on one line; None if the error is not that.

    The stores wrap a failed (re)connect in ServiceUnavailable `from None`, which hides the driver's
    error from tracebacks but keeps it as __context__: that is what tells an outage from a bad --db.
    """
    driver_error = error.__context__ if isinstance(error, ServiceUnavailable) else error
    if driver_error is None or not _is_outage(driver_error):
        return None
    lines = str(error).strip().splitlines()
    return mask_secrets(lines[0] if lines else type(error).__name__)


def _is_outage(error: BaseException) -> bool:
    # Only drivers already imported can have raised: psycopg is imported for PostgreSQL URLs alone.
    apsw, psycopg = sys.modules.get("apsw"), sys.modules.get("psycopg")
    if apsw is not None and isinstance(error, (apsw.BusyError, apsw.CantOpenError)):
        return True
    if psycopg is not None and isinstance(error, psycopg.OperationalError):
        state = getattr(error, "sqlstate", None)
        return state is None or state.startswith(_SERVER_SQLSTATES)
    return False


def backoff() -> Iterator[float]:
    """Seconds to wait before each next try: STORE_RETRY_BASE doubling up to STORE_RETRY_CAP."""
    delay = defaults.STORE_RETRY_BASE
    while True:
        yield delay
        delay = min(delay * 2, defaults.STORE_RETRY_CAP)


def sleep_unless(stopping: Callable[[], bool], seconds: float) -> bool:
    """Sleep up to `seconds`, in short steps so that a stop is seen within STOP_POLL; whether it was asked for.

    Polled, not an Event: a signal handler that sets an Event can deadlock on the Event's own lock.
    """
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, defaults.STOP_POLL))
    return True


def open_when_reachable(open_store: Callable[[], object]) -> object:
    """The store opened, waiting (with a message) for as long as it is unreachable.

    For a long-lived worker: it is a service, and a store restarting when it starts must not end it.
    SIGTERM still stops it at once here (no handler is installed yet, and it holds no rows).
    """
    delays = backoff()
    while True:
        try:
            return open_store()
        except ServiceUnavailable as exc:
            reason = unreachable_reason(exc)
            if reason is None:
                raise
            log.warning("store unavailable: %s; waiting", reason)
            time.sleep(next(delays))


class PatientStore:
    """The worker's store: a write that fails because the store is unreachable is retried, not failed.

    `wait(reason, seconds)` runs between tries (it says so, and raises StopWaiting when the worker is
    asked to stop); `resumed()` runs once a write succeeded after waiting. Everything else is the
    store's own.
    """

    def __init__(self, store, wait: Callable[[str, float], None], resumed: Callable[[], None]) -> None:
        self.store = store
        self._wait = wait
        self._resumed = resumed

    def write(self, rows, vectors) -> None:
        delays = backoff()
        waited = False
        while True:
            try:
                self.store.write(rows, vectors)
            except Exception as exc:
                reason = unreachable_reason(exc)
                if reason is None:
                    raise
                self._wait(reason, next(delays))
                waited = True
                continue
            if waited:
                self._resumed()
            return

    def __getattr__(self, name: str):
        return getattr(self.store, name)
