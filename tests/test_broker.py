"""The embedded default: with no Redis URL, csvembed starts one redis-server and every command finds it."""

from __future__ import annotations

import json
import os

import pytest
import redis

from conftest import run_cli, write_csv
from csvembed.broker import local_socket, stop_local_redis
from csvembed.settings import Settings

pytestmark = pytest.mark.slow  # CLI subprocesses


def test_commands_share_one_embedded_redis_with_aof(env, tmp_path):
    home = tmp_path / "home"
    env.redis_url = ""  # no URL configured: the embedded server is used
    path = write_csv(tmp_path / "tiny.csv", "id,text\n1,hello there\n")
    try:
        submitted = run_cli(env, "submit", str(path))
        assert submitted.returncode == 0, submitted.stderr
        submission_id = submitted.stdout.decode().strip()
        socket_path = local_socket(home / "redis")
        assert socket_path.exists()
        connection = redis.Redis(unix_socket_path=str(socket_path))
        assert connection.config_get("appendonly") == {"appendonly": "yes"}
        assert connection.llen("rq:queue:csvembed") == 1
        pid = int((home / "redis" / "redis.pid").read_text())

        status = run_cli(env, "status", submission_id, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pending"] == 1
        assert int((home / "redis" / "redis.pid").read_text()) == pid  # reused, not started again
    finally:
        assert stop_local_redis(Settings(home=home, db=env.db, model="", redis_url=None))
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
