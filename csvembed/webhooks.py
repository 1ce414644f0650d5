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

A submission made over HTTP (`csvembed serve`, unless --allow-private-webhooks) records notify_public_only:
its webhook may reach public addresses only, or anyone holding the server's token could make every
deliverer's host send requests into its private network (cloud metadata, loopback services) and read from
notify_error which ports answer. Every deliverer enforces it as it connects: the host name is resolved,
only its public addresses are connected to, and a host with none is refused before any packet is sent to
it, given up at once with the same one line whatever listens there. Checking the address connected to,
not the URL, is what stops a name that resolves to a public address at submit and a private one later.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.client
import ipaddress
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
# attempts, public only (1 or nil)}; {id} alone for an entry dropped because its claim is gone (deleted, or
# released by retry).
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
return {due, unpack(redis.call('HMGET', record, 'notify', 'notify_round', 'notify_claimed', 'notify_attempts',
                                                  'notify_public_only'))}
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


# The one reason a refused delivery records: the same whether or not anything listens there, so that
# notify_error tells nothing about the private network.
NOT_PUBLIC = "refused: the webhook's host has no public address (submissions made over HTTP notify public ones only)"
# IPv6 prefixes whose last 32 bits are an IPv4 address packets may be delivered to: NAT64 (RFC 6052) and
# the deprecated IPv4-compatible form. (IPv4-mapped and 6to4 addresses have ipaddress properties.)
_CARRIES_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
# Kinds of address that are never public; is_global alone lets multicast, reserved and site-local through.
_NOT_PUBLIC_KINDS = ("is_private", "is_loopback", "is_link_local", "is_multicast", "is_reserved", "is_unspecified",
                     "is_site_local")


class PrivateTarget(InputError):
    """A submission that may notify public addresses only named a host that is not one (HTTP 422)."""


class NotPublic(OSError):
    """Raised instead of connecting to a host that has no public address: retrying will never help."""


def is_public(address: str) -> bool:
    """Whether a webhook limited to public addresses may connect to this IP address: a global unicast one.

    An IPv6 address that stands for an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by that IPv4 address:
    ::ffff:127.0.0.1 reaches loopback as surely as 127.0.0.1 does.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped or ip.sixtofour:
            ip = ip.ipv4_mapped or ip.sixtofour
        elif any(ip in prefix for prefix in _CARRIES_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not any(getattr(ip, kind, False) for kind in _NOT_PUBLIC_KINDS)


def check_url(url: str, public_only: bool = False) -> str:
    """The URL if a webhook may be sent to it (http or https, with a host); InputError otherwise.

    With public_only, a host that is plainly not public (an IP literal that is not, or localhost) is
    refused now, as an early error; a host name is judged by its addresses at delivery, the real guard.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme.lower() in SCHEMES and bool(parts.hostname)
    except ValueError:  # an unclosed [IPv6 bracket
        usable = False
    if not usable:
        raise InputError(f"--notify must be an http:// or https:// URL, not {mask_url(url)!r}")
    try:
        port = parts.port
    except ValueError:  # past 65535, or not a number: otherwise found only at delivery, retried for an hour
        port = 0
    if port == 0:
        raise InputError(f"--notify must name a port from 1 to 65535, not {mask_url(url)!r}")
    if public_only and _plainly_private(parts.hostname):
        raise PrivateTarget(f"notify: {parts.hostname} is not a public address, and submissions made over HTTP"
                            " notify public addresses only")
    return url


def _plainly_private(host: str) -> bool:
    """Whether a URL's host (lowercased, brackets removed) is localhost or an IP literal that is not public."""
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # loopback by definition (RFC 6761)
        return True
    try:
        return not is_public(name)
    except ValueError:  # a host name: its addresses are checked as it is connected to
        return False


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


def _public_connection(address: tuple[str, int], *args, **kwargs) -> socket.socket:
    """socket.create_connection to the host's public addresses only, by number: the address checked is the
    address connected to, so a name that resolves differently a moment later (DNS rebinding) gains nothing."""
    host, port = address
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    public = [ip for ip in dict.fromkeys(info[4][0] for info in found) if is_public(ip)]
    if not public:
        raise NotPublic(NOT_PUBLIC)
    errors: list[OSError] = []
    for ip in public:  # the next address if one fails, as create_connection does
        try:
            return socket.create_connection((ip, port), *args, **kwargs)
        except OSError as exc:
            errors.append(exc)
    raise errors[-1]


def _watched_connection(address, *args, public_only: bool = False, **kwargs) -> socket.socket:
    sock = (_public_connection if public_only else socket.create_connection)(address, *args, **kwargs)
    deadline = getattr(_Deadline.current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _Watched:
    """Connects through _watched_connection (HTTPS wraps that socket in TLS for the URL's own host name)."""

    def __init__(self, *args, public_only: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_watched_connection, public_only=public_only)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, public_only: bool) -> None:
        super().__init__()
        self.public_only = public_only

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req, public_only=self.public_only)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, public_only: bool) -> None:
        super().__init__()
        self.public_only = public_only

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context, public_only=self.public_only)


# A webhook limited to public addresses never goes through a proxy from the environment: the address
# checked must be the one connected to, and a proxy would connect wherever the URL says.
_OPENERS = {
    False: urllib.request.build_opener(_NoRedirects, _HTTPHandler(False), _HTTPSHandler(False)),
    True: urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects, _HTTPHandler(True),
                                      _HTTPSHandler(True)),
}


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, public_only: bool = False) -> str | None:
    """POST the body; None on a 2xx, otherwise why not in one line (the URL masked).

    A user and password in the URL are sent as Basic authentication, as browsers and curl do (urllib
    would take them for part of the host name). With public_only, NotPublic is raised, before anything is
    sent, when the host has no public address.
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
        with deadline, _OPENERS[public_only].open(request, timeout=timeout):
            return None  # the status line said 2xx: the body, if any, is not waited for
    except urllib.error.HTTPError as exc:
        why = f"HTTP {exc.code}" + (" (redirects are not followed)" if 300 <= exc.code < 400 else "")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, NotPublic):
            raise exc.reason from None
        why = str(exc.reason)
    except Exception as exc:  # a timeout while reading, a broken response: any of them is a failed attempt
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if deadline.expired:  # whatever broke, it broke because the time was up
        return f"no complete answer within {timeout:g} s"
    return mask_secrets(" ".join(why.replace(url, mask_url(url)).split()))[:300]


@dataclass
class Delivery:
    """A due notification a deliverer holds: where to (and whether to public addresses only), which round,
    and which attempt this is."""

    submission_id: str
    url: str
    round: str
    claimed_at: float
    attempts: int
    public_only: bool = False

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
                submission_id, url, round_, claimed_at, attempts = (value.decode() for value in taken[:5])
                public_only = len(taken) > 5 and taken[5] == b"1"
                return Delivery(submission_id, url, round_, float(claimed_at), int(attempts), public_only)
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
        try:
            error, refused = post(delivery.url, body, headers, self.timeout, delivery.public_only), False
        except NotPublic as exc:  # nothing was sent, and nothing ever will be: given up at once
            error, refused = str(exc), True
        now = time.time()
        if error is None:
            self._write(delivery, "delivered", now)
            return
        next_at = now + min(self.backoff * 2 ** (delivery.attempts - 1), self.backoff_cap)
        outcome = "given_up" if refused or next_at > delivery.claimed_at + self.give_up else "retry"
        log.warning("webhook for %s to %s failed (attempt %d%s): %s", delivery.submission_id, mask_url(delivery.url),
                    delivery.attempts, ", given up" if outcome == "given_up" else "", error)
        self._write(delivery, outcome, now, error, next_at)

    def _write(self, delivery: Delivery, outcome: str, at: float, error: str = "", next_at: float = 0.0) -> None:
        self._record(keys=[NOTIFY_DUE_KEY, record_key(delivery.submission_id)],
                     args=[delivery.submission_id, delivery.round, outcome, at, error, next_at])
