"""Log lines for journald: a syslog priority prefix (``<4>`` for a warning) when stdout is the journal."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import TYPE_CHECKING

import pytest
import structlog
from monitor.service.logs import (
    PRIORITY_ENV,
    REDACTOR,
    THIRD_PARTY_LOGGERS,
    configure_logging,
    syslog_priority,
    under_journal,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "journal-test-secret-never-logged"  # noqa: S105 - a made-up key


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """A fresh structlog, root logger and redactor for each test, put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    REDACTOR.set_secrets(())


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (5, 7),
    ],
)
def test_levels_map_to_syslog_priorities(levelno: int, priority: int) -> None:
    """sd-daemon(3): debug 7, info 6, warning 4, error 3, critical 2."""
    assert syslog_priority(levelno) == priority


def test_the_journal_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    """JOURNAL_STREAM must name this very stream; a redirected one (another file) gets plain lines."""
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "other").open("w") as other:
        info = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert under_journal(journal, environ)
        assert not under_journal(other, environ)
        assert not under_journal(journal, {})
        assert not under_journal(journal, {"JOURNAL_STREAM": "garbage"})
        assert not under_journal(io.StringIO(), environ)  # no file descriptor
        # The override, both ways.
        assert under_journal(other, {PRIORITY_ENV: "1"})
        assert not under_journal(journal, {**environ, PRIORITY_ENV: "0"})


def test_lines_carry_their_priority_in_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our events and third-party records alike: ``<N>`` then the JSON line, redacted as ever."""
    path = tmp_path / "journal"
    with path.open("w") as journal:
        info = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        monkeypatch.delenv(PRIORITY_ENV, raising=False)
        configure_logging("json", stream=journal, secrets=[SECRET])
        log = structlog.get_logger("margin_monitor.test")
        log.info("account.assessed", level="critical", key=SECRET)
        log.warning("account.blind")
        log.error("config.reload_refused")
        try:
            fail()
        except RuntimeError:
            log.exception("alerts.failed")
        logging.getLogger("aiohttp").warning("Unclosed client session")
        journal.flush()
    text = path.read_text(encoding="utf-8")
    assert SECRET not in text
    lines = text.splitlines()
    found = [re.match(r"<(\d)>(\{.*)", line) for line in lines]
    assert all(match is not None for match in found), lines
    pairs = [(int(match[1]), json.loads(match[2])) for match in found if match is not None]
    assert [(priority, doc["event"]) for priority, doc in pairs] == [
        (6, "account.assessed"),
        (4, "account.blind"),
        (3, "config.reload_refused"),
        (3, "alerts.failed"),
        (4, "Unclosed client session"),
    ]
    assert pairs[0][1]["level"] == "critical"  # the risk level is untouched; the priority is the severity


def fail() -> None:
    """Raise an error whose text holds the secret."""
    raise RuntimeError(SECRET)


def test_a_redirected_stream_gets_plain_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``> file`` under systemd (JOURNAL_STREAM set for another stream): no prefix, plain JSON for jq."""
    with (tmp_path / "journal").open("w") as journal:
        info = os.fstat(journal.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    monkeypatch.delenv(PRIORITY_ENV, raising=False)
    path = tmp_path / "margin-monitor.log"
    with path.open("w") as redirected:
        configure_logging("json", stream=redirected)
        structlog.get_logger("margin_monitor.test").warning("account.blind")
        redirected.flush()
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["event"] == "account.blind"
