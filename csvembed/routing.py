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


def check_name(option: str, name: str | None) -> None:
    """Refuse a collection or queue name with a NUL: PostgreSQL text cannot hold one. A shell cannot pass
    one, but HTTP and the library can; submit and the worker both refuse it here."""
    if name and "\x00" in name:
        raise InputError(f"{option} {name!r} holds a NUL character, which a name cannot")


def model_queue(queue: str, model_id: str) -> str:
    """The queue that carries `queue`'s rows of `model_id`: `queue` itself for the default model, else
    `queue@<model's last path part>-<8 hex digits of its hash>`. An empty name is refused: rows on it would be
    listed, counted and served under a blank; so is a name with a NUL (check_name)."""
    if not queue.strip():
        raise InputError("--queue must name a queue, not be empty")
    check_name("--queue", queue)
    if model_id == defaults.MODEL_NAME:
        return queue
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", PurePosixPath(model_id).name or model_id)[:SLUG_LENGTH]
    digest = hashlib.blake2b(model_id.encode(), digest_size=4).hexdigest()
    return f"{queue}@{slug}-{digest}"
