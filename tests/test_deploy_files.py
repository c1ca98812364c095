"""deploy/: the Dockerfile, the compose file, the Kubernetes manifests, the alert rules and the dashboard.

Docker and a cluster cannot run here, so these tests read the files and check what would break a
deployment: the image and its command, the configuration and secret mounts against the paths the
configuration names, the shard variables, the health check, and that the rules and the dashboard
query only the metric names the daemon exports. The shipped configuration goes through the
daemon's own loader, and the image's health check command runs against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from monitor.config import check_config, load_config
from monitor.sharding import SHARDS_ENV, Shard, shard_from

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
CONFIG_FILE = DEPLOY / "config" / "margin-monitor.toml"
CONFIG_IN_CONTAINER = "/etc/margin-monitor/margin-monitor.toml"
COMMAND = ["margin-monitor", "run", "--config", CONFIG_IN_CONTAINER]
APP_UID = 10001

#: The metric names agreed with the metrics work (as exposed: counters end in _total).
AGREED_METRICS = frozenset(
    {
        "margin_monitor_margin_ratio",
        "margin_monitor_account_level",
        "margin_monitor_margin_balance",
        "margin_monitor_maintenance_margin",
        "margin_monitor_drift_ratio",
        "margin_monitor_last_update_timestamp_seconds",
        "margin_monitor_poll_duration_seconds",
        "margin_monitor_exchange_requests_total",
        "margin_monitor_notifications_sent_total",
        "margin_monitor_notifications_failed_total",
        "margin_monitor_outbox_depth",
        "margin_monitor_build_info",
        "margin_monitor_accounts",
    }
)
HISTOGRAMS = frozenset({"margin_monitor_poll_duration_seconds"})
LEVELS = frozenset({"ok", "warning", "danger", "critical", "liquidation", "blind", "unknown"})
_METRIC = re.compile(r"\bmargin_monitor_[a-z_]+\b")


def metric_names(expr: str) -> set[str]:
    """The ``margin_monitor_*`` names an expression uses, histogram series folded to their family."""
    names = set()
    for name in _METRIC.findall(expr):
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(family if family in HISTOGRAMS else name)
    return names


def assert_agreed(expr: str) -> None:
    """``expr`` names at least one metric, each from the agreed list, and its brackets balance."""
    names = metric_names(expr)
    assert names, f"no margin_monitor metric in {expr!r}"
    assert names <= AGREED_METRICS, f"{sorted(names - AGREED_METRICS)} are not agreed metric names ({expr!r})"
    for level in re.findall(r'level="([a-z_]+)"', expr):
        assert level in LEVELS, expr
    for opening, closing in ("()", "[]", "{}"):
        assert expr.count(opening) == expr.count(closing), expr


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file."""
    documents = [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]
    assert all(isinstance(document, dict) for document in documents), path
    return documents


def shipped_config_text() -> str:
    """The configuration the compose file mounts."""
    return CONFIG_FILE.read_text(encoding="utf-8")


def secret_names(config_text: str) -> set[str]:
    """The file names the configuration reads under ``$CREDENTIALS_DIRECTORY``."""
    document = tomllib.loads(config_text)
    names = set()
    for table in [*document["accounts"], *document.get("channels", [])]:
        for key, value in table.items():
            if key.endswith("_file"):
                assert value.startswith("$CREDENTIALS_DIRECTORY/"), f"{key} = {value!r}: not under the mount"
                names.add(value.removeprefix("$CREDENTIALS_DIRECTORY/"))
    return names


def write_secrets(directory: Path, names: set[str], mode: int) -> None:
    """Placeholder secret files, as the container would see them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text(f"placeholder-{name}\n", encoding="utf-8")
        path.chmod(mode)


# --- the configuration the containers run ---------------------------------------------------------


def test_the_shipped_configuration_passes_check_config(tmp_path: Path) -> None:
    """With its secrets as compose (0400) or Kubernetes (0440, group fsGroup) mounts them, it is valid."""
    names = secret_names(shipped_config_text())
    assert names == {"main_api_key", "main_api_secret", "hedge_api_key", "hedge_api_secret"}
    for mode in (0o400, 0o440):
        credentials = tmp_path / f"credentials-{mode:o}"
        write_secrets(credentials, names, mode)
        summary = check_config(CONFIG_FILE, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
        assert "ok: 2 accounts" in summary
        assert "mqtt" in summary
    config = load_config(CONFIG_FILE, environ={})
    assert config.daemon.state_dir == Path("/var/lib/margin-monitor")
    assert config.daemon.log_format == "json"
    document = tomllib.loads(shipped_config_text())
    assert (
        document["daemon"]["http_listen"] == "0.0.0.0:9778"
    )  # reachable from the healthcheck and Prometheus


def test_a_world_readable_secret_is_still_refused(tmp_path: Path) -> None:
    """The group bit is tolerated inside $CREDENTIALS_DIRECTORY; the others bit never is."""
    credentials = tmp_path / "credentials"
    write_secrets(credentials, secret_names(shipped_config_text()), 0o444)
    with pytest.raises(Exception, match="readable by others"):
        check_config(CONFIG_FILE, environ={"CREDENTIALS_DIRECTORY": str(credentials)})


# --- the Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    """The arguments of every ``name`` instruction."""
    return [rest for keyword, rest in dockerfile() if keyword == name]


def test_dockerfile_builds_a_slim_non_root_image() -> None:
    """python:3.11-slim in both stages, a numeric non-root user, the daemon as the command, SIGTERM."""
    stages = instruction("FROM")
    assert len(stages) == 2
    assert all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    assert any("--from=build" in copy for copy in instruction("COPY"))
    (user,) = instruction("USER")
    assert user == f"{APP_UID}:{APP_UID}"
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    assert [json.loads(cmd) for cmd in instruction("CMD")] == [COMMAND]
    assert instruction("EXPOSE") == ["9778"]
    assert instruction("VOLUME") == ['["/var/lib/margin-monitor"]']


def test_dockerfile_copies_only_what_the_dockerignore_lets_in() -> None:
    """Every build-stage COPY source exists and is allowed by .dockerignore (which excludes all else)."""
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = [rest.split()[:-1] for rest in instruction("COPY") if not rest.startswith("--from")]
    for source in (item for group in sources for item in group):
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is not let into the build context"
    assert "deploy" not in allowed  # deploy/secrets/ must never reach an image


def healthcheck_command() -> tuple[list[str], str]:
    """The HEALTHCHECK's exec-form command and the URL the image's environment gives it."""
    (healthcheck,) = instruction("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    environment = " ".join(instruction("ENV"))
    url = re.search(r"MARGIN_MONITOR_HEALTHZ=(\S+)", environment)
    assert url is not None
    return command, url[1]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads what was asked

    def do_GET(self) -> None:
        _Health.paths.append(self.path)
        self.send_response(_Health.status)
        self.end_headers()
        self.wfile.write(b"ok" if _Health.status == 200 else b"stale: main")

    def log_message(self, *_: object) -> None:
        """Quiet."""


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    """A local HTTP server answering with ``_Health.status``."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_asks_healthz_with_urllib_and_fails_on_503(health_server: http.server.HTTPServer) -> None:
    """The image's own health check command: exit 0 on 200, non-zero on 503 and on no answer."""
    command, url = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert url == "http://127.0.0.1:9778/healthz"
    (healthcheck,) = instruction("HEALTHCHECK")
    assert "--start-period=" in healthcheck  # the first assessments take a few polls
    port = health_server.server_address[1]
    local = {"MARGIN_MONITOR_HEALTHZ": f"http://127.0.0.1:{port}/healthz", "PATH": ""}
    outcomes = []
    for status in (200, 503):
        _Health.status = status
        done = subprocess.run(
            [sys.executable, *command[1:]], env=local, capture_output=True, timeout=30, check=False
        )
        outcomes.append(done.returncode)
    health_server.shutdown()
    health_server.server_close()
    refused = subprocess.run(
        [sys.executable, *command[1:]], env=local, capture_output=True, timeout=30, check=False
    )
    assert outcomes[0] == 0
    assert outcomes[1] != 0
    assert refused.returncode != 0
    assert _Health.paths[-2:] == ["/healthz", "/healthz"]


# --- docker-compose.yml -------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    """deploy/docker-compose.yml."""
    (document,) = load_yaml(DEPLOY / "docker-compose.yml")
    return document


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A service's short-syntax volumes: target -> (source, options)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        found[target] = (source, ",".join(options))
    return found


def test_compose_runs_the_daemon_with_its_config_read_only_and_state_in_a_volume() -> None:
    """The image built from deploy/Dockerfile, the run command, the config mounted read-only."""
    document = compose()
    daemon = document["services"]["margin-monitor"]
    assert (
        DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]
    ).resolve() == DEPLOY / "Dockerfile"
    assert daemon["command"] == COMMAND
    volumes = mounts(daemon)
    source, options = volumes[CONFIG_IN_CONTAINER]
    assert (DEPLOY / source).resolve() == CONFIG_FILE
    assert options == "ro"
    state_dir = str(load_config(CONFIG_FILE, environ={}).daemon.state_dir)
    assert volumes[state_dir][0] in document["volumes"]  # a named volume, not a host directory
    assert daemon["read_only"] is True
    assert daemon["cap_drop"] == ["ALL"]
    assert daemon["stop_signal"] == "SIGTERM"
    assert "healthcheck" not in daemon  # the image's HEALTHCHECK on /healthz applies
    assert all(
        port.startswith("127.0.0.1:")
        for service in document["services"].values()
        for port in service.get("ports", [])
    )
    assert "9778:9778" in daemon["ports"][0]


def test_compose_secrets_are_the_files_the_config_reads() -> None:
    """Each secret the configuration names is a compose secret of the daemon, under $CREDENTIALS_DIRECTORY."""
    document = compose()
    daemon = document["services"]["margin-monitor"]
    names = secret_names(shipped_config_text())
    assert set(daemon["secrets"]) == names
    assert set(document["secrets"]) == names
    assert daemon["environment"]["CREDENTIALS_DIRECTORY"] == "/run/secrets"  # where compose mounts them
    for name in names:
        assert PurePosixPath(document["secrets"][name]["file"]) == PurePosixPath("./secrets") / name
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignored  # no key is ever committed from there


def test_compose_broker_and_observability_profile() -> None:
    """Mosquitto always, named as the config's MQTT host; Prometheus and Grafana only with the profile."""
    document = compose()
    services = document["services"]
    (mqtt,) = tomllib.loads(shipped_config_text())["channels"]
    assert mqtt["host"] in services
    assert "profiles" not in services["margin-monitor"]
    assert "profiles" not in services[mqtt["host"]]
    broker_conf = mounts(services[mqtt["host"]])["/mosquitto/config/mosquitto.conf"][0]
    assert f"listener {mqtt['port']}" in (DEPLOY / broker_conf).read_text()
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for source, _ in mounts(services[name]).values():
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    prometheus = mounts(services["prometheus"])
    (scrape,) = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert scrape["static_configs"][0]["targets"] == ["margin-monitor:9778"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert all(rule in prometheus for rule in rules)
    assert (DEPLOY / prometheus[rules[0]][0]).resolve() == DEPLOY / "prometheus" / "alerts.yml"
    grafana = mounts(services["grafana"])
    (provider,) = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/margin-monitor.yml").read_text())[
        "providers"
    ]
    dashboards = grafana[provider["options"]["path"]][0]
    assert (DEPLOY / dashboards / "margin-monitor.json").exists()


# --- Kubernetes -------------------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/kubernetes/, by (kind, name)."""
    objects = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for document in load_yaml(path):
            if document.get("kind") == "Kustomization":
                continue
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


def test_kustomization_lists_existing_files_and_leaves_the_secret_out() -> None:
    """``kubectl apply -k`` finds every resource; the placeholder Secret is never applied over real keys."""
    (kustomization,) = load_yaml(KUBE / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((KUBE / resource).exists() for resource in resources)
    assert "secret.yaml" not in resources
    assert {path.name for path in KUBE.glob("*.yaml")} == {*resources, "secret.yaml", "kustomization.yaml"}


def statefulset() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The StatefulSet, its pod spec and its one container."""
    workload = manifests()["StatefulSet", "margin-monitor"]
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return workload, pod, container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment."""
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_statefulset_replicas_are_the_shards_and_each_pod_finds_its_own() -> None:
    """``replicas`` = MARGIN_MONITOR_SHARDS, and pods ``<name>-0`` .. ``<name>-(N-1)`` are shards 0 .. N-1."""
    workload, _, container = statefulset()
    replicas = workload["spec"]["replicas"]
    environment = env_of(container)
    assert environment[SHARDS_ENV] == str(replicas)
    assert replicas > 1
    name = workload["metadata"]["name"]
    shards = [
        shard_from(None, {**environment, "HOSTNAME": f"{name}-{ordinal}"}) for ordinal in range(replicas)
    ]
    assert [(shard.index, shard.count) for shard in shards if shard is not None] == [
        (ordinal, replicas) for ordinal in range(replicas)
    ]
    assert shards[0] != Shard(0, 1)


def test_statefulset_runs_the_image_command_with_config_secret_and_state_mounts() -> None:
    """The image's command; ConfigMap, Secret and claim template mounted where the config looks."""
    objects = manifests()
    workload, pod, container = statefulset()
    assert container["command"] == COMMAND
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    # The configuration: a ConfigMap whose text is the compose one, mounted read-only.
    config_mount = mounted[str(PurePosixPath(CONFIG_IN_CONTAINER).parent)]
    assert config_mount["readOnly"] is True
    config_map = objects["ConfigMap", volumes[config_mount["name"]]["configMap"]["name"]]
    assert config_map["data"][PurePosixPath(CONFIG_IN_CONTAINER).name] == shipped_config_text()
    # The keys: the Secret's keys are the files the config reads, mounted at $CREDENTIALS_DIRECTORY.
    credentials = env_of(container)["CREDENTIALS_DIRECTORY"]
    keys_mount = mounted[credentials]
    assert keys_mount["readOnly"] is True
    secret_volume = volumes[keys_mount["name"]]["secret"]
    (secret,) = load_yaml(KUBE / "secret.yaml")
    assert secret_volume["secretName"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == secret_names(shipped_config_text())
    assert secret_volume["defaultMode"] & 0o007 == 0  # never readable by others: the daemon refuses that
    # State: one claim per pod, at the config's state_dir.
    state_dir = str(load_config(CONFIG_FILE, environ={}).daemon.state_dir)
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert mounted[state_dir]["name"] == claim["metadata"]["name"]
    assert claim["metadata"]["name"] not in volumes


def test_statefulset_is_hardened_and_probes_healthz() -> None:
    """Non-root with the image's uid, read-only root, no privileges; probes on /healthz at http_listen."""
    objects = manifests()
    workload, pod, container = statefulset()
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == APP_UID
    assert context["fsGroup"] == APP_UID  # the Secret's files are readable through the group
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}  # noqa: S108 - a mount path
    (port,) = container["ports"]
    listen = tomllib.loads(shipped_config_text())["daemon"]["http_listen"]
    assert port["containerPort"] == int(listen.rsplit(":", 1)[1])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # The headless Service the StatefulSet names selects its pods.
    service = objects["Service", workload["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_shared_broker_is_where_the_config_points() -> None:
    """A Mosquitto Deployment behind a Service named as the config's MQTT host, on its port."""
    objects = manifests()
    (mqtt,) = tomllib.loads(shipped_config_text())["channels"]
    service = objects["Service", mqtt["host"]]
    assert [port["port"] for port in service["spec"]["ports"]] == [mqtt["port"]]
    broker = objects["Deployment", "mosquitto"]
    assert service["spec"]["selector"].items() <= broker["spec"]["template"]["metadata"]["labels"].items()
    conf = objects["ConfigMap", "mosquitto-config"]["data"]["mosquitto.conf"]
    assert f"listener {mqtt['port']}" in conf


# --- alert rules and dashboard ------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/alerts.yml."""
    (document,) = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_use_agreed_metrics_and_are_well_formed() -> None:
    """Each rule: a name, an expression on agreed metrics, a severity, a summary, a valid ``for``."""
    found = rules()
    assert len({rule["alert"] for rule in found}) == len(found)
    for rule in found:
        if rule["alert"] == "MarginMonitorDown":
            assert rule["expr"].startswith('up{job="margin-monitor"}')
        else:
            assert_agreed(rule["expr"])
        assert rule["labels"]["severity"] in {"warning", "critical", "page"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s"))
    used = set().union(*(metric_names(rule["expr"]) for rule in found))
    assert {
        "margin_monitor_margin_ratio",
        "margin_monitor_account_level",
        "margin_monitor_notifications_failed_total",
        "margin_monitor_outbox_depth",
        "margin_monitor_last_update_timestamp_seconds",
    } <= used


def test_alert_rules_include_the_dead_mans_switch() -> None:
    """Stale per account (time() - max by (account) ...), and absent altogether."""
    expressions = {rule["alert"]: " ".join(rule["expr"].split()) for rule in rules()}
    stale = [e for e in expressions.values() if e.startswith("time() - max by (account) (")]
    assert any(
        "margin_monitor_last_update_timestamp_seconds" in e and re.search(r"\) > \d+$", e) for e in stale
    )
    assert "absent(margin_monitor_last_update_timestamp_seconds)" in expressions.values()
    ratio = [e for e in expressions.values() if e.startswith("margin_monitor_margin_ratio <")]
    assert sorted(float(e.split("<")[1]) for e in ratio) == [
        1.2,
        1.3,
        1.5,
    ]  # the default thresholds, as fractions


def dashboard_expressions(node: object) -> list[str]:
    """Every PromQL expression in a Grafana dashboard: targets' ``expr`` and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "definition"} and isinstance(value, str):
                found.append(value)
            else:
                found.extend(dashboard_expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_expressions(item))
    return found


def test_dashboard_parses_and_queries_only_agreed_metrics() -> None:
    """Every panel has a query; every query names agreed metrics; the key panels are there."""
    document = json.loads((DEPLOY / "grafana" / "dashboards" / "margin-monitor.json").read_text())
    assert document["uid"] == "margin-monitor"
    for panel in document["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert_agreed(target["expr"])
    expressions = dashboard_expressions(document)
    for expr in expressions:
        assert_agreed(expr)
    used = set().union(*(metric_names(expr) for expr in expressions))
    assert used == AGREED_METRICS  # every agreed metric has a place on the dashboard
    titles = " ".join(panel["title"] for panel in document["panels"]).lower()
    for wanted in ("margin ratio", "risk level", "last update", "poll duration", "notifications"):
        assert wanted in titles
    (ratio,) = [panel for panel in document["panels"] if panel["title"].startswith("Margin ratio")]
    steps = [step["value"] for step in ratio["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 1.0, 1.2, 1.3, 1.5]
    assert ratio["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"].startswith("line")
    (datasource,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_readme_says_what_was_and_was_not_run() -> None:
    """The deployment section is honest about what this repository's tests exercise."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Docker, Kubernetes and sharding", 1)[1].split("\n## ", 1)[0]
    for command in (*COMMAND[:2], "--shard", SHARDS_ENV, "--profile observability", "kubectl apply -k"):
        assert command in section, command
    assert "not run" in section
    assert "docker build -f deploy/Dockerfile" in section
