"""Secrets never reach a screen or a log: passwords in Redis and PostgreSQL URLs are masked.

Every message that may hold a URL (ours, or one a library wrote, such as psycopg's) passes through
`mask_secrets` before it is printed or logged.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host or scheme://:password@host. The password runs to the first @ that is
# followed by a host (no further @ before a space or the end), so an unescaped @ inside it is masked too,
# and so is a space or tab: redis-py takes `redis://:pa ss@host` as the password "pa ss".
_KEYS = "(?:password|pass|pwd|passwd|sslpassword|ssl_password|pgpassword)="
# It never runs into a query that holds a password (`redis://h:1/0?password=a@b` is no user:password@host):
# that one is _PARAM's, after which this runs again.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):"
                       rf"(?P<password>(?:(?!\?(?:[^\s@]*?&)?(?i:{_KEYS}))[^\n])*?)@(?=[^@\s]*(?:\s|$))")
# ?password=... or &password=... in a query string (?ssl_password=: redis-py's TLS key passphrase), libpq's key=value
# form (password=...) and PGPASSWORD=....
# A value already masked stays as it is: masking twice must not eat what follows it.
_PARAM = re.compile(rf"(?P<key>(?:[?&]|\b){_KEYS})(?P<value>\*\*\*(?=[&\s:]|$)|'[^']*'|[^&\s]*)", re.IGNORECASE)

# A value in a URL's query string, up to the next parameter or the fragment.
_QUERY_VALUE = re.compile(r"=[^&#]*")


def mask_secrets(text: str) -> str:
    """The text with every password in a URL or connection string replaced by ***."""
    # User passwords first: one may hold `pass=`, which _PARAM would cut it at. Then again after the query
    # passwords: `redis://u:x@h/0?password=a@b` reads as user:password@host only once `a@b` is masked.
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
    return _USERINFO.sub(_mask_userinfo, text)


def _mask_userinfo(found: re.Match[str]) -> str:
    return f"{found['scheme']}{found['user']}:{MASK}@"


def mask_url(url: str) -> str:
    """A URL as shown: any user or password in it, and every value of its query, replaced by *** (a webhook's
    user alone may be its token, and receivers often take their secret as ?token= or ?key=)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in (authority := rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]):
        url = f"{scheme}://{MASK}@{rest[len(authority.rsplit('@', 1)[0]) + 1:]}"
    base, question, query = url.partition("?")
    if question:
        url = f"{base}?{_QUERY_VALUE.sub(f'={MASK}', query)}"
    return mask_secrets(url)
