"""Redis of the dev stack: password, loopback, no persistence (its data is thrown away all the time)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.config import REDIS_PORT_ENV, START_TIMEOUT
from devstack.daemon import Daemon
from devstack.packages import find_redis_server
from devstack.process import StackError, check_port_free, read_pid, run, stop_pid, tail, wait_for, write_private

if TYPE_CHECKING:
    import redis as redis_lib

    from devstack.stack import DevStack


class RedisServer(Daemon):
    name = "redis"
    label = "Redis"

    def __init__(self, stack: DevStack) -> None:
        super().__init__(stack)
        self._client: redis_lib.Redis | None = None

    @property
    def port(self) -> int:
        return self.stack.redis_port

    @property
    def data_dir(self) -> Path:
        return self.stack.base_dir / "redis"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)

    def pid(self) -> int | None:
        return read_pid(self.pid_file, "redis-server")

    def _write_conf(self) -> Path:
        conf = self.data_dir / "redis.conf"
        text = "\n".join(
            [
                "# written by devstack/redis.py on every start",
                f"bind {self.stack.host}",
                f"port {self.port}",
                "protected-mode yes",
                f"requirepass {self.stack.passwords['redis']}",
                "daemonize yes",
                f"pidfile {self.pid_file}",
                f"logfile {self.log_file}",
                f"dir {self.data_dir}",
                "appendonly no",
                'save ""',
                "databases 16",
                "loglevel notice",
            ]
        )
        write_private(conf, text + "\n")
        return conf

    def start(self) -> None:
        with self.stack.locked():
            self.stack.prepare()
            if self.pid() is None:
                binary = find_redis_server()
                if binary is None:
                    raise StackError("redis-server is not installed; call ensure_packages() first")
                check_port_free(self.port, REDIS_PORT_ENV)
                conf = self._write_conf()
                self.pid_file.unlink(missing_ok=True)
                result = run([binary, str(conf)], cwd=self.data_dir, check=False)
                if result.returncode != 0:
                    raise StackError(
                        f"redis-server did not start: {result.stdout.strip()}\n"
                        f"--- {self.log_file} ---\n{tail(self.log_file)}"
                    )
                self.stack.started.add(self.name)
            self._client = None
            wait_for("Redis", self.answers, START_TIMEOUT, self.log_file)

    def answers(self) -> bool:
        if self.pid() is None:
            raise StackError("redis-server process is not running")
        return bool(self.client().ping())

    def client(self) -> redis_lib.Redis:
        """A client for this Redis (kept and reused)."""
        if self._client is None:
            import redis as redis_lib

            # retry=None: redis-py's default retries would add seconds to
            # every failed poll while a server is starting.
            self._client = redis_lib.Redis.from_url(
                self.stack.redis_url, socket_timeout=3, socket_connect_timeout=3, retry=None
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stop(self) -> None:
        with self.stack.locked():
            self.close()
            # `save ""`: SIGTERM shuts down at once without writing a dump.
            stop_pid(self.label, self.pid(), signal.SIGTERM)
            self.pid_file.unlink(missing_ok=True)
            self.stack.started.discard(self.name)
