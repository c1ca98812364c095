"""The TOML configuration: what loads, and one error naming key and file for everything that must not."""

from __future__ import annotations

from pathlib import Path

import pytest
from monitor.config import (
    AccountConfig,
    Credentials,
    SecretRef,
    check_config,
    default_state_dir,
    load_config,
    resolve_credentials,
)
from monitor.errors import ConfigError, UserInputError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "margin-monitor.example.toml"

BINANCE = """
[[accounts]]
name = "main"
exchange = "binanceusdm"
api_key_env = "BINANCE_API_KEY"
secret_env = "BINANCE_SECRET"
"""

# A secret distinctive enough that finding it anywhere in a message is a leak, not a coincidence.
SECRET = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # noqa: S105 - a made-up key


def write(tmp_path: Path, text: str, name: str = "margin-monitor.toml") -> Path:
    """Write a configuration file into ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def secret_file(tmp_path: Path, name: str, value: str = SECRET, mode: int = 0o600) -> Path:
    """Write a secret file ending in a newline, as ``echo`` would, with ``mode``."""
    path = tmp_path / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


# --- what loads -----------------------------------------------------------------------------------


def test_minimal_account_takes_the_defaults(tmp_path: Path) -> None:
    """One account and nothing else: every other setting is the documented default."""
    config = load_config(write(tmp_path, BINANCE), environ={"STATE_DIRECTORY": "/var/lib/margin-monitor"})
    (account,) = config.accounts
    assert account.name == "main"
    assert account.exchange == "binanceusdm"
    assert account.api_key == SecretRef("api_key", "env", "BINANCE_API_KEY")
    assert account.secret == SecretRef("secret", "env", "BINANCE_SECRET")
    assert account.password is None
    assert (account.poll_interval_s, account.drift_tolerance_pct, account.mode) == (10.0, 0.5, "auto")
    assert (account.base_url, account.ws_url, account.sandbox, account.wallet_address) == (
        None,
        None,
        False,
        None,
    )
    assert not account.approximate
    assert config.alerts.thresholds_pct == (150.0, 130.0, 120.0)
    assert config.alerts.thresholds == pytest.approx((1.5, 1.3, 1.2))
    assert config.alerts.stale_after_polls == 3
    assert config.daemon.state_dir == Path("/var/lib/margin-monitor")
    assert (config.daemon.log_format, config.daemon.tier_refresh_h, config.daemon.market_refresh_h) == (
        "auto",
        6.0,
        24.0,
    )
    assert config.path == tmp_path / "margin-monitor.toml"


def test_example_file_loads() -> None:
    """The shipped example is valid and holds the four kinds of account it documents."""
    config = load_config(EXAMPLE, environ={})
    accounts = {account.name: account for account in config.accounts}
    assert set(accounts) == {"main", "hedge", "hl-vault", "sim"}
    assert accounts["main"].secret == SecretRef("secret", "env", "BINANCE_SECRET")
    assert accounts["hedge"].secret is not None
    assert accounts["hedge"].secret.kind == "file"
    assert accounts["hl-vault"].wallet_address is not None
    assert accounts["hl-vault"].secret_refs() == ()
    assert accounts["sim"].base_url == "http://127.0.0.1:8765"


def test_example_file_checks_with_its_secrets(tmp_path: Path) -> None:
    """With the variables set and the credential files in place, check-config resolves everything."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("binance-hedge-key", "binance-hedge-secret"):
        secret_file(credentials, name)
    environ = {
        "BINANCE_API_KEY": "key",
        "BINANCE_SECRET": SECRET,
        "SIM_API_KEY": "sim-key",
        "SIM_SECRET": "sim-secret",
        "CREDENTIALS_DIRECTORY": str(credentials),
        "STATE_DIRECTORY": str(tmp_path / "state"),
    }
    summary = check_config(EXAMPLE, environ=environ)
    assert summary.startswith(f"{EXAMPLE}: ok: 4 accounts (3 binanceusdm, 1 hyperliquid)")
    assert "thresholds 150/130/120%" in summary
    assert SECRET not in summary


def test_unknown_ccxt_exchange_is_accepted_as_approximate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ccxt id without an exact formula family loads, flagged approximate, and the summary says so."""
    monkeypatch.setenv("K", "key")
    monkeypatch.setenv("S", "secret")
    path = write(
        tmp_path, '[[accounts]]\nname = "k"\nexchange = "kraken"\napi_key_env = "K"\nsecret_env = "S"\n'
    )
    assert load_config(path).accounts[0].approximate
    assert "approximate figures (generic ccxt fields) for kraken" in check_config(path)


def test_settings_are_read(tmp_path: Path) -> None:
    """Every optional key reaches the dataclasses, and OKX takes its passphrase."""
    text = """
[alerts]
thresholds_pct = [200, 150.5, 110]
stale_after_polls = 5

[daemon]
state_dir = "state"
log_format = "json"
tier_refresh_h = 1.5
market_refresh_h = 12

[[accounts]]
name = "okx.main-1"
exchange = "okx"
api_key_env = "OKX_KEY"
secret_env = "OKX_SECRET"
password_file = "secrets/okx-passphrase"
base_url = "https://proxy.example.com:8443/okx"
ws_url = "wss://proxy.example.com/ws"
poll_interval_s = 2.5
drift_tolerance_pct = 1
mode = "poll"
"""
    config = load_config(write(tmp_path, text))
    (account,) = config.accounts
    assert account.password == SecretRef("password", "file", str(tmp_path / "secrets" / "okx-passphrase"))
    assert (account.base_url, account.ws_url) == (
        "https://proxy.example.com:8443/okx",
        "wss://proxy.example.com/ws",
    )
    assert (account.poll_interval_s, account.drift_tolerance_pct, account.mode) == (2.5, 1.0, "poll")
    assert config.alerts.thresholds_pct == (200.0, 150.5, 110.0)
    assert config.alerts.stale_after_polls == 5
    assert config.daemon.state_dir == tmp_path / "state"
    assert (config.daemon.log_format, config.daemon.tier_refresh_h, config.daemon.market_refresh_h) == (
        "json",
        1.5,
        12.0,
    )


def test_account_equality_ignores_its_position(tmp_path: Path) -> None:
    """An account that only moved in the file is equal to itself (a reload keeps its state)."""
    other = BINANCE.replace('"main"', '"other"')
    first = load_config(write(tmp_path, BINANCE + other, "a.toml")).accounts
    second = load_config(write(tmp_path, other + BINANCE, "b.toml")).accounts
    assert first[0] == second[1]
    assert (first[0].index, second[1].index) == (0, 1)
    assert first[0].key_path == "accounts[0]"


def test_config_finds_an_account_by_name(tmp_path: Path) -> None:
    """``Config.account`` looks an account up by its name."""
    config = load_config(write(tmp_path, BINANCE))
    assert config.account("main") is config.accounts[0]
    with pytest.raises(KeyError):
        config.account("nope")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/mm:/var/lib/other"}, Path("/var/lib/mm")),
        ({"XDG_STATE_HOME": "/home/u/.state"}, Path("/home/u/.state/margin-monitor")),
        ({"HOME": "/home/u"}, Path("/home/u/.local/state/margin-monitor")),
    ],
    ids=["systemd-state-directory", "xdg-state-home", "home"],
)
def test_default_state_dir(environ: dict[str, str], expected: Path) -> None:
    """State lives in systemd's StateDirectory=, else the XDG state directory, else ~/.local/state."""
    assert default_state_dir(environ) == expected


# --- what does not load ---------------------------------------------------------------------------

ACCOUNT = '[[accounts]]\nname = "main"\nexchange = "binanceusdm"\napi_key_env = "K"\nsecret_env = "S"\n'

BAD_CONFIGS = [
    ("missing-name", '[[accounts]]\nexchange = "binanceusdm"\n', "accounts[0].name", "missing"),
    ("empty-name", ACCOUNT.replace('"main"', '""'), "accounts[0].name", "empty"),
    ("bad-name", ACCOUNT.replace('"main"', '"my account"'), "accounts[0].name", "may only hold letters"),
    ("missing-exchange", '[[accounts]]\nname = "main"\n', "accounts[0].exchange", "missing"),
    (
        "unknown-exchange",
        ACCOUNT.replace("binanceusdm", "ftx"),
        "accounts[0].exchange",
        "unknown exchange 'ftx'",
    ),
    (
        "exchange-typo",
        ACCOUNT.replace("binanceusdm", "binanceusd"),
        "accounts[0].exchange",
        "did you mean 'binanceusdm'?",
    ),
    (
        "duplicate-name",
        ACCOUNT + ACCOUNT,
        "accounts[1].name",
        "duplicate account name 'main' (also accounts[0])",
    ),
    (
        "missing-secret",
        '[[accounts]]\nname = "main"\nexchange = "binanceusdm"\napi_key_env = "K"\n',
        "accounts[0].secret_env",
        "missing: set secret_env or secret_file",
    ),
    ("okx-without-passphrase", ACCOUNT.replace("binanceusdm", "okx"), "accounts[0].password_env", "missing"),
    (
        "both-env-and-file",
        ACCOUNT + 'secret_file = "/run/secret"\n',
        "accounts[0].secret_file",
        "set either secret_env or secret_file, not both",
    ),
    (
        "env-name-lower-case",
        ACCOUNT.replace('secret_env = "S"', 'secret_env = "binance_secret"'),
        "accounts[0].secret_env",
        "must name an environment variable in upper case",
    ),
    (
        "secret-written-inline",
        ACCOUNT + 'secret = "abc"\n',
        "accounts[0].secret",
        "secrets are not written in this file: use secret_env or secret_file",
    ),
    (
        "path-with-other-variable",
        ACCOUNT.replace('secret_env = "S"', 'secret_file = "$HOME/secret"'),
        "accounts[0].secret_file",
        "only variable a path may use is $CREDENTIALS_DIRECTORY",
    ),
    (
        "empty-path",
        ACCOUNT.replace('secret_env = "S"', 'secret_file = ""'),
        "accounts[0].secret_file",
        "empty path",
    ),
    (
        "hyperliquid-without-address",
        '[[accounts]]\nname = "hl"\nexchange = "hyperliquid"\n',
        "accounts[0].wallet_address",
        "missing: a hyperliquid account is read by its wallet address",
    ),
    (
        "hyperliquid-bad-address",
        '[[accounts]]\nname = "hl"\nexchange = "hyperliquid"\nwallet_address = "0x1234"\n',
        "accounts[0].wallet_address",
        "is not 0x followed by 40 hex digits",
    ),
    (
        "hyperliquid-with-keys",
        '[[accounts]]\nname = "hl"\nexchange = "hyperliquid"\nwallet_address = "0x' + "ab" * 20 + '"\n'
        'secret_env = "S"\n',
        "accounts[0].secret_env",
        "read by wallet_address alone",
    ),
    (
        "address-on-binance",
        ACCOUNT + 'wallet_address = "0x' + "ab" * 20 + '"\n',
        "accounts[0].wallet_address",
        "binanceusdm needs an API key",
    ),
    (
        "unknown-account-key",
        ACCOUNT + "poll_intervall_s = 5\n",
        "accounts[0].poll_intervall_s",
        "unknown key; did you mean 'poll_interval_s'?",
    ),
    (
        "unknown-table",
        ACCOUNT + "[alert]\nthresholds_pct = [150]\n",
        "alert",
        "unknown key; did you mean 'alerts'?",
    ),
    ("unknown-alerts-key", ACCOUNT + "[alerts]\nrepeat = 5\n", "alerts.repeat", "unknown key"),
    ("unknown-daemon-key", ACCOUNT + "[daemon]\nport = 9\n", "daemon.port", "unknown key"),
    (
        "wrong-type-number",
        ACCOUNT + 'poll_interval_s = "10"\n',
        "accounts[0].poll_interval_s",
        "must be a number, got a string",
    ),
    (
        "wrong-type-bool-for-number",
        ACCOUNT + "poll_interval_s = true\n",
        "accounts[0].poll_interval_s",
        "must be a number, got a boolean",
    ),
    (
        "wrong-type-string",
        ACCOUNT.replace('"main"', "7"),
        "accounts[0].name",
        "must be a string, got an integer",
    ),
    ("wrong-type-bool", ACCOUNT + 'sandbox = "yes"\n', "accounts[0].sandbox", "must be true or false"),
    (
        "poll-interval-zero",
        ACCOUNT + "poll_interval_s = 0\n",
        "accounts[0].poll_interval_s",
        "must be above 0",
    ),
    (
        "poll-interval-huge",
        ACCOUNT + "poll_interval_s = 86400\n",
        "accounts[0].poll_interval_s",
        "must be at most 3600",
    ),
    ("poll-interval-nan", ACCOUNT + "poll_interval_s = nan\n", "accounts[0].poll_interval_s", "finite"),
    (
        "negative-drift-tolerance",
        ACCOUNT + "drift_tolerance_pct = -1\n",
        "accounts[0].drift_tolerance_pct",
        "must be at least 0",
    ),
    ("bad-mode", ACCOUNT + 'mode = "push"\n', "accounts[0].mode", "must be one of auto, stream, poll"),
    ("mode-not-a-string", ACCOUNT + "mode = 1\n", "accounts[0].mode", "must be a string, got an integer"),
    (
        "date-for-string",
        ACCOUNT + "ws_url = 2024-01-01\n",
        "accounts[0].ws_url",
        "must be a string, got date",
    ),
    (
        "url-without-scheme",
        ACCOUNT + 'base_url = "127.0.0.1:8765"\n',
        "accounts[0].base_url",
        "must be a http:// or https:// URL with a host",
    ),
    ("url-wrong-scheme", ACCOUNT + 'ws_url = "https://x.example"\n', "accounts[0].ws_url", "ws:// or wss://"),
    ("url-bad-port", ACCOUNT + 'base_url = "http://h:99999"\n', "accounts[0].base_url", "is not a valid URL"),
    (
        "url-with-password",
        ACCOUNT + 'base_url = "https://me:pw@proxy.example"\n',
        "accounts[0].base_url",
        "must not contain a user name or password",
    ),
    (
        "url-with-query",
        ACCOUNT + 'base_url = "https://h.example/?a=1"\n',
        "accounts[0].base_url",
        "query string",
    ),
    (
        "sandbox-and-base-url",
        ACCOUNT + 'sandbox = true\nbase_url = "http://127.0.0.1:8765"\n',
        "accounts[0].sandbox",
        "not both",
    ),
    (
        "thresholds-not-descending",
        ACCOUNT + "[alerts]\nthresholds_pct = [130, 150, 120]\n",
        "alerts.thresholds_pct[1]",
        "must be below thresholds[0] (descending order)",
    ),
    (
        "threshold-at-100",
        ACCOUNT + "[alerts]\nthresholds_pct = [150, 100]\n",
        "alerts.thresholds_pct[1]",
        "must be above 100%",
    ),
    (
        "threshold-not-a-number",
        ACCOUNT + '[alerts]\nthresholds_pct = [150, "130"]\n',
        "alerts.thresholds_pct[1]",
        "must be a number",
    ),
    ("thresholds-empty", ACCOUNT + "[alerts]\nthresholds_pct = []\n", "alerts.thresholds_pct", "empty"),
    ("toml-unterminated", ACCOUNT + "x = [1,\n", "end of file", "invalid TOML"),
    (
        "thresholds-not-a-list",
        ACCOUNT + "[alerts]\nthresholds_pct = 150\n",
        "alerts.thresholds_pct",
        "a list",
    ),
    (
        "stale-after-zero",
        ACCOUNT + "[alerts]\nstale_after_polls = 0\n",
        "alerts.stale_after_polls",
        "between 1 and 1000",
    ),
    (
        "stale-after-float",
        ACCOUNT + "[alerts]\nstale_after_polls = 2.5\n",
        "alerts.stale_after_polls",
        "whole number",
    ),
    (
        "bad-log-format",
        ACCOUNT + '[daemon]\nlog_format = "xml"\n',
        "daemon.log_format",
        "auto, json, console",
    ),
    ("tier-refresh-zero", ACCOUNT + "[daemon]\ntier_refresh_h = 0\n", "daemon.tier_refresh_h", "above 0"),
    ("empty-state-dir", ACCOUNT + '[daemon]\nstate_dir = ""\n', "daemon.state_dir", "empty path"),
    (
        "alerts-not-a-table",
        ACCOUNT.replace("[[accounts]]", 'alerts = "x"\n[[accounts]]'),
        "alerts",
        "a table",
    ),
    ("no-accounts", "[alerts]\nstale_after_polls = 3\n", "accounts", "add at least one [[accounts]]"),
    ("accounts-empty", "accounts = []\n", "accounts", "empty"),
    ("accounts-single-table", ACCOUNT.replace("[[accounts]]", "[accounts]"), "accounts", "array of tables"),
    (
        "toml-syntax-error",
        ACCOUNT + "poll_interval_s = \n",
        "line 6, column 19",
        "invalid TOML: Invalid value",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"), [case[1:] for case in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, key: str, problem: str) -> None:
    """Each mistake is one ConfigError whose message starts with the file, then the key at fault."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message
    assert isinstance(caught.value, UserInputError)
    assert (caught.value.field, caught.value.source) == (key, str(path))


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A configuration file that is not there is a ConfigError naming it."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: file: not found$"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read: Is a directory"), (b"name = '\xff'\n", "cannot read: not UTF-8 text")],
    ids=["directory", "not-utf8"],
)
def test_unreadable_config_is_named(tmp_path: Path, content: bytes | None, problem: str) -> None:
    """A configuration path that cannot be read as text gives the reason, not a traceback."""
    path = tmp_path / "config.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"config.toml: file: {problem}$"):
        load_config(path)


def test_env_value_pasted_as_name_is_not_echoed(tmp_path: Path) -> None:
    """A key pasted into ``*_env`` instead of a variable name is refused without repeating it."""
    text = ACCOUNT.replace('secret_env = "S"', f'secret_env = "{SECRET.lower()}"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert SECRET.lower() not in str(caught.value)


# --- credentials ----------------------------------------------------------------------------------


def file_account(tmp_path: Path, secret_path: str) -> AccountConfig:
    """A Binance account whose key is in $K and whose secret is in the file at ``secret_path``."""
    text = ACCOUNT.replace('secret_env = "S"', f'secret_file = "{secret_path}"')
    return load_config(write(tmp_path, text)).accounts[0]


def test_env_credentials_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables named by the account are read from the environment, surrounding whitespace dropped."""
    monkeypatch.setenv("BINANCE_API_KEY", " the-key\n")
    monkeypatch.setenv("BINANCE_SECRET", SECRET)
    credentials = resolve_credentials(load_config(write(tmp_path, BINANCE)).accounts[0])
    assert credentials == Credentials(api_key="the-key", secret=SECRET)


@pytest.mark.parametrize(
    ("value", "problem"), [(None, "is not set"), ("  ", "is empty")], ids=["unset", "empty"]
)
def test_unset_env_var_names_account_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, problem: str
) -> None:
    """An unset or blank variable: the error names the account's key, the variable and the file."""
    monkeypatch.setenv("BINANCE_API_KEY", "key")
    if value is None:
        monkeypatch.delenv("BINANCE_SECRET", raising=False)
    else:
        monkeypatch.setenv("BINANCE_SECRET", value)
    path = write(tmp_path, BINANCE)
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(load_config(path).accounts[0])
    assert (
        str(caught.value) == f"{path}: accounts[0].secret_env: environment variable BINANCE_SECRET {problem}"
    )


def test_check_config_reports_unset_env_var(tmp_path: Path) -> None:
    """check-config resolves credentials, so it catches what a bare load cannot."""
    path = write(tmp_path, BINANCE)
    with pytest.raises(
        ConfigError, match=r"accounts\[0\]\.api_key_env: environment variable BINANCE_API_KEY"
    ):
        check_config(path, environ={})


def test_file_credentials_resolve_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative secret_file is taken from the configuration's directory, not the working directory."""
    monkeypatch.setenv("K", "key")
    (tmp_path / "secrets").mkdir()
    secret_file(tmp_path / "secrets", "binance")
    monkeypatch.chdir("/")
    assert resolve_credentials(file_account(tmp_path, "secrets/binance")).secret == SECRET


@pytest.mark.parametrize(
    ("mode", "problem"),
    [(0o644, "readable by group or others (mode 0644)"), (0o640, "(mode 0640)"), (0o602, "writable")],
    ids=["world-readable", "group-readable", "world-writable"],
)
def test_loose_secret_file_is_refused(tmp_path: Path, mode: int, problem: str) -> None:
    """A secret file that group or others can read (or write) is refused, with the fix in the message."""
    path = secret_file(tmp_path, "secret", mode=mode)
    account = file_account(tmp_path, str(path))
    with pytest.raises(ConfigError) as caught:
        resolve_credentials(account, {"K": "key"})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'margin-monitor.toml'}: accounts[0].secret_file: {path} is ")
    assert problem in message
    assert message.endswith("chmod 600 it")
    assert SECRET not in message


def test_missing_secret_file_is_named(tmp_path: Path) -> None:
    """A secret file that does not exist is named in the error."""
    account = file_account(tmp_path, str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.secret_file: .*gone does not exist$"):
        resolve_credentials(account, {"K": "key"})


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    """A file holding only whitespace is an error, not an empty key sent to the exchange."""
    account = file_account(tmp_path, str(secret_file(tmp_path, "secret", value="")))
    with pytest.raises(ConfigError, match=r"is empty$"):
        resolve_credentials(account, {"K": "key"})


def test_binary_secret_file_is_refused(tmp_path: Path) -> None:
    """A secret file that is not text (a DER key, a wrong file) is named, never printed."""
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe\x00")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"cannot read .*secret: not UTF-8 text$"):
        resolve_credentials(file_account(tmp_path, str(path)), {"K": "key"})


def test_secret_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    """A directory where a secret file should be is named as such."""
    account = file_account(tmp_path, str(tmp_path))
    with pytest.raises(ConfigError, match=r"is not a regular file$"):
        resolve_credentials(account, {"K": "key"})


@pytest.mark.parametrize("template", ["$CREDENTIALS_DIRECTORY/secret", "${CREDENTIALS_DIRECTORY}/secret"])
def test_credentials_directory_is_substituted(tmp_path: Path, template: str) -> None:
    """Both spellings of $CREDENTIALS_DIRECTORY are replaced by systemd's directory when read."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    secret_file(credentials, "secret")
    account = file_account(tmp_path, template)
    assert account.secret == SecretRef("secret", "file", template)
    environ = {"K": "key", "CREDENTIALS_DIRECTORY": str(credentials)}
    assert resolve_credentials(account, environ).secret == SECRET


def test_credentials_directory_allows_systemd_group_mode(tmp_path: Path) -> None:
    """Under DynamicUser= systemd shows credentials as 0440: group bits are no leak there, world bits are."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    path = secret_file(credentials, "secret", mode=0o440)
    account = file_account(tmp_path, "$CREDENTIALS_DIRECTORY/secret")
    environ = {"K": "key", "CREDENTIALS_DIRECTORY": str(credentials)}
    assert resolve_credentials(account, environ).secret == SECRET
    path.chmod(0o444)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0444\)"):
        resolve_credentials(account, environ)


def test_unset_credentials_directory_is_explained(tmp_path: Path) -> None:
    """Outside systemd $CREDENTIALS_DIRECTORY is unset, and the error says where it comes from."""
    account = file_account(tmp_path, "$CREDENTIALS_DIRECTORY/secret")
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.secret_file: .*LoadCredential="):
        resolve_credentials(account, {"K": "key"})


def test_credentials_never_show_their_values() -> None:
    """Repr and str show which secrets are present; secrets() and ccxt_options() hand the values over."""
    credentials = Credentials(api_key="the-key", secret=SECRET)
    for shown in (repr(credentials), str(credentials), f"{credentials}", f"{[credentials]}"):
        assert "the-key" not in shown
        assert SECRET not in shown
    assert repr(credentials) == "Credentials(api_key='***', secret='***', password=None)"
    assert credentials.secrets() == ("the-key", SECRET)
    assert credentials.ccxt_options() == {"apiKey": "the-key", "secret": SECRET}
