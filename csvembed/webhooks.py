"""Webhooks (--notify): one POST of a finished submission's status JSON, delivered off the embedding path.

The script that writes a submission's last outcome claims its notification and puts it in the due
set (submissions.py), so exactly one round is claimed however many workers finish rows at once. A
Deliverer (a thread in each worker; `csvembed serve` may run one too) takes a due entry with a lease:
the script that takes it also moves its score LEASE seconds ahead, so no other deliverer takes it
meanwhile, and if its deliverer dies the entry is simply due again when the lease lapses. A 2xx
records notified_at and removes it; anything else (a 3xx too: redirects are not followed) records the
error and moves it ahead by the backoff, until NOTIFY_GIVE_UP seconds after the claim.

Delivery is at least once: a deliverer that dies after the POST but before recording it leaves the
entry to be sent again, with the same X-Csvembed-Delivery id, which receivers can deduplicate on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import redis

from csvembed import defaults
from csvembed.errors import InputError
from csvembed.figures import lines
from csvembed.monitor import Monitor
from csvembed.redact import mask_secrets, mask_url
from csvembed.submissions import NOTIFY_DUE_KEY, record_key

log = logging.getLogger(__name__)

ENV_SECRET = "CSVEMBED_WEBHOOK_SECRET"
SCHEMES = ("http", "https")
SIGNATURE_HEADER = "X-Csvembed-Signature"
SUBMISSION_HEADER = "X-Csvembed-Submission"
DELIVERY_HEADER = "X-Csvembed-Delivery"

# The first due entry (score <= ARGV[1]), leased for ARGV[2] seconds: {id, url, round, claimed at,
# attempts}; {id} alone for an entry dropped because its claim is gone (deleted, or released by retry).
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)[1]
if not due then return false end
local record = ARGV[3] .. due
if redis.call('HEXISTS', record, 'notify_claimed') == 0 then
  redis.call('ZREM', KEYS[1], due)
  return {due}
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due)
redis.call('HINCRBY', record, 'notify_attempts', 1)
return {due, unpack(redis.call('HMGET', record, 'notify', 'notify_round', 'notify_claimed', 'notify_attempts'))}
"""

# An attempt's outcome, written only while its round is the record's and not yet delivered: a late
# deliverer (whose lease lapsed) must not reschedule what another delivered, nor touch a newer round.
# KEYS: the due set, the record. ARGV: id, round, outcome (delivered|retry|given_up), time, error, next try.
_RECORD = """
if redis.call('HGET', KEYS[2], 'notify_round') ~= ARGV[2] or redis.call('HEXISTS', KEYS[2], 'notify_claimed') == 0
   or redis.call('HEXISTS', KEYS[2], 'notified_at') == 1 then return 0 end
if ARGV[3] == 'delivered' then
  redis.call('HSET', KEYS[2], 'notified_at', ARGV[4])
  redis.call('HDEL', KEYS[2], 'notify_error', 'notify_next_at')
  redis.call('ZREM', KEYS[1], ARGV[1])
elseif ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], 'notify_error', ARGV[5], 'notify_next_at', ARGV[6])
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'notify_error', ARGV[5], 'notify_given_up', ARGV[4])
  redis.call('HDEL', KEYS[2], 'notify_next_at')
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""


def check_url(url: str) -> str:
    """The URL if a webhook may be sent to it (http or https, with a host); InputError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme.lower() in SCHEMES and bool(parts.hostname)
    except ValueError:  # an unclosed [IPv6 bracket
        usable = False
    if not usable:
        raise InputError(f"--notify must be an http:// or https:// URL, not {mask_url(url)!r}")
    return url


def signature(secret: str, body: bytes) -> str:
    """The X-Csvembed-Signature value: HMAC-SHA256 of the raw body, keyed by the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a hop: following it could carry the signed body to another host."""

    def redirect_request(self, *args, **kwargs) -> None:
        return None


class _Deadline:
    """Shuts the sockets of one POST when its time is up: a socket timeout restarts at every byte, so a
    target that drips its answer a byte at a time would otherwise hold the deliverer for ever."""

    current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _Deadline.current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _Deadline.current.deadline = None

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
        if self.expired:
            self._expire()

    def _expire(self) -> None:
        self.expired = True
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _watched_connection(address, *args, **kwargs) -> socket.socket:
    sock = socket.create_connection(address, *args, **kwargs)
    deadline = getattr(_Deadline.current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched_connection


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _watched_connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


_OPENER = urllib.request.build_opener(_NoRedirects, _HTTPHandler, _HTTPSHandler)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    """POST the body; None on a 2xx, otherwise why not in one line (the URL masked).

    A user and password in the URL are sent as Basic authentication, as browsers and curl do (urllib
    would take them for part of the host name).
    """
    parts = urllib.parse.urlsplit(url)
    target = url
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers = {**headers, "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
        target = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    deadline = _Deadline(timeout)
    try:
        with deadline, _OPENER.open(request, timeout=timeout):
            return None  # the status line said 2xx: the body, if any, is not waited for
    except urllib.error.HTTPError as exc:
        why = f"HTTP {exc.code}" + (" (redirects are not followed)" if 300 <= exc.code < 400 else "")
    except urllib.error.URLError as exc:
        why = str(exc.reason)
    except Exception as exc:  # a timeout while reading, a broken response: any of them is a failed attempt
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if deadline.expired:  # whatever broke, it broke because the time was up
        return f"no complete answer within {timeout:g} s"
    return mask_secrets(" ".join(why.replace(url, mask_url(url)).split()))[:300]


@dataclass
class Delivery:
    """A due notification a deliverer holds: where to, which round, and which attempt this is."""

    submission_id: str
    url: str
    round: str
    claimed_at: float
    attempts: int

    @property
    def delivery_id(self) -> str:
        return f"{self.submission_id}.{self.round}"


class Deliverer:
    """Delivers due webhooks: `start()` runs it on a daemon thread; `run_once()` delivers what is due now.

    The secret (CSVEMBED_WEBHOOK_SECRET by default) belongs to whoever delivers: workers and the server.
    """

    def __init__(self, connection: redis.Redis, *, secret: str | None = None, timeout: float = defaults.NOTIFY_TIMEOUT,
                 lease: float = defaults.NOTIFY_LEASE, backoff: float = defaults.NOTIFY_BACKOFF_BASE,
                 backoff_cap: float = defaults.NOTIFY_BACKOFF_CAP, give_up: float = defaults.NOTIFY_GIVE_UP,
                 poll_interval: float = defaults.NOTIFY_POLL_INTERVAL) -> None:
        self.connection = connection
        self.secret = secret if secret is not None else os.environ.get(ENV_SECRET) or None
        self.timeout, self.lease = timeout, lease
        self.backoff, self.backoff_cap, self.give_up = backoff, backoff_cap, give_up
        self.poll_interval = poll_interval
        self.monitor = Monitor(connection)
        self._take_due = connection.register_script(_TAKE_DUE)
        self._record = connection.register_script(_RECORD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Deliverer:
        self._thread = threading.Thread(target=self._loop, name="csvembed-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling; a POST in flight is left to finish (or to its lease) rather than waited for."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.poll_interval)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.run_once()
            except redis.RedisError as exc:  # Redis away: the worker says so; the next poll retries
                log.debug("webhooks: %s", exc)
            except Exception as exc:  # one masked line: a traceback could show a URL's credentials
                log.warning("webhook delivery failed: %s: %s", type(exc).__name__, mask_secrets(str(exc)))

    def run_once(self) -> int:
        """Deliver every notification due now, one attempt each; how many were attempted."""
        attempted = 0
        while not self._stop.is_set() and (delivery := self._take()) is not None:
            self._deliver(delivery)
            attempted += 1
        return attempted

    def _take(self) -> Delivery | None:
        """The next due delivery, leased to us; None when none is due (entries whose claim is gone are dropped)."""
        while (taken := self._take_due(keys=[NOTIFY_DUE_KEY], args=[time.time(), self.lease, record_key("")])):
            if len(taken) > 1 and taken[1] is not None:
                submission_id, url, round_, claimed_at, attempts = (value.decode() for value in taken)
                return Delivery(submission_id, url, round_, float(claimed_at), int(attempts))
        return None

    def _deliver(self, delivery: Delivery) -> None:
        found = lines(self.monitor.read([delivery.submission_id]), time.time())
        if not found:  # deleted since it was taken: its entry went with it
            return
        body = json.dumps(found[0].as_json()).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "csvembed-webhook",
                   SUBMISSION_HEADER: delivery.submission_id, DELIVERY_HEADER: delivery.delivery_id}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        error = post(delivery.url, body, headers, self.timeout)
        now = time.time()
        if error is None:
            self._write(delivery, "delivered", now)
            return
        next_at = now + min(self.backoff * 2 ** (delivery.attempts - 1), self.backoff_cap)
        outcome = "given_up" if next_at > delivery.claimed_at + self.give_up else "retry"
        log.warning("webhook for %s to %s failed (attempt %d%s): %s", delivery.submission_id, mask_url(delivery.url),
                    delivery.attempts, ", given up" if outcome == "given_up" else "", error)
        self._write(delivery, outcome, now, error, next_at)

    def _write(self, delivery: Delivery, outcome: str, at: float, error: str = "", next_at: float = 0.0) -> None:
        self._record(keys=[NOTIFY_DUE_KEY, record_key(delivery.submission_id)],
                     args=[delivery.submission_id, delivery.round, outcome, at, error, next_at])
