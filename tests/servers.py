"""Start and stop real redis-server processes on free loopback ports, for tests and tools."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS redis-server: its certificate and key, and the CA that signed it."""

    ca: Path
    cert: Path
    key: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server child process bound to 127.0.0.1."""

    port: int
    directory: Path
    extra: tuple[str, ...] = ()
    auth: tuple[str, str] | None = None  # (username, password) for the start-up ping
    tls: TLSFiles | None = None  # serve TLS only, on ``port``
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: the README's test command installs it")
        if self.tls is None:
            args = [binary, "--port", str(self.port)]
        else:
            args = [
                binary,
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
            ]
            args += ["--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca)]
            args += ["--tls-auth-clients", "optional"]
        args += ["--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no", *self.extra]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        username, password = self.auth or (None, None)
        tls = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        client = redis.Redis(
            port=self.port, username=username, password=password, socket_connect_timeout=0.2, **tls
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
            finally:
                client.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL, as a crash would (a cluster node keeps its nodes.conf for a restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def log_to(folder: Path) -> tuple[str, ...]:
    """redis-server options that append its log to ``folder``/redis.log (a failover's story:
    who was promoted, and which replica had to resync from it)."""
    return ("--logfile", str(folder / "redis.log"))


@dataclass
class SentinelGroup:
    """A master with replicas and Sentinels watching it, each a redis-server on a free
    loopback port: what ``redis+sentinel://`` URLs are tested against, failovers included."""

    directory: Path
    service: str = "mymaster"
    replicas: int = 2
    sentinels: int = 3
    down_after_ms: int = 1000
    servers: list[RedisServer] | None = None
    sentinel_ports: list[int] | None = None
    sentinel_procs: list[subprocess.Popen[bytes]] | None = None

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        """Start every server; on any failure stop those already started, then raise."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> SentinelGroup:
        folder = self._folder("master")
        master = RedisServer(free_port(), folder, log_to(folder)).start()
        self.servers = [master]
        for n in range(self.replicas):
            folder = self._folder(f"replica{n}")
            replica = RedisServer(
                free_port(), folder, (*log_to(folder), "--replicaof", "127.0.0.1", str(master.port))
            )
            self.servers.append(replica.start())
        self.sentinel_ports, self.sentinel_procs = [], []
        binary = shutil.which("redis-server")
        assert binary is not None
        for n in range(self.sentinels):
            port = free_port()
            config = self._folder(f"sentinel{n}") / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {config.parent}\n"
                f"logfile {config.parent / 'sentinel.log'}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
            proc = subprocess.Popen(
                [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.sentinel_ports.append(port)
            self.sentinel_procs.append(proc)
        deadline = time.monotonic() + timeout
        while not self._ready():  # every Sentinel knows the master and its replicas
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinels did not come up")
            time.sleep(0.05)
        return self

    def url(self, database: int = 0) -> str:
        assert self.sentinel_ports is not None
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/{database}"

    def master_port(self) -> int:
        """The port of the master the Sentinels name now."""
        assert self.sentinel_ports is not None
        for port in self.sentinel_ports:
            try:
                client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
                _, master = client.sentinel_get_master_addr_by_name(self.service)
                client.close()
                return int(master)
            except (redis.RedisError, TypeError, ValueError):
                continue
        raise RuntimeError("no Sentinel answered")

    def server(self, port: int) -> RedisServer:
        assert self.servers is not None
        return next(s for s in self.servers if s.port == port)

    def _ready(self) -> bool:
        assert self.sentinel_ports is not None
        for port in self.sentinel_ports:
            try:
                client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
                fields = client.sentinel_master(self.service)  # parsed: names to numbers
                client.close()
            except redis.RedisError:
                return False
            if fields["num-slaves"] < self.replicas or fields["num-other-sentinels"] < self.sentinels - 1:
                return False
        return True

    def _folder(self, name: str) -> Path:
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def stop(self) -> None:
        for proc in self.sentinel_procs or []:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for server in self.servers or []:
            server.stop()


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (10000 above it) is free too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


@dataclass
class RedisClusterGroup:
    """A Redis Cluster of ``masters`` redis-servers (``--cluster-enabled yes``) on free loopback
    ports, with ``replicas`` replicas each, joined by ``redis-cli --cluster create``: what
    ``redis+cluster://`` is tested on, and what the chaos harness fails over."""

    directory: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 2000
    servers: list[RedisServer] | None = None

    def start(self, timeout: float = 30.0) -> RedisClusterGroup:
        """Start and join every node, and return once every node says the cluster is ok and
        every replica is in sync with its master; on any failure stop those already
        started, then raise."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> RedisClusterGroup:
        self.servers = []
        for n in range(self.masters * (1 + self.replicas)):
            folder = self.directory / f"node{n}"
            folder.mkdir(parents=True, exist_ok=True)
            node = RedisServer(
                cluster_port(),
                folder,
                (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                ),
            )  # fmt: skip
            self.servers.append(node.start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: the README's test command installs it")
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float) -> None:
        """Wait (bounded) until every running node has every slot served, knows every node
        and says ok, and every replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not come up")
            time.sleep(0.05)  # a readiness probe: nothing to wait on but the nodes' answers

    def _ready(self) -> bool:
        running = [s for s in self.servers or [] if s.running]
        for server in running:
            client = redis.Redis(port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                info = client.cluster("INFO")
                role = client.info("replication")
            except redis.RedisError:
                return False
            finally:
                client.close()
            fields = {str(name): str(value) for name, value in dict(info).items()}  # parsed by redis-py
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != "16384":
                return False
            if fields.get("cluster_known_nodes") != str(len(self.servers or [])):
                return False
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def url(self) -> str:
        assert self.servers is not None
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def masters_now(self) -> dict[int, list[tuple[int, int]]]:
        """The masters serving slots now, as the first running node to answer sees them:
        each one's port and its slot ranges (inclusive)."""
        for server in self.servers or []:
            if not server.running:
                continue
            client = redis.Redis(port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                reply = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            finally:
                client.close()
            masters: dict[int, list[tuple[int, int]]] = {}
            for start, end, master, *_ in reply:  # each: first slot, last slot, [host, port, id], replicas
                masters.setdefault(int(master[1]), []).append((int(start), int(end)))
            return masters
        raise RuntimeError("no cluster node answered")

    def server(self, port: int) -> RedisServer:
        assert self.servers is not None
        return next(s for s in self.servers if s.port == port)

    def stop(self) -> None:
        for server in self.servers or []:
            server.stop()
