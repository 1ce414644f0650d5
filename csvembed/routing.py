"""Which queue a submission's rows go on: one queue per model, so that a worker embeds only rows of its own model.

A store holds one vector space: a row embedded by another model than the one its submission named would
sit among vectors it cannot be compared with. So submit and worker derive the queue from the model id
(the model, plus +int8 under that precision): rows of a model no live worker serves stay queued until
one starts. The default model keeps the plain name (`csvembed`), so its queue is what it always was.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

from csvembed import defaults
from csvembed.errors import InputError

# The readable part of a model's queue name; the hash makes it unique (two paths ending in the same name).
SLUG_LENGTH = 40


# C0 controls, DEL and C1 controls (\x9b starts an escape sequence on its own in many terminals).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(option: str, name: str | None) -> None:
    """Refuse a collection or queue name with a control character; submit and the worker both refuse it here.

    PostgreSQL text cannot hold a NUL. Any other would reach every terminal that lists the name (list,
    status, workers): an escape sequence from a token holder's upload could rewrite a user's screen, and a
    line break splits a line that scripts read. A shell passes them with $'...', and HTTP and the library can.
    """
    if name and (found := CONTROL_CHARACTERS.search(name)):
        what = "a NUL character" if found.group() == "\x00" else "a control character"
        raise InputError(f"{option} {name!r} holds {what}, which a name cannot")


def model_queue(queue: str, model_id: str) -> str:
    """The queue that carries `queue`'s rows of `model_id`: `queue` itself for the default model, else
    `queue@<model's last path part>-<8 hex digits of its hash>`. An empty name is refused: rows on it would be
    listed, counted and served under a blank; so is a name with a control character (check_name)."""
    if not queue.strip():
        raise InputError("--queue must name a queue, not be empty")
    check_name("--queue", queue)
    if model_id == defaults.MODEL_NAME:
        return queue
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", PurePosixPath(model_id).name or model_id)[:SLUG_LENGTH]
    digest = hashlib.blake2b(model_id.encode(), digest_size=4).hexdigest()
    return f"{queue}@{slug}-{digest}"
