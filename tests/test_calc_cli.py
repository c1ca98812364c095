"""`margin-monitor calc`: the engine's public contract, from a JSON file or flags to a report."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from monitor.cli import EXIT_USAGE, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "calc-example.json"

# Binance's FAQ worked example ("How to calculate the liquidation price of USD-M futures"), with
# brackets that put BTC at 2.5% / cum 16,300 and ETH at 10% / cum 135,365, as the FAQ states.
BTC_TIERS = [
    {"min_notional": 0, "max_notional": 50_000, "maintenance_margin_rate": 0.004},
    {"min_notional": 50_000, "max_notional": 250_000, "maintenance_margin_rate": 0.005},
    {"min_notional": 250_000, "max_notional": 1_000_000, "maintenance_margin_rate": 0.01},
    {"min_notional": 1_000_000, "max_notional": 10_000_000, "maintenance_margin_rate": 0.025},
    {"min_notional": 10_000_000, "max_notional": 20_000_000, "maintenance_margin_rate": 0.05},
]
ETH_TIERS = [
    {"min_notional": 0, "max_notional": 10_000, "maintenance_margin_rate": 0.005},
    {"min_notional": 10_000, "max_notional": 100_000, "maintenance_margin_rate": 0.0065},
    {"min_notional": 100_000, "max_notional": 500_000, "maintenance_margin_rate": 0.01},
    {"min_notional": 500_000, "max_notional": 1_000_000, "maintenance_margin_rate": 0.02},
    {"min_notional": 1_000_000, "max_notional": 2_000_000, "maintenance_margin_rate": 0.05},
    {"min_notional": 2_000_000, "max_notional": 10_000_000, "maintenance_margin_rate": 0.1},
    {"min_notional": 10_000_000, "max_notional": 20_000_000, "maintenance_margin_rate": 0.125},
]
FAQ: dict[str, Any] = {
    "exchange": "binanceusdm",
    "wallet_balance": 1_535_443.01,
    "positions": [
        {
            "symbol": "BTCUSDT",
            "side": "long",
            "contracts": 109.488,
            "entry_price": 32_481.98,
            "mark_price": 31_967.27,
            "tiers": BTC_TIERS,
        },
        {
            "symbol": "ETHUSDT",
            "side": "long",
            "contracts": 3_683.979,
            "entry_price": 1_456.84,
            "mark_price": 1_335.18,
            "tiers": ETH_TIERS,
        },
    ],
}


def run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], document: object) -> dict[str, Any]:
    """Run ``calc --json`` on ``document`` and return the decoded result."""
    path = tmp_path / "account.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert main(["calc", "--input", str(path), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def run_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], document: object) -> str:
    """Run ``calc`` on a bad ``document``; check exit code 2, no output, one error line; return it."""
    path = tmp_path / "account.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    assert main(["calc", "--input", str(path)]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_faq_example_gives_binance_liquidation_prices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The FAQ account's cross liquidation prices come out to the cent: BTC 26,316.89, ETH 1,153.26."""
    result = run_json(tmp_path, capsys, FAQ)
    btc, eth = result["positions"]
    assert round(btc["liquidation_price"], 2) == 26_316.89
    assert round(eth["liquidation_price"], 2) == 1_153.26
    assert btc["tier"] == 4
    assert btc["maintenance_amount"] == pytest.approx(16_300)
    assert eth["maintenance_amount"] == pytest.approx(135_365)
    assert result["maintenance_margin"] == pytest.approx(71_200.811444 + 356_512.508122, rel=1e-12)


def test_json_output_has_the_documented_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every key the README documents is present, thresholds keyed by their percent as a string."""
    result = run_json(tmp_path, capsys, FAQ)
    assert {"margin_balance", "maintenance_margin", "margin_ratio_pct", "level", "positions"} <= result.keys()
    position = result["positions"][0]
    assert {
        "symbol",
        "side",
        "margin_mode",
        "notional",
        "tier",
        "maintenance_margin_rate",
        "maintenance_amount",
        "maintenance_margin",
        "unrealized_pnl",
        "liquidation_price",
        "threshold_prices",
        "margin_ratio_pct",
    } <= position.keys()
    assert list(position["threshold_prices"]) == ["150", "130", "120"]
    assert position["margin_ratio_pct"] is None  # cross: the account's ratio is the one that counts
    assert result["margin_ratio_pct"] == pytest.approx(
        result["margin_balance"] / result["maintenance_margin"] * 100, rel=1e-12
    )


def test_positions_keep_input_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Positions come back in the order they were given."""
    document = copy.deepcopy(FAQ)
    document["positions"].reverse()
    result = run_json(tmp_path, capsys, document)
    assert [item["symbol"] for item in result["positions"]] == ["ETHUSDT", "BTCUSDT"]


def test_custom_thresholds_are_keyed_as_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A threshold of 137.5% is keyed "137.5"; a threshold no price reaches is null."""
    document = copy.deepcopy(FAQ)
    document["thresholds_pct"] = [400, 137.5]
    result = run_json(tmp_path, capsys, document)
    prices = result["positions"][0]["threshold_prices"]
    assert list(prices) == ["400", "137.5"]
    assert prices["137.5"] > result["positions"][0]["liquidation_price"]


def test_isolated_position_reports_its_own_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An isolated position has its own ratio, level and margin to add; the account covers cross only."""
    document = copy.deepcopy(FAQ)
    eth = document["positions"][1]
    eth.update(margin_mode="isolated", isolated_wallet=1_535_443.01)
    result = run_json(tmp_path, capsys, document)
    isolated = result["positions"][1]
    assert round(isolated["liquidation_price"], 2) == 1_114.78
    expected_ratio = (1_535_443.01 + 3_683.979 * (1_335.18 - 1_456.84)) / (
        3_683.979 * 1_335.18 * 0.1 - 135_365
    )
    assert isolated["margin_ratio_pct"] == pytest.approx(expected_ratio * 100, rel=1e-12)
    assert isolated["close_fraction"] is None
    assert result["maintenance_margin"] == pytest.approx(71_200.811444, rel=1e-9)


def test_margin_to_add_reaches_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Adding the suggested margin to the wallet brings the ratio to the target exactly."""
    document = copy.deepcopy(FAQ)
    document["target_ratio_pct"] = 300
    first = run_json(tmp_path, capsys, document)
    document["wallet_balance"] += first["margin_to_add"]
    second = run_json(tmp_path, capsys, document)
    assert second["margin_ratio_pct"] == pytest.approx(300, rel=1e-12)
    assert second["margin_to_add"] == pytest.approx(0, abs=1e-6)


def test_bundled_brackets_serve_positions_without_tiers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Binance BTC position without tiers uses the bundled brackets (0.4% below 50,000 notional)."""
    document = {
        "exchange": "binanceusdm",
        "wallet_balance": 1_000,
        "positions": [
            {
                "symbol": "BTC/USDT:USDT",
                "side": "long",
                "contracts": 0.4,
                "entry_price": 100_000,
                "mark_price": 100_000,
            }
        ],
    }
    position = run_json(tmp_path, capsys, document)["positions"][0]
    assert position["tier"] == 1
    assert position["maintenance_margin_rate"] == 0.004
    assert position["maintenance_margin"] == pytest.approx(160)


def test_empty_account_has_no_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No positions: no maintenance margin, a null ratio, level ok, nothing to add."""
    result = run_json(tmp_path, capsys, {"exchange": "okx", "wallet_balance": 0, "positions": []})
    assert result["margin_ratio_pct"] is None
    assert result["level"] == "ok"
    assert result["margin_to_add"] is None


def test_reported_figures_give_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the exchange's own totals given, the drift of ours against theirs is reported in percent."""
    document = copy.deepcopy(FAQ)
    document["exchange_maintenance_margin"] = 427_713.319566 / 1.01
    result = run_json(tmp_path, capsys, document)
    assert result["drift_pct"]["maintenance_margin"] == pytest.approx(1.0, rel=1e-9)
    assert result["drift_pct"]["margin_balance"] is None


def test_example_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled example (the README's demo) prints the account and a row per position."""
    assert main(["calc", "--input", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "margin ratio" in out
    for symbol in ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"):
        assert symbol in out
    assert "(warning)" in out


def test_stdin_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--input -`` reads the account from standard input."""
    monkeypatch.setattr(sys, "stdin", _Stdin(json.dumps(FAQ)))
    assert main(["calc", "--input", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["level"] == "ok"


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text


def _with(path: list[object], value: object) -> dict[str, Any]:
    """FAQ with the value at ``path`` replaced (or deleted when ``value`` is ``_DELETE``)."""
    document = copy.deepcopy(FAQ)
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


_DELETE = object()

BAD_INPUTS = [
    ("missing-exchange", _with(["exchange"], _DELETE), "exchange: missing"),
    ("unknown-exchange", _with(["exchange"], "ftx"), "exchange: unknown exchange 'ftx'"),
    ("missing-positions", _with(["positions"], _DELETE), "positions: missing"),
    ("missing-wallet", _with(["wallet_balance"], _DELETE), "wallet_balance: missing"),
    ("wallet-not-number", _with(["wallet_balance"], "lots"), "wallet_balance: must be a number"),
    ("wallet-bool", _with(["wallet_balance"], True), "wallet_balance: must be a number, got a boolean"),
    ("missing-entry", _with(["positions", 0, "entry_price"], _DELETE), "positions[0].entry_price: missing"),
    ("negative-size", _with(["positions", 1, "contracts"], -3), "positions[1].contracts: must be >= 0"),
    ("zero-mark", _with(["positions", 0, "mark_price"], 0), "positions[0].mark_price: must be > 0"),
    ("bad-side", _with(["positions", 0, "side"], "buy"), "positions[0].side: must be 'long' or 'short'"),
    ("positions-not-list", _with(["positions"], {}), "positions: must be a list, got an object"),
    ("position-not-object", _with(["positions", 0], 5), "positions[0]: must be an object"),
    ("unknown-key", _with(["positions", 0, "leverage"], 20), "positions[0].leverage: unknown key"),
    (
        "unsorted-tiers",
        _with(["positions", 0, "tiers"], [BTC_TIERS[1], BTC_TIERS[0]]),
        "positions[0].tiers[0].min_notional: the first tier must start at 0",
    ),
    (
        "gapped-tiers",
        _with(["positions", 0, "tiers"], [BTC_TIERS[0], BTC_TIERS[2]]),
        "positions[0].tiers[1].min_notional: must equal the previous tier's cap",
    ),
    (
        "rate-above-one",
        _with(["positions", 1, "tiers", 2, "maintenance_margin_rate"], 1.5),
        "positions[1].tiers[2].maintenance_margin_rate: must be between 0 and 1",
    ),
    (
        "missing-rate",
        _with(["positions", 1, "tiers", 2, "maintenance_margin_rate"], _DELETE),
        "positions[1].tiers[2].maintenance_margin_rate: missing",
    ),
    (
        "nan-rate",
        _with(["positions", 1, "tiers", 2, "maintenance_margin_rate"], "nan"),
        "must be a finite number",
    ),
    (
        "thresholds-ascending",
        _with(["thresholds_pct"], [120, 130]),
        "thresholds_pct[1]: must be below thresholds_pct[0]",
    ),
    ("threshold-at-100", _with(["thresholds_pct"], [150, 100]), "thresholds_pct[1]: must be above 100%"),
    (
        "isolated-without-wallet",
        _with(["positions", 0, "margin_mode"], "isolated"),
        "positions[0].isolated_wallet: missing",
    ),
    (
        "cross-with-wallet",
        _with(["positions", 0, "isolated_wallet"], 10),
        "positions[0].isolated_wallet: only isolated positions",
    ),
    (
        "duplicate-position",
        _with(["positions", 1], copy.deepcopy(FAQ["positions"][0])),
        "positions[1]: a second long position in BTCUSDT",
    ),
    (
        "no-bundled-tiers",
        _with(["positions", 0, "tiers"], _DELETE) | {"exchange": "bybit"},
        "positions[0].tiers: missing (bundled brackets exist only for binanceusdm",
    ),
    ("top-not-object", [1, 2], "input: must be an object, got a list"),
    ("not-json", "{'exchange': 'okx'", "--input: "),
]


@pytest.mark.parametrize(
    ("document", "message"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], document: object, message: str
) -> None:
    """Bad input: exit code 2 and a single line that names the field at fault, no traceback."""
    line = run_bad(tmp_path, capsys, document)
    assert line.startswith("margin-monitor: error: ")
    assert message in line


def test_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A file that cannot be read is named in the one error line."""
    assert main(["calc", "--input", str(tmp_path / "nope.json")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nope.json" in err


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    """Run as a program, a bad file exits 2 with one line on stderr and nothing on stdout."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_with(["positions", 0, "contracts"], -1)), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "calc", "--input", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"margin-monitor: error: {path}: positions[0].contracts: must be >= 0, got -1"
    ]


# --- the pre-trade flags ---------------------------------------------------------------------------

TRADE = ["calc", "--symbol", "BTCUSDT", "--side", "long", "--entry", "95000", "--size", "0.5"]


def test_pretrade_stop_before_liquidation(capsys: pytest.CaptureFixture[str]) -> None:
    """At 20x isolated, a stop at 91,000 fires before liquidation (about 90,612 with 0.4% MM)."""
    assert main([*TRADE, "--leverage", "20", "--stop-loss", "91000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # isolated wallet = 47,500 / 20 = 2,375; LP = (2375 - 0.5*95000) / (0.5*0.004 - 0.5)
    assert result["liquidation_price"] == pytest.approx((2_375 - 47_500) / (0.002 - 0.5), rel=1e-12)
    assert result["stop_before_liquidation"] is True
    assert result["buffer"] == pytest.approx(91_000 - result["liquidation_price"], rel=1e-12)


def test_pretrade_liquidation_before_stop(capsys: pytest.CaptureFixture[str]) -> None:
    """At 50x the same stop lies beyond liquidation: the report says the stop would never fill."""
    assert main([*TRADE, "--leverage", "50", "--stop-loss", "91000"]) == 0
    out = capsys.readouterr().out
    assert "DANGER" in out
    assert "never fill" in out


def test_pretrade_cross_uses_the_wallet(capsys: pytest.CaptureFixture[str]) -> None:
    """With --wallet the position is cross: the whole wallet stands behind it."""
    assert main([*TRADE, "--leverage", "50", "--stop-loss", "91000", "--wallet", "10000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["margin_mode"] == "cross"
    assert result["liquidation_price"] == pytest.approx((10_000 - 47_500) / (0.002 - 0.5), rel=1e-12)
    assert result["stop_before_liquidation"] is True


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--leverage", "20"], "--stop-loss: missing"),
        (["--leverage", "20", "--stop-loss", "99000"], "--stop-loss: a long stop must lie below the entry"),
        (["--leverage", "0", "--stop-loss", "91000"], "--leverage: must be > 0"),
    ],
    ids=["missing-stop", "stop-wrong-side", "zero-leverage"],
)
def test_pretrade_bad_flags(capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    """A missing or wrong pre-trade flag exits 2 with one line naming the flag."""
    assert main([*TRADE, *extra]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_pretrade_unknown_symbol(capsys: pytest.CaptureFixture[str]) -> None:
    """A symbol without bundled brackets is refused, naming the flag and pointing at --input."""
    args = ["calc", "--symbol", "PEPEUSDT", "--side", "short", "--entry", "1", "--size", "5"]
    assert main([*args, "--leverage", "5", "--stop-loss", "1.1"]) == EXIT_USAGE
    assert "--symbol: no bundled brackets for 'PEPEUSDT'" in capsys.readouterr().err


def test_calc_without_input_or_flags_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``calc`` alone says what it needs, in one line, with exit code 2."""
    with pytest.raises(SystemExit) as excinfo:
        main(["calc"])
    assert excinfo.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--input" in err
