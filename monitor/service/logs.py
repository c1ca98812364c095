"""Logging: one pipeline for our structlog events and third-party stdlib loggers, with secrets cut out.

Under a supervisor (systemd, Docker) stdout is not a terminal and every line is a JSON object with
``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` and ``event``, ready for ``jq`` and log
shippers; on a terminal the same events are rendered for people. ccxt, aiohttp and APScheduler log
through the standard library; their records go through the same processors (at WARNING and
above: their INFO and DEBUG lines are request chatter, and ccxt's verbose mode prints signed URLs).

Every rendered line, exception text included, passes the redactor, which knows each secret as it
is written raw, inside a JSON string and inside a ``repr``: it replaces each configured secret, any
piece of one cut short (see ``Redactor``), any ``signature=`` query parameter and the value of the
API key headers exchanges use, with ``***``. (It once also went over every field before rendering:
that found nothing the pass over the line misses, and cost as much as the rest of the line.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

#: What every redacted value becomes.
REDACTED = "***"

#: Third-party loggers routed through our pipeline, quietened to WARNING.
THIRD_PARTY_LOGGERS = ("ccxt", "aiohttp", "apscheduler")

#: Headers that carry an API key, a signature or a passphrase (Binance, Bybit, OKX).
SECRET_HEADERS = (
    "X-MBX-APIKEY",
    "X-BAPI-API-KEY",
    "X-BAPI-SIGN",
    "OK-ACCESS-KEY",
    "OK-ACCESS-SIGN",
    "OK-ACCESS-PASSPHRASE",
)

# A signature proves nothing to a reader but lets a replayer within the receive window act as us.
_SIGNATURE = re.compile(r"(?i)(\bsignature=)[^&\s\"'<>]+")
# Header values as they appear in dict reprs ('X-MBX-APIKEY': 'abc'), JSON and raw HTTP (X-MBX-APIKEY: abc).
_HEADER = re.compile(
    r"(?i)(\b(?:" + "|".join(re.escape(name) for name in SECRET_HEADERS) + r")['\"]?\s*[:=]\s*['\"]?)"
    r"[^'\"\s,;}&]+"
)

#: Lower-case text that must be in a line before the patterns above can match in it: a check for
#: them costs a microsecond where the case-insensitive patterns cost 75 µs on an alert's line.
_HEADER_NAMES = tuple(name.lower() for name in SECRET_HEADERS)
_SIGNATURE_MARK = "signature="

# Runs of letters and digits: the words and numbers of a text, whatever separates them.
_WORDS = re.compile(r"[^\W_]+")

_HANDLER_NAME = "margin-monitor"

#: A piece of a secret this long is cut wherever it stands, so an echo gives 7 characters away at
#: most (a 16-character key keeps 9 unknown, 53 bits). Shorter would cut by chance: 8 characters of
#: a line match one of the 171,000 pieces of 3,000 base-62 keys once in 10^9 (hex keys: once in
#: 25,000), 6 would match hex ids once in a hundred. A key masked on purpose (``abcd****wxyz``) is left.
PIECE_MIN = 8
#: Secrets this long are cut in pieces too, unless they read as text (``_reads_as_text``): shorter
#: ones and phrases are what people choose, their pieces are words, and they are matched whole only.
PIECE_SECRET_MIN = 16
#: Runs remembered with their pieces' places (field names, account names, levels recur on every line).
RUNS_CACHE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class _Secrets:
    """What a ``Redactor`` looks for; replaced as one object, so a line never sees half of a new set."""

    whole: re.Pattern[str] | None = None
    """The secrets matched whole only (and their escaped forms), as one trie pattern."""
    runs: re.Pattern[str] | None = None
    """Runs of ``PIECE_MIN`` or more characters the key-like secrets use: where a piece can be."""
    pieces: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Every ``PIECE_MIN``-character piece of the key-like secrets' forms, with the forms holding it."""
    found: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    """Runs already searched, with where their pieces stand (``_cut_pieces``)."""


class Redactor:
    """Replaces secrets in rendered lines and other text; ``set_secrets`` swaps the set atomically.

    Every secret is replaced whole. A key-like secret (16 characters or more, not only words and
    numbers: an API key, a token) is also cut wherever a piece of it stands: any stretch of 8 or more
    characters (``PIECE_MIN``) that is a contiguous piece of it, from either end or the middle,
    inside a longer token too. So an exchange error that echoes a key cut short (``invalid api key
    abcd1234efgh...``, ``...9f8e7d6c``, a body ccxt cut off with the key glued to a timestamp) leaks
    7 characters at most. A piece shorter than 16 that reads as text (words and numbers, such as
    ``Exchange`` or ``sim-bulk-000003``) is left, so that a line is never cut by chance where it
    shares a word with a secret; a random key's pieces rarely read so (0.3% of the 8-character
    pieces of a base-62 key). Phrases and the sim's ``margin-monitor-sim-demo-key`` are matched whole.

    Pieces are found through an index of every 8-character piece of every such secret: the runs of
    a line made of characters those secrets use are looked up 8 characters at a time (a typical line
    has a few runs that long), and a hit grows to the longest piece of a secret holding it. The
    other secrets go into one regular expression shaped as a trie (a plain alternation of 3,000 keys
    costs about 2 ms a line). A 300-character line with 3,000 keys of 64 characters takes under
    0.03 ms (0.09 through a trie of them all); the index holds about 4.5 kB a key. Each run found is
    remembered with its result, so the field names and account names of the next line cost a
    dictionary lookup (an alert's 1,700-character line: about 0.2 ms -> 0.06 ms on a slow host).
    """

    #: Strings up to this long are remembered with their redacted form (event names, account names,
    #: levels repeat on every line: a thousand accounts' ticks redacted the same words 28,000 times).
    CACHE_MAX_LEN = 200
    CACHE_SIZE = 20_000

    def __init__(self) -> None:
        self._secrets = _Secrets()
        self._cache: dict[str, str] = {}

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Redact exactly these values (and pieces of the long ones) from now on; empty ones are ignored."""
        whole_only: set[str] = set()
        in_pieces: set[str] = set()
        for secret in secrets:
            if secret:
                # The raw value, and the value as JSON and repr() escape it, so a secret holding a
                # quote or backslash is still found in a rendered line.
                forms = (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1])
                key_like = len(secret) >= PIECE_SECRET_MIN and not _reads_as_text(secret)
                (in_pieces if key_like else whole_only).update(forms)
        pieces: dict[str, tuple[str, ...]] = {}
        for form in in_pieces:
            alone = (form,)  # shared by the pieces no other form holds: most of them
            for start in range(len(form) - PIECE_MIN + 1):
                piece = form[start : start + PIECE_MIN]
                held = pieces.setdefault(piece, alone)
                if form not in held:
                    pieces[piece] = (*held, form)
        alphabet = "".join(re.escape(char) for char in sorted(set("".join(in_pieces))))
        matchers = _Secrets(
            whole=re.compile(_trie_pattern(whole_only)) if whole_only else None,
            runs=re.compile(f"[{alphabet}]{{{PIECE_MIN},}}") if in_pieces else None,
            pieces=pieces,
        )
        # The cache first: a result remembered under the old secrets must not outlive them.
        self._cache = {}
        self._secrets = matchers
        self._cache = {}

    def redact_text(self, text: str) -> str:
        """``text`` with every secret (or piece of one), signature and API-key header value as ``***``."""
        cache = self._cache  # read once: set_secrets may run in another thread
        short = len(text) <= self.CACHE_MAX_LEN
        if short:
            known = cache.get(text)
            if known is not None:
                return known
        redacted = self._redact(text)
        if short:
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[text] = redacted
        return redacted

    def _redact(self, text: str) -> str:
        secrets = self._secrets  # read once: set_secrets may run in another thread
        # Pieces first: a short secret that happens to sit inside a long one must not split it into
        # ends too short to be found.
        if secrets.runs is not None:
            text = _cut_pieces(text, secrets)
        if secrets.whole is not None:
            text = secrets.whole.sub(REDACTED, text)
        lower = text.lower()
        if _SIGNATURE_MARK in lower:
            text = _SIGNATURE.sub(rf"\g<1>{REDACTED}", text)
        if any(name in lower for name in _HEADER_NAMES):
            text = _HEADER.sub(rf"\g<1>{REDACTED}", text)
        return text

    def rendered(self, _logger: WrappedLogger, _method_name: str, line: EventDict | str) -> str:
        """The last processor: redact the rendered line."""
        if not isinstance(line, str):  # pragma: no cover - the renderers before it return str
            raise TypeError(f"expected a rendered line, got {type(line).__name__}")
        return self.redact_text(line)


#: The process's one redactor; ``configure_logging`` and ``set_secrets`` update it.
REDACTOR = Redactor()


def configure_logging(
    log_format: LogFormat = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
    *,
    level: int | str = logging.INFO,
    journal: bool | None = None,
) -> None:
    """Send structlog events and stdlib records to ``stream`` (default ``sys.stdout``).

    ``log_format`` "json" renders JSON lines, "console" the human renderer (coloured on a TTY),
    "auto" the console on a TTY and JSON otherwise. ``secrets`` replaces the set of values
    redacted from every line. Safe to call again (a reload): the previous handler is replaced, never
    duplicated. ``stream`` defaults to ``sys.stdout`` as it is at call time, so test capture works.
    ``journal``: prefix each line with its syslog priority (``<4>`` for a warning), which journald
    strips and stores; by default, when ``stream`` is the journal (``under_journal``).
    """
    out = sys.stdout if stream is None else stream
    tty = _isatty(out)
    console = log_format == "console" or (log_format == "auto" and tty)
    REDACTOR.set_secrets(secrets)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level loggers must follow a reconfiguration (a reload, or
        # structlog.testing.capture_logs in the tests); the cost is a dict lookup per line.
        cache_logger_on_first_use=False,
    )
    renderers: list[Processor] = (
        [_console_columns, structlog.dev.ConsoleRenderer(colors=tty)]
        if console
        else [structlog.processors.JSONRenderer()]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become plain text before the redactor sees them. The console renderer's
            # own (rich) tracebacks would print local variables, credentials among them.
            structlog.processors.format_exc_info,
            *renderers,
            REDACTOR.rendered,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        PriorityFormatter(formatter) if (under_journal(out) if journal is None else journal) else formatter
    )

    root = logging.getLogger()
    for old in [existing for existing in root.handlers if existing.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()  # a StreamHandler leaves its stream open; this only unregisters it
    root.addHandler(handler)
    root.setLevel(level)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


#: Where a line's severity goes. ``level`` is the trader's word for how close an account is to
#: liquidation (the canonical ``account.assessed`` line carries it), so severity takes another key.
LOG_LEVEL_KEY = "log_level"


def add_log_level(_logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Record the line's severity under ``log_level``, leaving ``level`` to the risk level."""
    event_dict[LOG_LEVEL_KEY] = "warning" if method_name == "warn" else method_name
    if method_name == "exception":
        event_dict[LOG_LEVEL_KEY] = "error"
    return event_dict


def _console_columns(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    # The console renderer shows ``level`` in its severity column: give it the severity there, and
    # show the risk level as an ordinary field.
    risk = event_dict.pop("level", None)
    if risk is not None:
        event_dict["risk_level"] = risk
    event_dict["level"] = event_dict.pop(LOG_LEVEL_KEY, "info")
    return event_dict


# --- journald ---------------------------------------------------------------------------------------

#: Set to 1 to prefix lines with their syslog priority wherever they go, 0 never to (default: auto).
PRIORITY_ENV = "MARGIN_MONITOR_LOG_PRIORITY"


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a ``logging`` level: debug 7, info 6, warning 4, error 3, critical 2."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def under_journal(stream: Any, environ: Mapping[str, str] = os.environ) -> bool:  # noqa: ANN401 - any file-like object
    """Whether ``stream`` is connected to journald, so a ``<N>`` prefix sets each line's priority.

    systemd sets ``$JOURNAL_STREAM`` to the device and inode of the stream it connected to the
    journal; a stream redirected elsewhere (a log file, a pipe to another program) does not match
    and gets plain lines (sd-daemon(3)). ``$MARGIN_MONITOR_LOG_PRIORITY`` (1 or 0) overrides it.
    """
    forced = environ.get(PRIORITY_ENV, "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not device or not inode:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO), or closed
        return False
    return f"{status.st_dev}:{status.st_ino}" == f"{device}:{inode}"


class PriorityFormatter(logging.Formatter):
    """Prefixes what ``inner`` renders with the record's syslog priority (``<6>{...}``)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """The line, prefixed."""
        return f"<{syslog_priority(record.levelno)}>{self.inner.format(record)}"


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the redacted values without touching the rest (after credentials are resolved)."""
    REDACTOR.set_secrets(secrets)


def _isatty(stream: Any) -> bool:  # noqa: ANN401 - any file-like object, with or without isatty
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _cut_pieces(text: str, secrets: _Secrets) -> str:
    """``text`` with every piece of a secret replaced; overlapping or touching ones as one."""
    if secrets.runs is None:
        return text
    found = secrets.found
    # Lines repeat their runs (field names, account names): each is searched once. A run's pieces
    # do not depend on what surrounds it (the characters around are not the secrets').
    hit = False
    for word in secrets.runs.findall(text):
        spans = found.get(word)
        if spans is None:
            if len(found) >= RUNS_CACHE_SIZE:
                found.clear()
            spans = found[word] = _run_spans(word, secrets.pieces)
        hit = hit or bool(spans)
    if not hit:  # nearly every line: no piece anywhere, and no match objects made
        return text
    parts: list[str] = []
    at = 0
    for run in secrets.runs.finditer(text):
        spans = found.get(run.group())
        if spans is None:  # the cache was cleared while this line filled it
            spans = _run_spans(run.group(), secrets.pieces)
        first = run.start()
        for start, end in spans:
            parts += (text[at : first + start], REDACTED)
            at = first + end
    if not parts:
        return text
    parts.append(text[at:])
    return "".join(parts)


def _run_spans(run: str, pieces: Mapping[str, tuple[str, ...]]) -> tuple[tuple[int, int], ...]:
    """Where in ``run`` (made of the secrets' characters) a piece to cut stands."""
    if len(run) >= PIECE_SECRET_MIN and _reads_as_text(run):
        # Every piece of a run that reads as text reads so too, and counts only from 16
        # characters: such a piece holds a lookup window at every 8th start of the run. Lines
        # are full of these runs (``liquidation_distance_pct``): 8x fewer lookups, same finds.
        windows = range(0, len(run) - PIECE_MIN + 1, PIECE_MIN)
        if not any(run[start : start + PIECE_MIN] in pieces for start in windows):
            return ()
    return tuple(
        (start, end)
        for start, end in _piece_spans(run, 0, len(run), pieces)
        if end - start >= PIECE_SECRET_MIN or not _reads_as_text(run[start:end])
    )


def _piece_spans(
    text: str, first: int, stop: int, pieces: Mapping[str, tuple[str, ...]]
) -> list[tuple[int, int]]:
    """The stretches of ``text[first:stop]`` (a run of the secrets' characters) that are pieces."""
    spans: list[tuple[int, int]] = []
    end = skip_to = first  # where the last stretch ends, and the first start worth looking up
    for start in range(first, stop - PIECE_MIN + 1):
        holders = pieces.get(text[start : start + PIECE_MIN]) if start >= skip_to else None
        if holders is None:
            continue
        # Only a piece reaching past ``end`` matters. A piece's prefixes are pieces too: if the
        # shortest such is not one, none is; if it is, the longest is searched for.
        low = max(start + PIECE_MIN, end + 1)
        high = min(stop, start + max(map(len, holders)))
        if low > high or not _held(text[start:low], holders):
            continue
        while low < high:
            middle = (low + high + 1) // 2
            if _held(text[start:middle], holders):
                low = middle
            else:
                high = middle - 1
        spans.append((spans.pop()[0], low) if spans and start <= end else (start, low))
        end = low
        # A piece that starts before end + 2 - PIECE_MIN and reaches past ``end`` holds the
        # PIECE_MIN characters up to end + 1: unless those are a piece, the next starts are inside.
        if text[end + 1 - PIECE_MIN : end + 1] not in pieces:
            skip_to = end + 2 - PIECE_MIN
    return spans


def _held(piece: str, holders: tuple[str, ...]) -> bool:
    return any(piece in holder for holder in holders)


def _reads_as_text(text: str) -> bool:
    """Whether ``text`` is words and numbers (``margin-monitor``, ``Bearer``, ``1700000000``).

    Each run of letters and digits in it is digits only, or letters in lower case, capitalised or
    in capitals; what separates them does not matter.
    """
    return all(
        word.isdigit() or (word.isalpha() and (word.islower() or word.istitle() or word.isupper()))
        for word in _WORDS.findall(text)
    )


def _trie_pattern(words: Iterable[str]) -> str:
    """A regular expression matching any of ``words``, longest first, with shared prefixes merged."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # marks the end of a word
    return _node_pattern(trie)


def _node_pattern(node: dict[str, Any]) -> str:
    # Runs of single-child nodes become literal text without recursing, so the recursion depth is
    # the number of branch points on a path, not the length of a (possibly PEM-sized) secret.
    text: list[str] = []
    while len(node) == 1 and "" not in node:
        char, child = next(iter(node.items()))
        text.append(re.escape(char))
        node = child
    branches = [re.escape(char) + _node_pattern(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return "".join(text)
    group = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
    if "" in node:  # a word ends here: the longer words are optional, tried first (greedy)
        group = f"(?:{group})?" if len(branches) == 1 else f"{group}?"
    return "".join(text) + group
