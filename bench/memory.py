"""Resident memory and poll time of one daemon process polling 1, 100 and 1,000 simulated accounts.

Run: ``python bench/memory.py`` (``--quick`` for 1 and 100 accounts only).

For each account count, the simulated exchange runs in its own process (its memory is not counted)
and the daemon in a fresh child process, so every row starts from the same interpreter. The child
builds the real thing: configuration, ccxt clients (one per account, markets shared per exchange),
adapters and the daemon; it polls every account ``--rounds`` times and reports its resident set
(VmRSS, and the peak VmHWM) before the clients exist and after the last round.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status_mb(field: str) -> float:
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _child(url: str, accounts: int, rounds: int) -> dict[str, float]:
    from monitor.config import AccountConfig, AlertsConfig, Config, DaemonConfig  # noqa: PLC0415
    from monitor.exchanges.client import Credentials  # noqa: PLC0415
    from monitor.service.app import build_sources  # noqa: PLC0415
    from monitor.service.daemon import Daemon  # noqa: PLC0415
    from monitor.service.logs import configure_logging  # noqa: PLC0415

    configure_logging("json", stream=io.StringIO())  # the lines are not the point; keep them off stdout
    names = [f"sim-bulk-key-{index:06d}" for index in range(accounts)]
    config = Config(
        accounts=tuple(
            AccountConfig(name=f"acct{index}", exchange="binanceusdm", base_url=url, poll_interval_s=60)
            for index in range(accounts)
        ),
        alerts=AlertsConfig(),
        daemon=DaemonConfig(state_dir=Path("/tmp")),  # noqa: S108 - nothing is written
        path=Path("<bench>"),
    )
    credentials = {
        f"acct{index}": Credentials(api_key=key, secret=hashlib.sha256(key.encode()).hexdigest())
        for index, key in enumerate(names)
    }
    before = _status_mb("VmRSS")
    daemon = Daemon(config, build_sources(config, credentials), poll_timeout_s=600)
    started = time.perf_counter()
    round_s: list[float] = []
    try:
        for _ in range(rounds):
            begun = time.perf_counter()
            await daemon.poll_all()
            round_s.append(time.perf_counter() - begun)
        good = sum(1 for state in daemon.accounts.values() if state.assessment is not None)
        after = _status_mb("VmRSS")
    finally:
        await daemon.shutdown()
    return {
        "rss_before_mb": before,
        "rss_after_mb": after,
        "peak_mb": _status_mb("VmHWM"),
        "good": good,
        "first_round_s": round_s[0],
        "last_round_s": round_s[-1],
        "seconds": time.perf_counter() - started,
    }


def _start_sim(accounts: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "sim",
            "--port",
            "0",
            "--scenario",
            "flat",
            "--accounts",
            str(accounts),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None  # noqa: S101 - set by Popen above
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "http://127.0.0.1:" in line:
            return process, "http://" + line.split("http://", 1)[1].split()[0].rstrip(",;")
    process.kill()
    raise RuntimeError("the simulator did not start")


def _row(accounts: int, rounds: int) -> dict[str, float]:
    sim, url = _start_sim(accounts)
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", url, "--accounts", str(accounts), "--rounds", str(rounds)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 100 accounts only")
    parser.add_argument("--rounds", type=int, default=3, help="polls of every account")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--accounts", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.accounts, args.rounds))))
        return
    counts = (1, 100) if args.quick else (1, 100, 1_000)
    print(f"margin-monitor bench/memory.py  python {sys.version.split()[0]}  {args.rounds} poll rounds")
    print("one daemon process; the simulator runs in another; RSS = VmRSS, peak = VmHWM")
    header = (
        f"{'accounts':>8}  {'ok':>5}  {'RSS before MB':>13}  {'RSS after MB':>12}  {'peak MB':>8}"
        f"  {'MB/account':>10}  {'1st round s':>11}  {'last round s':>12}"
    )
    print(header)
    print("-" * len(header))
    for count in counts:
        row = _row(count, args.rounds)
        per = (row["rss_after_mb"] - row["rss_before_mb"]) / count
        print(
            f"{count:>8}  {int(row['good']):>5}  {row['rss_before_mb']:>13.1f}  {row['rss_after_mb']:>12.1f}"
            f"  {row['peak_mb']:>8.1f}  {per:>10.3f}  {row['first_round_s']:>11.2f}"
            f"  {row['last_round_s']:>12.2f}"
        )


if __name__ == "__main__":
    main()
