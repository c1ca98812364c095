"""The ``margin-monitor`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from monitor import __version__
from monitor.calc import parse_request, planned_trade, run_calc, run_pretrade
from monitor.errors import UserInputError
from monitor.render import calc_report, pretrade_report

if TYPE_CHECKING:
    from collections.abc import Sequence

    from monitor.config import LogFormat

#: Exit code for bad input (a file, a flag): the user must fix something.
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed for the docs and the tests."""
    parser = _Parser(prog="margin-monitor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    calc = commands.add_parser(
        "calc",
        help="what-if: margin ratio, liquidation and threshold prices of an account or a planned trade",
        description="Assess an account described in JSON (--input), or check a planned trade's stop-loss"
        " against its liquidation price (--symbol ... --stop-loss).",
    )
    calc.add_argument("--input", metavar="FILE", help="account description (JSON); - reads stdin")
    calc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    trade = calc.add_argument_group("pre-trade check (instead of --input)")
    trade.add_argument("--exchange", default="binanceusdm", help="formula family (default binanceusdm)")
    trade.add_argument("--symbol", help="BTCUSDT or BTC/USDT:USDT (bundled brackets)")
    trade.add_argument("--side", choices=["long", "short"])
    trade.add_argument("--entry", type=float, help="planned entry price")
    trade.add_argument("--size", type=float, help="position size in contracts (base units)")
    trade.add_argument("--leverage", type=float, help="leverage; sets the isolated margin")
    trade.add_argument("--stop-loss", type=float, help="planned stop-loss price")
    trade.add_argument("--wallet", type=float, help="cross wallet balance (implies --margin-mode cross)")
    trade.add_argument("--margin-mode", choices=["cross", "isolated"])

    run = commands.add_parser("run", help="run the daemon: poll every account and log its margin ratio")
    run.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")

    check = commands.add_parser("check-config", help="validate a configuration and read its secrets")
    check.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")

    status = commands.add_parser("status", help="poll every account once and print ratios and prices")
    status.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")

    demo = commands.add_parser(
        "demo", help="the simulated exchange with a crash, and the daemon watching it (no keys, no files)"
    )
    demo.add_argument("--tick", type=_positive, default=1.0, metavar="S", help="seconds per scenario step")
    demo.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")

    test_alert = commands.add_parser("test-alert", help="send one test alert through each channel")
    test_alert.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    test_alert.add_argument("--channel", metavar="NAME", help="only this channel")

    for verb, what in (("mute", "silence an account's alerts for a while"), ("unmute", "end a mute")):
        mute = commands.add_parser(verb, help=what)
        mute.add_argument("account", metavar="ACCOUNT")
        if verb == "mute":
            mute.add_argument(
                "--for", dest="duration", default="1h", metavar="DURATION", help="e.g. 30m, 2h (1h)"
            )
        mute.add_argument("--config", metavar="FILE", help="TOML configuration (for its state_dir)")
        _shard_flag(mute, "the shard whose state directory holds the mute")

    alerts = commands.add_parser("alerts", help="the alerts raised recently and where each delivery stands")
    alerts.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    alerts.add_argument("--since", default="24h", metavar="DURATION", help="how far back (24h)")
    alerts.add_argument("--account", metavar="ACCOUNT", help="only this account")
    alerts.add_argument("--json", action="store_true", help="print JSON instead of a table")

    for command, what in (
        (run, "watch only the accounts of shard I of N"),
        (check, "also list the accounts shard I of N takes"),
        (status, "poll only the accounts of shard I of N"),
        (alerts, "the shard whose alerts to show"),
    ):
        _shard_flag(command, what)

    sim = commands.add_parser("sim", help="run the simulated exchange alone, for a config to aim at")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--scenario", default="crash", help="crash, recovery, bleed or flat")
    sim.add_argument("--tick", type=_positive, default=1.0, metavar="S", help="seconds per scenario step")
    sim.add_argument("--accounts", type=int, default=0, metavar="N", help="extra bulk accounts")
    return parser


def _shard_flag(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--shard",
        metavar="I/N",
        help=f"{what} (default: $MARGIN_MONITOR_SHARD, or $MARGIN_MONITOR_SHARDS with the host name's"
        " -<ordinal>)",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {
        "calc": _calc,
        "run": _run,
        "check-config": _check_config,
        "status": _status,
        "demo": _demo,
        "sim": _sim,
        "test-alert": _test_alert,
        "mute": _mute,
        "unmute": _mute,
        "alerts": _alerts,
    }
    try:
        return commands[args.command](parser, args)
    except UserInputError as exc:
        print(f"{parser.prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE


#: Control characters (and Unicode line breaks) shown escaped: an error is one line whatever it quotes.
_CONTROL = {code: repr(chr(code))[1:-1] for code in (*range(32), 0x7F, 0x85, 0x2028, 0x2029)}


def one_line(message: str) -> str:
    """``message`` with newlines and other control characters escaped (a value from a file may hold them)."""
    return message.translate(_CONTROL)


def _calc(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    trade_flags = ("symbol", "side", "entry", "size", "leverage", "stop_loss")
    if args.input is None:
        given = [flag for flag in trade_flags if getattr(args, flag) is not None]
        if not given:
            parser.error(
                "calc needs --input FILE, or the pre-trade flags --symbol --side --entry --size"
                " --leverage --stop-loss"
            )
        missing = [f"--{flag.replace('_', '-')}" for flag in trade_flags if getattr(args, flag) is None]
        if missing:
            raise UserInputError(missing[0], "missing (the pre-trade check needs " + ", ".join(missing) + ")")
        trade = planned_trade(
            exchange=args.exchange,
            symbol=args.symbol,
            side=args.side,
            entry=args.entry,
            size=args.size,
            leverage=args.leverage,
            stop_loss=args.stop_loss,
            wallet=args.wallet,
            margin_mode=args.margin_mode,
        )
        document = run_pretrade(trade)
        print(json.dumps(document, indent=2) if args.json else pretrade_report(document))
        return 0
    request = parse_request(_load_json(args.input), source=args.input)
    document = run_calc(request)
    print(json.dumps(document, indent=2) if args.json else calc_report(document))
    return 0


def _run(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.service.app import run_command  # noqa: PLC0415 - keeps `calc` free of ccxt's import time

    return run_command(args.config, args.shard)


def _check_config(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.config import check_config, load_config  # noqa: PLC0415 - keeps `calc` free of ccxt's import time
    from monitor.sharding import shard_from  # noqa: PLC0415

    shard = shard_from(args.shard, os.environ)
    print(check_config(args.config))
    if shard is not None:
        # Every account was checked above, whichever shard it belongs to: each shard reads them all.
        names = [account.name for account in load_config(args.config).accounts]
        taken = shard.select(names)
        print(f"shard {shard} takes {len(taken)} of {len(names)} accounts: {', '.join(taken) or '(none)'}")
    return 0


def _status(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - only the network commands need the event loop

    from monitor.render import status_report  # noqa: PLC0415
    from monitor.service.app import load_with_credentials, status_once  # noqa: PLC0415
    from monitor.service.logs import configure_logging  # noqa: PLC0415
    from monitor.sharding import shard_from  # noqa: PLC0415

    config, credentials = load_with_credentials(args.config, shard_from(args.shard, os.environ))
    # Poll failures still log (to stderr here, so that stdout stays a clean table or document).
    configure_logging(config.daemon.log_format, stream=sys.stderr)
    documents = asyncio.run(status_once(config, credentials))
    print(json.dumps(documents, indent=2) if args.json else status_report(documents))
    return (
        0 if all(item["margin_ratio_pct"] is not None or item["error"] is None for item in documents) else 1
    )


def _demo(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.service.app import demo_command  # noqa: PLC0415

    log_format: LogFormat = args.log_format  # argparse restricted it to the three choices
    return demo_command(tick_s=args.tick, log_format=log_format)


def _sim(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.sim import run_standalone  # noqa: PLC0415

    run_standalone(
        host=args.host, port=args.port, scenario=args.scenario, tick_s=args.tick, bulk=args.accounts
    )
    return 0


def _test_alert(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.service.app import run_test_alert  # noqa: PLC0415

    return run_test_alert(args.config, args.channel)


def _mute(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.service.app import mute_command  # noqa: PLC0415

    unmute = args.command == "unmute"
    return mute_command(
        args.account, getattr(args, "duration", None), args.config, unmute=unmute, shard_flag=args.shard
    )


def _alerts(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from monitor.service.app import alerts_command  # noqa: PLC0415

    return alerts_command(args.config, args.since, args.account, as_json=args.json, shard_flag=args.shard)


def _load_json(name: str) -> object:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserInputError("--input", f"cannot read {name}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(
            "--input", f"{name} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
