"""A real Mosquitto for tests: started on a free 127.0.0.1 port with its own config, stopped after.

Load it as a plugin from a test module (``pytest_plugins = ["mosquitto"]``; ``tests/`` is on
``sys.path`` under pytest's default rootdir import mode) and ask for a fixture:

- ``mosquitto``: anonymous access, one broker per test (retained messages never leak between tests);
- ``mosquitto_auth``: a password file (``mosquitto_passwd``) with ``AUTH_USER``/``AUTH_PASSWORD``,
  anonymous access refused;
- ``mosquitto_tls``: a TLS listener with a certificate for ``127.0.0.1`` signed by a fresh CA
  (``broker.ca_file``; ``make_ca`` makes another, for a client that must not trust it);
- ``mosquitto_tls_auth``: both, TLS and the password file;
- ``mosquitto_factory``: ``mosquitto_factory(users=..., tls=...)`` for anything else.

``broker.stop()`` / ``broker.start()`` / ``broker.restart()`` take the broker down and bring it
back on the same port, for reconnect tests. The system broker on 1883 is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

HOST = "127.0.0.1"
AUTH_USER = "monitor"
AUTH_PASSWORD = "s3cret-for-tests"  # noqa: S105 - a throwaway password for a broker that lives one test

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


CA_CERT = "ca.crt"
CA_KEY = "ca.key"


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "margin-monitor test CA") -> Path:
    """A fresh CA (``ca.crt``, ``ca.key``) in ``directory``; returns the certificate's path."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(directory / CA_KEY), "-out", str(directory / CA_CERT),
    )  # fmt: skip
    return directory / CA_CERT


def make_server_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A server certificate for ``host`` (an IP address) signed by ``directory``'s CA: (cert, key)."""
    key, request, certificate = (directory / name for name in ("server.key", "server.csr", "server.crt"))
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        encoding="utf-8",
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={host}",
        "-keyout",
        str(key),
        "-out",
        str(request),
    )
    _openssl(
        "x509", "-req", "-in", str(request),
        "-CA", str(directory / CA_CERT), "-CAkey", str(directory / CA_KEY), "-CAcreateserial",
        "-days", "2", "-extfile", str(extensions), "-out", str(certificate),
    )  # fmt: skip
    return certificate, key


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class BrokerError(RuntimeError):
    """Mosquitto would not start or stop; the message carries the tail of its log."""


@dataclass
class MosquittoBroker:
    """One Mosquitto process, its config and log in ``directory``, always on the same ``port``."""

    directory: Path
    port: int = field(default_factory=free_port)
    users: Mapping[str, str] | None = None
    tls: bool = False
    host: str = HOST
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self.directory / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        """Where the broker's log goes (read it when a test fails)."""
        return self.directory / "mosquitto.log"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients trust for the TLS listener (it signed the server's, for 127.0.0.1)."""
        return self.directory / CA_CERT

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def write_config(self) -> None:
        """Write the config (and the password file and certificate it names) into ``directory``."""
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root, Mosquitto drops to the "mosquitto" user, which cannot read a 0700 tmp dir.
            lines.append("user root")
        if self.users:
            passwords = self.directory / "passwords"
            for index, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if index == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, *create, "-b", str(passwords), user, password],
                    check=True,
                    capture_output=True,
                )
            passwords.chmod(0o600)
            lines.append(f"password_file {passwords}")
        if self.tls:
            make_ca(self.directory)
            certificate, key = make_server_certificate(self.directory, self.host)
            lines += [f"certfile {certificate}", f"keyfile {key}"]
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the broker and return once it accepts TCP connections on ``port``."""
        if self.running:
            return
        if not self.config_file.exists():
            self.write_config()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait until the port is free again."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same config (retained state is lost)."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the broker's log."""
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


class BrokerFactory(Protocol):
    """The ``mosquitto_factory`` fixture: start a broker with these options."""

    def __call__(self, *, users: Mapping[str, str] | None = None, tls: bool = False) -> MosquittoBroker:
        """A started broker, stopped when the test ends."""
        ...


@pytest.fixture
def mosquitto_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Start brokers on demand; every one is stopped when the test ends."""
    brokers: list[MosquittoBroker] = []

    def start(*, users: Mapping[str, str] | None = None, tls: bool = False) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"), users=users, tls=tls)
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """An anonymous broker on a free port, for this test only."""
    return mosquitto_factory()


@pytest.fixture
def mosquitto_auth(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """A broker that only lets in ``AUTH_USER`` with ``AUTH_PASSWORD``."""
    return mosquitto_factory(users={AUTH_USER: AUTH_PASSWORD})


@pytest.fixture
def mosquitto_tls(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """An anonymous broker behind TLS; trust ``broker.ca_file``."""
    return mosquitto_factory(tls=True)


@pytest.fixture
def mosquitto_tls_auth(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """A TLS broker that only lets in ``AUTH_USER`` with ``AUTH_PASSWORD``; trust ``broker.ca_file``."""
    return mosquitto_factory(users={AUTH_USER: AUTH_PASSWORD}, tls=True)
