"""Logging: JSON lines or console lines on one stream, third-party loggers included, secrets never."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from monitor.service.logs import (
    PIECE_MIN,
    PIECE_SECRET_MIN,
    REDACTOR,
    THIRD_PARTY_LOGGERS,
    Redactor,
    _trie_pattern,
    configure_logging,
    set_secrets,
)
from monitor.sim import DEMO_API_KEY

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # noqa: S105 - a made-up key
PASSPHRASE = "correct horse 'battery' staple"  # noqa: S105 - quotes are escaped differently by JSON and repr


class FakeTTY(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        """Claim to be a terminal, as stdout is in an interactive shell."""
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Give every test a fresh structlog, root logger and redactor, and put them back afterwards."""
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


def lines(stream: io.StringIO) -> list[str]:
    """The non-empty lines written to ``stream``."""
    return [line for line in stream.getvalue().splitlines() if line]


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Every line of ``stream`` parsed as one JSON object."""
    return [json.loads(line) for line in lines(stream)]


# --- formats --------------------------------------------------------------------------------------


def test_json_lines_carry_timestamp_level_logger_event() -> None:
    """Off a terminal, each event is one JSON object with an ISO UTC timestamp and its fields."""
    stream = io.StringIO()
    configure_logging("auto", stream)
    structlog.get_logger("monitor.service.daemon").info(
        "account.assessed", account="main", margin_ratio_pct=182.4
    )
    (line,) = json_lines(stream)
    assert line["event"] == "account.assessed"
    assert line["log_level"] == "info"
    assert line["logger"] == "monitor.service.daemon"
    assert (line["account"], line["margin_ratio_pct"]) == ("main", 182.4)
    timestamp = line["timestamp"]
    assert isinstance(timestamp, str)
    assert timestamp.endswith("Z")
    assert datetime.fromisoformat(timestamp).tzinfo == UTC


def test_json_is_forced_on_a_terminal() -> None:
    """log_format = "json" renders JSON even on a terminal (for people who pipe into jq)."""
    stream = FakeTTY()
    configure_logging("json", stream)
    structlog.get_logger("monitor").warning("account.blind", account="main")
    assert json_lines(stream)[0]["log_level"] == "warning"


def test_console_on_a_terminal() -> None:
    """On a terminal, "auto" renders readable coloured lines rather than JSON."""
    stream = FakeTTY()
    configure_logging("auto", stream)
    structlog.get_logger("monitor").info("account.assessed", account="main")
    (line,) = lines(stream)
    assert "account.assessed" in line
    assert "main" in line
    assert "\x1b[" in line  # ANSI colours
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_console_off_a_terminal_has_no_colours() -> None:
    """log_format = "console" into a file or pipe: readable, without escape codes."""
    stream = io.StringIO()
    configure_logging("console", stream)
    structlog.get_logger("monitor").info("account.assessed", account="main")
    (line,) = lines(stream)
    assert "account.assessed" in line
    assert "\x1b[" not in line


def test_exception_text_is_logged() -> None:
    """log.exception puts the traceback, as text, in the ``exception`` field."""
    stream = io.StringIO()
    configure_logging("json", stream)
    try:
        raise RuntimeError("exchange said no")  # noqa: TRY301 - the traceback is what is tested
    except RuntimeError:
        structlog.get_logger("monitor").exception("account.poll_crashed")
    (line,) = json_lines(stream)
    assert "RuntimeError: exchange said no" in str(line["exception"])


def test_stream_without_isatty_gets_json() -> None:
    """A file-like object without isatty() is not a terminal."""

    class Sink:
        """Only what a StreamHandler needs."""

        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            """Collect."""
            self.text += text

        def flush(self) -> None:
            """Nothing to flush."""

    sink = Sink()
    configure_logging("auto", sink)  # type: ignore[arg-type]
    structlog.get_logger("monitor").info("plain")
    assert json.loads(sink.text)["event"] == "plain"


# --- stdlib loggers -------------------------------------------------------------------------------


def test_third_party_records_share_the_pipeline_at_warning() -> None:
    """ccxt, aiohttp and apscheduler records are JSON lines too, but only from WARNING up."""
    stream = io.StringIO()
    configure_logging("json", stream)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(f"{name}.sub").info("chatter")
        logging.getLogger(name).warning("%s is unhappy", name)
    assert [(line["logger"], line["event"], line["log_level"]) for line in json_lines(stream)] == [
        (name, f"{name} is unhappy", "warning") for name in THIRD_PARTY_LOGGERS
    ]


def test_our_info_lines_pass() -> None:
    """The daemon's own INFO lines (the canonical account.assessed) are not filtered."""
    stream = io.StringIO()
    configure_logging("json", stream)
    structlog.get_logger("monitor.service.daemon").debug("noise")
    structlog.get_logger("monitor.service.daemon").info("account.assessed")
    assert [line["event"] for line in json_lines(stream)] == ["account.assessed"]


def test_reconfiguring_replaces_the_handler() -> None:
    """A reload configures logging again: one line per event, on the new stream, in the new format."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", first)
    configure_logging("json", first)
    configure_logging("console", second)
    structlog.get_logger("monitor").info("daemon.reloaded")
    logging.getLogger("ccxt").warning("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 2
    assert sum(handler.get_name() == "margin-monitor" for handler in logging.getLogger().handlers) == 1


def test_capture_logs_sees_module_level_loggers() -> None:
    """Loggers are not cached, so structlog.testing.capture_logs works after configure_logging."""
    configure_logging("json", io.StringIO())
    log = structlog.get_logger("monitor.service.daemon")
    log.info("before")
    with structlog.testing.capture_logs() as captured:
        log.info("account.assessed", account="main")
    assert captured == [{"event": "account.assessed", "account": "main", "log_level": "info"}]


# --- secrets --------------------------------------------------------------------------------------


def output_with_secrets(log_format: str = "json") -> str:
    """Log a secret every way it can reach a log line and return everything written."""
    stream = io.StringIO()
    configure_logging("json" if log_format == "json" else "console", stream, secrets=[SECRET, PASSPHRASE])
    log = structlog.get_logger("monitor.exchanges")
    log.info("request", key=SECRET, nested={"headers": [SECRET, PASSPHRASE]}, text=f"key is {SECRET}!")
    log.warning("object", value=RuntimeError(f"bad key {SECRET} / {PASSPHRASE}"))
    try:
        raise PermissionError(f"invalid key {SECRET}, passphrase {PASSPHRASE}")  # noqa: TRY301 - tested
    except PermissionError:
        log.exception("account.poll_failed")
    ccxt = logging.getLogger("ccxt.base.exchange")
    ccxt.warning("GET https://fapi.binance.com/fapi/v3/account?apiKey=%s failed", SECRET)
    try:
        raise ValueError(f"auth {PASSPHRASE}")  # noqa: TRY301 - tested
    except ValueError:
        ccxt.exception("ccxt error")
    return stream.getvalue()


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_secret_values_never_appear(log_format: str) -> None:
    """Secrets in fields, nested values, reprs, exception text and ccxt's records are all replaced."""
    output = output_with_secrets(log_format)
    assert SECRET not in output
    assert "battery" not in output
    assert output.count("***") >= 10
    assert "account.poll_failed" in output
    assert "ccxt error" in output


def test_secret_fields_are_redacted_in_place() -> None:
    """The structure of the event survives redaction; only the secret's characters are replaced."""
    first = json.loads(output_with_secrets().splitlines()[0])
    assert first["key"] == "***"
    assert first["nested"] == {"headers": ["***", "***"]}
    assert first["text"] == "key is ***!"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /fapi/v3/account?timestamp=1&recvWindow=5000&signature=9f86d081884c7d65",
            "GET /fapi/v3/account?timestamp=1&recvWindow=5000&signature=***",
        ),
        ("url?signature=abc&x=1", "url?signature=***&x=1"),
        ("{'X-MBX-APIKEY': 'someKey123', 'Accept': 'json'}", "{'X-MBX-APIKEY': '***', 'Accept': 'json'}"),
        ('{"X-MBX-APIKEY": "someKey123"}', '{"X-MBX-APIKEY": "***"}'),
        ("X-MBX-APIKEY: someKey123\r\nHost: x", "X-MBX-APIKEY: ***\r\nHost: x"),
        ("x-mbx-apikey=someKey123", "x-mbx-apikey=***"),
        ("{'OK-ACCESS-PASSPHRASE': 'pass'}", "{'OK-ACCESS-PASSPHRASE': '***'}"),
        ("no secrets at all", "no secrets at all"),
    ],
    ids=[
        "signature-last",
        "signature-middle",
        "header-repr",
        "header-json",
        "header-http",
        "header-lower",
        "okx",
        "none",
    ],
)
def test_signatures_and_key_headers_are_redacted(text: str, expected: str) -> None:
    """A signed query string or an API-key header is redacted even when its value is not configured."""
    assert Redactor().redact_text(text) == expected


def test_signature_in_a_stdlib_record_is_redacted() -> None:
    """In verbose mode ccxt logs signed URLs; the signature never reaches the stream."""
    stream = io.StringIO()
    configure_logging("json", stream)
    logging.getLogger("ccxt").warning("GET /fapi/v3/account?timestamp=1&signature=deadbeef01")
    assert "deadbeef01" not in stream.getvalue()


def test_set_secrets_replaces_the_set() -> None:
    """After credentials are resolved (or reloaded), set_secrets decides what is redacted."""
    stream = io.StringIO()
    configure_logging("json", stream, secrets=["old-secret-1"])
    set_secrets(["new-secret-2"])
    structlog.get_logger("monitor").info("x", a="old-secret-1", b="new-secret-2")
    (line,) = json_lines(stream)
    assert (line["a"], line["b"]) == ("old-secret-1", "***")


def test_longest_secret_wins() -> None:
    """When one secret is a prefix of another, the longer is replaced whole, leaving no tail."""
    redactor = Redactor()
    redactor.set_secrets(["abcd", "abcdefgh", ""])
    assert redactor.redact_text("abcdefgh abcdxyz") == "*** ***xyz"


@given(
    secrets=st.lists(st.text(alphabet="abcXYZ0129'\"\\-", min_size=1, max_size=12), min_size=1, max_size=20),
    text=st.text(alphabet="abcXYZ0129'\"\\- ", max_size=60),
)
def test_trie_matches_like_longest_first_alternation(secrets: list[str], text: str) -> None:
    """The trie pattern replaces exactly what an alternation of the secrets, longest first, replaces."""
    trie = re.compile(_trie_pattern(secrets))
    plain = re.compile("|".join(re.escape(secret) for secret in sorted(secrets, key=len, reverse=True)))
    assert trie.sub("*", text) == plain.sub("*", text)


def test_trie_handles_very_long_secrets() -> None:
    """A PEM-sized secret (some exchanges sign with RSA keys) compiles without deep recursion."""
    long_secret = "k" * 5000
    redactor = Redactor()
    redactor.set_secrets([long_secret, long_secret[:4000] + "x"])
    assert redactor.redact_text(f"<{long_secret}>") == "<***>"


def test_a_remembered_redaction_does_not_outlive_the_secrets_it_was_made_under() -> None:
    """Short strings are cached with their redacted form; new secrets start a new cache."""
    redactor = Redactor()
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=AKIA-distinct-0001"
    redactor.set_secrets(["AKIA-distinct-0001"])
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=***"
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=***"  # from the cache
    redactor.set_secrets([])
    assert redactor.redact_text("key=AKIA-distinct-0001") == "key=AKIA-distinct-0001"
    long_line = "x" * (Redactor.CACHE_MAX_LEN + 1) + "AKIA-distinct-0001"
    redactor.set_secrets(["AKIA-distinct-0001"])
    assert redactor.redact_text(long_line).endswith("***")


# --- pieces of secrets ----------------------------------------------------------------------------

HEX_SECRET = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"  # noqa: S105 - made up, hex as OKX secrets are


def redactor_of(*secrets: str) -> Redactor:
    """A redactor of just these secrets."""
    redactor = Redactor()
    redactor.set_secrets(secrets)
    return redactor


@pytest.mark.parametrize(
    ("piece", "cut"),
    [
        pytest.param(SECRET[:7], False, id="prefix-7"),
        pytest.param(SECRET[:8], True, id="prefix-8"),
        pytest.param(SECRET[:9], True, id="prefix-9"),
        pytest.param(SECRET[:40], True, id="prefix-40"),
        pytest.param(SECRET[-7:], False, id="suffix-7"),
        pytest.param(SECRET[-8:], True, id="suffix-8"),
        pytest.param(SECRET[-9:], True, id="suffix-9"),
        pytest.param(SECRET[-40:], True, id="suffix-40"),
        pytest.param(SECRET[20:27], False, id="middle-7"),
        pytest.param(SECRET[20:28], True, id="middle-8"),
        pytest.param(SECRET[20:29], True, id="middle-9"),
        pytest.param(SECRET[1:-1], True, id="middle-62"),
        pytest.param(HEX_SECRET[:7], False, id="hex-prefix-7"),
        pytest.param(HEX_SECRET[:8], True, id="hex-prefix-8"),
        pytest.param(HEX_SECRET[-12:], True, id="hex-suffix-12"),
    ],
)
def test_a_piece_of_8_characters_is_cut(piece: str, cut: bool) -> None:
    """A piece of a secret from either end or the middle is cut from 8 characters, in an echo's shapes."""
    redactor = redactor_of(SECRET, HEX_SECRET)
    for shape in ("invalid api key {}...", "key \N{HORIZONTAL ELLIPSIS}{}", "{}", '{{"apiKey": "{}"}}'):
        assert redactor.redact_text(shape.format(piece)) == shape.format("***" if cut else piece)


def test_a_piece_inside_a_longer_token_is_cut() -> None:
    """Bybit's origin string glues the key to a timestamp: the piece goes, the digits stay."""
    redactor = redactor_of(SECRET)
    assert (
        redactor.redact_text(f"origin_string[1700000000000{SECRET[:12]}") == "origin_string[1700000000000***"
    )
    assert redactor.redact_text(f"x{SECRET[30:45]}5000category=linear") == "x***5000category=linear"
    assert redactor.redact_text(f"{SECRET[-10:]}{SECRET[:10]}") == "***"  # two pieces touching: one cut


def test_pieces_of_two_secrets_that_overlap_are_cut_as_one() -> None:
    """A piece that starts inside another and reaches one character past it is not left a character."""
    first, second = "0123456789abcdefZZZZ", "QQQQQQQQ9abcdefg"
    assert redactor_of(first, second).redact_text("0123456789abcdefg!") == "***!"
    assert redactor_of(first, second).redact_text("0123456789abcdefgh!") == "***h!"


def test_short_secrets_and_secrets_of_words_are_matched_whole_only() -> None:
    """Under 16 characters, or words and numbers only, a secret is a person's choice: its pieces are words."""
    fifteen, sixteen = "Qx7Lm2Vb9Rt4Wz1", "Kp3Nd8Hs5Jf0Gc6Y"
    redactor = redactor_of(fifteen, sixteen, PASSPHRASE, DEMO_API_KEY, "sim-bulk-key-000003")
    assert redactor.redact_text(f"{fifteen[:10]}... {sixteen[:10]}...") == f"{fifteen[:10]}... ***..."
    assert redactor.redact_text(f"{fifteen} {sixteen}") == "*** ***"
    for text in (
        "not correct horse 'battery'",
        "/etc/margin-monitor/margin-monitor-sim.toml",
        "sim-bulk-000003",
    ):
        assert redactor.redact_text(text) == text
    assert redactor.redact_text(f"<{PASSPHRASE}> {DEMO_API_KEY}, sim-bulk-key-000003") == "<***> ***, ***"


def test_ordinary_text_is_left_alone() -> None:
    """Words, numbers, timestamps and hex ids shorter than 8 survive, even where they are in a secret."""
    wordy = "ExchangeMarginPositions1700000000000websocket-STALE"
    bearer = "Bearer HygHookBearer2Wq5Er8Ty1Ui4Op7As0Df"
    redactor = redactor_of(
        SECRET, HEX_SECRET, wordy, bearer, "7301946258:HygBotTok8Jd3Ks6La9Qp2Wo5Ei1Ru4Ty7Zm"
    )
    text = (
        "account main assessed: margin ratio 182.41% (maintenance 1234.5678 USDT, 3 positions) at "
        "2025-03-14T09:26:53.589793Z; order 1700000000000 by bot 7301946258, request 9f8e7d6 / 3c2b1a0, "
        f"key {SECRET[:4]}****{SECRET[-4:]}; Exchange margin websocket-STALE; Authorization: Bearer x"
    )
    assert redactor.redact_text(text) == text
    assert redactor.redact_text("ExchangeMarginPositions") == "***"  # words run together are a piece
    assert redactor.redact_text(f"Authorization: {bearer[:20]}") == "Authorization: ***"


def test_an_escaped_piece_is_cut() -> None:
    """A piece of a secret's JSON or repr form (a backslash, a quote) is cut as the raw one is."""
    quoted = 'Ab3"Cd5\\Ef7"Gh9\\Ij1Kl3'
    redactor = redactor_of(quoted)
    assert json.dumps(quoted[:12])[1:-1] in json.dumps(quoted)
    assert redactor.redact_text(f"x {json.dumps(quoted[:12])} y") == 'x "***" y'
    assert redactor.redact_text(f"x {quoted[:12]!r} y") == "x '***' y"


def escaped_forms(secret: str) -> tuple[str, str, str]:
    """The secret as it is, and as JSON and repr() escape it."""
    return (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1])


def cut_by_hand(text: str, secrets: list[str]) -> str:
    """What the redactor is meant to do, the slow way.

    Every stretch of ``text`` that pieces (8 characters or more) of a key-like secret cover becomes
    ``***``, unless it is shorter than 16 and reads as words and numbers; then the other secrets are
    replaced whole, longest first.
    """

    def reads_as_text(text: str) -> bool:
        words = "".join(char if char.isalnum() else " " for char in text).split()
        return all(
            word.isdigit() or (word.isalpha() and (word.islower() or word.istitle() or word.isupper()))
            for word in words
        )

    def key_like(secret: str) -> bool:
        return len(secret) >= PIECE_SECRET_MIN and not reads_as_text(secret)

    forms = {form for secret in secrets if key_like(secret) for form in escaped_forms(secret)}
    cut = [False] * len(text)
    for start in range(len(text)):
        for end in range(start + PIECE_MIN, len(text) + 1):
            if any(text[start:end] in form for form in forms):
                cut[start:end] = [True] * (end - start)
    stretches = []
    for is_cut, group in itertools.groupby(zip(text, cut, strict=True), key=lambda pair: pair[1]):
        stretch = "".join(char for char, _ in group)
        kept = len(stretch) < PIECE_SECRET_MIN and reads_as_text(stretch)
        stretches.append("***" if is_cut and not kept else stretch)
    whole = sorted({form for secret in secrets if not key_like(secret) for form in escaped_forms(secret)})
    alternation = "|".join(re.escape(form) for form in sorted(whole, key=len, reverse=True))
    return re.sub(alternation, "***", "".join(stretches)) if whole else "".join(stretches)


@st.composite
def secrets_and_text(draw: st.DrawFn) -> tuple[list[str], str]:
    """A few secrets over a small alphabet, and a text of slices of them (escaped or not) and noise."""
    alphabet = "aB1'\\"
    secrets = draw(st.lists(st.text(alphabet=alphabet, min_size=12, max_size=24), min_size=1, max_size=4))
    sources = [form for secret in secrets for form in escaped_forms(secret)]
    slices = st.tuples(st.sampled_from(sources), st.integers(0, 30), st.integers(0, 30)).map(
        lambda source: source[0][min(source[1:]) : max(source[1:])]
    )
    parts = draw(st.lists(st.one_of(slices, st.text(alphabet=alphabet + " .", max_size=4)), max_size=8))
    return secrets, "".join(parts)


@given(secrets_and_text())
def test_pieces_are_cut_like_a_search_of_every_stretch(case: tuple[list[str], str]) -> None:
    """Exactly the stretches some piece of a secret covers are cut, however pieces overlap or repeat."""
    secrets, text = case
    assert redactor_of(*secrets).redact_text(text) == cut_by_hand(text, secrets)


def test_set_secrets_from_another_thread_swaps_whole_sets() -> None:
    """Lines redacted while another thread swaps the secrets see the old set or the new, never a mix."""
    first, second = SECRET, HEX_SECRET + HEX_SECRET[::-1]
    redactor = redactor_of(first)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            redactor.set_secrets([second])
            redactor.set_secrets([first])

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            line = redactor.redact_text(f"{first[:20]} {second[:20]} {len(seen)} {time.monotonic()}")
            seen.add(" ".join(line.split()[:2]))
    finally:
        stop.set()
        swapper.join()
    assert seen == {f"*** {second[:20]}", f"{first[:20]} ***"}
