"""The unit files in ``systemd/``: what systemd itself makes of them (verify, security), and what they say.

``systemd-analyze verify`` checks that the binary in ``ExecStart=`` exists, so each unit is verified
as a copy whose ``/opt/margin-monitor/bin/margin-monitor`` points at the ``margin-monitor`` installed
in this environment; nothing else is changed. verify reports problems as warnings with exit code 0,
so its output must be empty. ``./dev test`` installs systemd-analyze when it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED = "/opt/margin-monitor/bin/margin-monitor"
#: What the unit files are checked as: the plain unit, and one instance of the template.
AS = {
    "margin-monitor.service": "margin-monitor.service",
    "margin-monitor@.service": "margin-monitor@eu.service",
}
MAX_EXPOSURE = 2.0


def analyze() -> str:
    """The path of systemd-analyze (a failing test says how to install it)."""
    found = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
    )
    if found is None:
        pytest.fail("systemd-analyze is missing: `./dev test` installs it, or apt-get install systemd")
    return found


def entry_point() -> Path:
    """The ``margin-monitor`` script of this environment."""
    script = Path(sys.executable).parent / "margin-monitor"
    assert script.exists(), f"{script} missing: install the project (pip install -e .)"
    return script


def directives(text: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given, over all sections (comments and blank lines skipped)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze with ``args`` in ``cwd``."""
    return subprocess.run(
        [analyze(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def installed_copy(tmp_path: Path) -> Path:
    """Both units in ``tmp_path``, ``ExecStart=`` pointing at this environment's margin-monitor."""
    script = str(entry_point())
    for name in AS:
        text = (UNITS / name).read_text(encoding="utf-8")
        assert INSTALLED in text
        (tmp_path / name).write_text(text.replace(INSTALLED, script), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", sorted(AS))
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    """Run verify: exit 0 and not a single warning (unknown keys, bad values, missing binaries)."""
    done = run(["verify", AS[name]], installed_copy(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).strip() == ""


def test_verify_reports_what_it_finds(tmp_path: Path) -> None:
    """The check above can fail: verify prints a warning for an unknown key and a bad value."""
    bad = (
        (UNITS / "margin-monitor.service").read_text(encoding="utf-8").replace(INSTALLED, str(entry_point()))
    )
    bad = bad.replace("Restart=on-failure", "Restart=sometimes\nWatchdogSecs=60s")
    (tmp_path / "margin-monitor.service").write_text(bad, encoding="utf-8")
    done = run(["verify", "margin-monitor.service"], tmp_path)
    assert "WatchdogSecs" in done.stderr
    assert "sometimes" in done.stderr


@pytest.mark.parametrize("name", sorted(AS))
def test_units_score_2_or_better_in_systemd_analyze_security(tmp_path: Path, name: str) -> None:
    """Run security --offline=true: an overall exposure of 2.0 or less (lower is safer)."""
    done = run(["security", "--offline=true", "--no-pager", AS[name]], installed_copy(tmp_path))
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout
    assert float(match[1]) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("name", sorted(AS))
def test_units_say_what_the_daemon_needs(name: str) -> None:
    """Notify with the watchdog, restarts, a dynamic user with state and config dirs, credentials, reload."""
    found = directives((UNITS / name).read_text(encoding="utf-8"))
    assert found["Type"] == ["notify"]
    assert found["NotifyAccess"] == ["main"]
    assert found["Restart"] == ["on-failure"]
    assert found["DynamicUser"] == ["yes"]
    assert found["WatchdogSec"] == ["60s"]
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert found["ConfigurationDirectory"] == ["margin-monitor"]
    assert found["StateDirectory"] == [
        "margin-monitor" if name == "margin-monitor.service" else "margin-monitor/%i"
    ]
    assert found["LoadCredential"] == ["margin-monitor:/etc/credstore/margin-monitor"]
    (start,) = found["ExecStart"]
    assert start.startswith(f"{INSTALLED} run --config ")
    if name == "margin-monitor@.service":
        # The instance names its config, which NAME.env may replace (with a shard: MARGIN_MONITOR_SHARD).
        assert start.endswith("--config ${MARGIN_MONITOR_CONFIG}")
        assert found["Environment"][0] == "MARGIN_MONITOR_CONFIG=%E/margin-monitor/%i.toml"
        assert found["EnvironmentFile"] == ["-%E/margin-monitor/%i.env"]
    else:
        assert start.endswith("--config %E/margin-monitor/margin-monitor.toml")
