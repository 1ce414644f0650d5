"""A database password never reaches the screen, however it is written: in the userinfo (even with an @),
as ?password=, in a libpq conninfo string or as PGPASSWORD=."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from csvembed.cli import app
from csvembed.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from csvembed.redact import mask_secrets

SECRET = "Sw0rdf1sh"

CASES = {  # --db as written -> (exit code, what stderr must hold)
    f"postgresql://u:p@{SECRET}@127.0.0.1:1/db": (EXIT_UNAVAILABLE, "the store postgresql://u:***@127.0.0.1:1/db:"),
    f"postgresql://u@127.0.0.1:1/db?password={SECRET}&sslmode=disable":
        (EXIT_UNAVAILABLE, "the store postgresql://u@127.0.0.1:1/db?password=***&sslmode=disable:"),
    f"postgresql:///db?host=127.0.0.1&port=1&password={SECRET}":
        (EXIT_UNAVAILABLE, "postgresql:///db?host=127.0.0.1&port=1&password=***:"),
    f"host=127.0.0.1 port=1 password={SECRET} dbname=db":
        (EXIT_BAD_INPUT, "host=127.0.0.1 port=1 password=*** dbname=db"),
}


@pytest.mark.parametrize("db", list(CASES))
def test_a_store_password_never_shows_in_a_failed_command(db, env):
    code, shown = CASES[db]
    result = CliRunner().invoke(app, ["--db", db, "search", "anything"], prog_name="csvembed")
    assert result.exit_code == code
    assert SECRET not in result.output and SECRET not in result.stderr
    assert shown in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_every_form_of_password_is_masked():
    assert mask_secrets(f"PGPASSWORD={SECRET} psql") == "PGPASSWORD=*** psql"
    assert mask_secrets(f"password='{SECRET} x' host=h") == "password=*** host=h"
    assert mask_secrets(f"postgresql://u:a@b@{SECRET}@h/db") == "postgresql://u:***@h/db"
    assert mask_secrets(f"at redis://:pa {SECRET}@h:1/0: refused") == "at redis://:***@h:1/0: refused"
    assert mask_secrets(f"redis://u:a@h1 and redis://u:{SECRET}\t@h2 x") == "redis://u:***@h1 and redis://u:***@h2 x"


def test_a_redis_tls_key_passphrase_is_masked():
    # redis-py's rediss:// takes the client key's passphrase as ?ssl_password=; "cannot reach Redis at" showed it.
    assert (mask_secrets(f"at rediss://h:1/0?ssl_keyfile=k.pem&ssl_password={SECRET} refused")
            == "at rediss://h:1/0?ssl_keyfile=k.pem&ssl_password=*** refused")


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
def test_a_password_in_a_query_string_with_an_at_sign_is_masked_whole(scheme):
    # The host's colon and the @ in the password read as a user:password@host, which showed the password's tail.
    assert mask_secrets(f"at {scheme}://h:1/0?password=ab@{SECRET} x") == f"at {scheme}://h:1/0?password=*** x"
    assert mask_secrets(f"{scheme}://u:{SECRET}@h:1/0?password=ab@{SECRET}") == f"{scheme}://u:***@h:1/0?password=***"


@pytest.mark.parametrize("password", [f"a-pass={SECRET}", f"Xy9!pwd={SECRET}", f"{SECRET}.password=x9", "p&password=q"])
def test_a_password_holding_a_key_such_as_pass_is_masked_whole(password):
    # Masking ?pass= style keys first cut such a password at its "pass=": what came before showed, and the host went.
    assert mask_secrets(f"at redis://u:{password}@h:1/0: refused") == "at redis://u:***@h:1/0: refused"


@pytest.mark.parametrize("url", [f"redis://:pa {SECRET}@127.0.0.1:1/0", f"redis://u:pa\t{SECRET}@127.0.0.1:1/0"])
def test_a_redis_password_with_a_space_never_shows(url):
    # redis-py reads the password as written, space and all; the error must not show it.
    result = CliRunner().invoke(app, ["--redis-url", url, "status"], prog_name="csvembed")
    assert (result.exit_code, result.stdout) == (EXIT_UNAVAILABLE, "")
    assert SECRET not in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("csvembed: error: cannot reach Redis at redis://")
