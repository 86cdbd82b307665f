"""The production stack (docker-compose.yml and deploy/) against the settings the code reads.

No Docker engine runs on this machine, so the stack is not started here. Instead the
compose file is loaded with PyYAML, its ``${VAR}`` references are filled from
``deploy/env.example`` (as `docker compose` fills them from ``.env``), and every
service's configuration is checked against :class:`gatewatch.settings.GatewatchSettings`
built from that service's own environment: variable names, ports, topics and partition
counts, Prometheus targets, the ClickHouse URL, Grafana's provisioning, the Alertmanager
URL. The configuration files are validated by the real checkers: ``promtool check
config``/``check rules`` (Debian ``prometheus``), ``amtool check-config`` (Debian
``prometheus-alertmanager``) and ``nginx -t`` (Debian ``nginx-light``); ``make test``
installs them, and a missing one fails the test.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from dashboards.clickhouse import DATASOURCE_TYPE, DATASOURCE_UID, PLUGIN_VERSION
from gatewatch.broker import topic_partitions
from gatewatch.settings import GatewatchSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
#: Services that run the gatewatch image and read GATEWATCH_* settings.
GATEWATCH_SERVICES = ("migrate", "worker", "gateway")
#: One-shot services (exit when done): no healthcheck, restart "no".
ONE_SHOT = ("kafka-init", "migrate")
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over strings of a loaded document: ``${X}``,
    ``${X:-default}``, ``${X-default}``, ``${X:?error}`` (raises KeyError when unset), ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        if op in (":-", "-"):
            return env.get(name) or arg if op == ":-" else env.get(name, arg)
        if op in (":?", "?") and not env.get(name):
            raise KeyError(f"{name} is required: {arg}")
        return env[name]

    return _VAR.sub(replace, value)


def required_variables(text: str) -> set[str]:
    """Variables the compose text requires (``${X:?...}``)."""
    return {m.group(1) for m in _VAR.finditer(text) if m.group(2) in (":?", "?")}


def referenced_variables(text: str) -> set[str]:
    return {m.group(1) or m.group(4) for m in _VAR.finditer(text) if m.group(0) != "$$"}


RAW = yaml.safe_load(COMPOSE_FILE.read_text())
ENV = read_env_file(ENV_EXAMPLE)
COMPOSE = interpolate({k: v for k, v in RAW.items() if not k.startswith("x-")}, ENV)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> GatewatchSettings:
    """The settings a process of ``service`` builds from its environment (and nothing else)."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWATCH_"):
            monkeypatch.delenv(name)
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    return GatewatchSettings()


def settings_field_path(env_name: str) -> list[str] | None:
    """``GATEWATCH_ALERTING__ALERTMANAGER_URL`` → ``["alerting", "alertmanager_url"]`` if every
    part names a field of GatewatchSettings (nested models through ``__``), else None."""
    parts = env_name.removeprefix("GATEWATCH_").lower().split("__")
    model: type[BaseModel] | None = GatewatchSettings
    for part in parts:
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return parts


def container_port(service: str, default: int) -> int:
    """The port a service listens on inside the network (its ``--web.listen-address`` or default)."""
    for arg in SERVICES[service].get("command") or []:
        if isinstance(arg, str) and arg.startswith("--web.listen-address="):
            return int(arg.rsplit(":", 1)[1])
    return default


def bind_mounts(service: str) -> Iterator[tuple[Path, str]]:
    """``(host path, container path)`` of the service's bind mounts (named volumes left out)."""
    for volume in SERVICES[service].get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield (ROOT / source).resolve(), target


def host_path(service: str, container_path: str) -> Path:
    """The file of this repository that ``container_path`` is inside ``service``'s container."""
    for source, target in bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target):].lstrip("/") if source.is_dir() else source
    raise AssertionError(f"{container_path} is not mounted into {service}")


# ----------------------------------------------------------------------- services


def test_every_service_is_pinned_healthchecked_and_its_mounts_exist() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and re.search(r"\d", tag) and tag != "latest", f"{name}: image {image} is not pinned"
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
        else:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for source, _ in bind_mounts(name):
            if source == (ROOT / ENV["STACK_KEYS_DIR"]).resolve():
                continue  # the operator's API keys (gatewatch keys create --keys-file keys/keys.toml)
            assert source.exists(), f"{name} mounts {source}, which does not exist"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition["condition"] == wanted, (name, dependency)
    for name in GATEWATCH_SERVICES:
        assert "build" in SERVICES[name], name


def test_required_variables_are_in_the_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    assert required_variables(text) <= set(ENV), required_variables(text) - set(ENV)
    assert referenced_variables(text) <= set(ENV), referenced_variables(text) - set(ENV)
    # A compose variable named GATEWATCH_* is a setting passed on, never a stack knob.
    for name in referenced_variables(text) | set(ENV):
        if name.startswith("GATEWATCH_"):
            assert settings_field_path(name), f"{name} looks like a setting but GatewatchSettings has no such field"


@pytest.mark.parametrize("service", GATEWATCH_SERVICES)
def test_gatewatch_environment_names_are_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment(service)
    assert env, service
    for name in env:
        assert name.startswith("GATEWATCH_"), f"{service}: {name} is not read by gatewatch"
        assert settings_field_path(name), f"{service}: {name} is not a field of GatewatchSettings"
    settings = settings_of(service, monkeypatch)  # validates every value
    for name, value in env.items():
        field: Any = settings
        for part in settings_field_path(name) or []:
            field = getattr(field, part)
        assert field is not None, (service, name, value)
    # Every gatewatch process agrees on the broker, the topics and the signing key.
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.decision_signing_key == ENV["GATEWATCH_DECISION_SIGNING_KEY"]
    assert topic_partitions(settings) == topic_partitions(settings_of("worker", monkeypatch))


def test_admin_endpoints_off_loopback_have_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatewatch import admin_auth

    gateway, worker = settings_of("gateway", monkeypatch), settings_of("worker", monkeypatch)
    admin_auth.require_token_if_exposed(gateway.admin_host, gateway.admin_token, "gateway metrics")
    admin_auth.require_token_if_exposed(worker.worker_web_host, worker.admin_token, "worker API")
    assert gateway.admin_token == worker.admin_token == ENV["GATEWATCH_ADMIN_TOKEN"]
    assert gateway.admin_host == worker.worker_web_host == "0.0.0.0"  # reachable by Prometheus


def test_kafka_listens_where_the_settings_point(monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment("kafka")
    host, port = settings_of("worker", monkeypatch).bootstrap_servers.split(":")
    assert host == "kafka" and f"PLAINTEXT://kafka:{port}" == env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://:{port}" in env["KAFKA_LISTENERS"].split(",")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from kafka-init only


def init_topics() -> dict[str, tuple[int, dict[str, str]]]:
    """Topics the kafka-init service creates: name → (partitions, configs)."""
    [script] = SERVICES["kafka-init"]["command"]
    topics = {}
    for line in script.splitlines():
        args = shlex.split(line)
        if not args or args[0] != "topic":
            continue
        opts: dict[str, list[str]] = {}
        for flag, value in zip(args[1::2], args[2::2]):
            opts.setdefault(flag, []).append(value)
        topics[opts["--topic"][0]] = (int(opts["--partitions"][0]),
                                      dict(c.split("=", 1) for c in opts.get("--config", [])))
    return topics


def test_init_service_creates_the_settings_topics_with_their_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of("worker", monkeypatch)
    topics = init_topics()
    assert {name: p for name, (p, _) in topics.items()} == topic_partitions(settings)
    assert topics[settings.topic_decisions][1]["cleanup.policy"] == "compact"
    assert settings.requests_partitions >= 2 * int(ENV["STACK_WORKERS"])  # room to scale the workers
    assert "--bootstrap-server kafka:9092" in SERVICES["kafka-init"]["command"][0]


def test_store_url_names_the_clickhouse_service(monkeypatch: pytest.MonkeyPatch) -> None:
    ch = environment("clickhouse")
    for service in ("migrate", "worker"):
        settings = settings_of(service, monkeypatch)
        url = urlsplit(settings.clickhouse_url or "")
        assert (url.hostname, url.port, url.path.strip("/")) == ("clickhouse", 8123, ch["CLICKHOUSE_DB"])
        assert (url.username, url.password) == (ch["CLICKHOUSE_USER"], ch["CLICKHOUSE_PASSWORD"])
        assert settings.requests_ttl_days and settings.rollups_ttl_days  # retention on a server
    assert settings_of("gateway", monkeypatch).clickhouse_url is None  # no store password in the gateways


def test_the_worker_alerts_the_alertmanager_service(monkeypatch: pytest.MonkeyPatch) -> None:
    url = urlsplit(settings_of("worker", monkeypatch).alerting.alertmanager_url or "")
    assert (url.scheme, url.hostname, url.port) == ("http", "alertmanager", container_port("alertmanager", 9093))


def test_healthchecks_use_the_settings_of_their_service() -> None:
    for service in ("gateway", "worker"):
        assert SERVICES[service]["healthcheck"]["test"] == ["CMD", "python", "-m", "gatewatch.healthcheck", service]
    assert SERVICES["gateway"]["command"] == ["python", "-m", "inline.serve"]  # ports from the settings
    assert SERVICES["worker"]["command"][:4] == ["python", "-m", "streams", "worker"]
    assert SERVICES["migrate"]["command"] == ["python", "-m", "storage", "migrate"]


# ------------------------------------------------------------------------ edge


def nginx_conf() -> str:
    return host_path("edge", "/etc/nginx/conf.d/default.conf").read_text()


def test_edge_proxies_to_the_gateways_and_is_their_only_trusted_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = settings_of("gateway", monkeypatch)
    conf = nginx_conf()
    [target] = re.findall(r"set \$gateway (\S+);", conf)
    url = urlsplit(target)
    assert (url.hostname, url.port) == ("gateway", gateway.listen_port)
    assert "proxy_pass $gateway;" in conf
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf  # set, not appended
    assert gateway.forwarded_header == "x-forwarded-for"
    edge_ip = ip_address(SERVICES["edge"]["networks"]["default"]["ipv4_address"])
    [subnet] = [ip_network(c["subnet"]) for c in COMPOSE["networks"]["default"]["ipam"]["config"]]
    assert edge_ip in subnet
    assert [ip_network(p) for p in gateway.trusted_proxies] == [ip_network(f"{edge_ip}/32")]
    assert gateway.rate_limit_redis_url == "redis://redis:6379/0" and "redis" in SERVICES
    [published] = SERVICES["edge"]["ports"]
    assert published.endswith(":80") and "listen 80;" in conf
    assert "ports" not in SERVICES["gateway"]  # clients reach the gateways through the edge only
    keys_dir = Path(gateway.keys_file).parent
    assert any(target == str(keys_dir) for _, target in bind_mounts("gateway"))  # the directory, not the file


def test_nginx_accepts_the_edge_config(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert nginx, "nginx is not installed: apt-get install nginx-light (make test does)"
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path}/body;\n"
        f" proxy_temp_path {tmp_path}/proxy;\n include {host_path('edge', '/etc/nginx/conf.d/default.conf')};\n}}\n")
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------ prometheus, alertmanager


def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(host_path("prometheus", "/etc/prometheus/prometheus.yml").read_text())


def scrape_target(job: str) -> tuple[list[str], int, dict[str, Any]]:
    [config] = [c for c in prometheus_config()["scrape_configs"] if c["job_name"] == job]
    [sd] = config["dns_sd_configs"]
    return sd["names"], sd["port"], config


def test_prometheus_scrapes_every_gateway_and_worker_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, worker = settings_of("gateway", monkeypatch), settings_of("worker", monkeypatch)
    for job, port, service in (("gateway", gateway.admin_port, "gateway"),
                               ("worker", worker.worker_web_port, "worker")):
        names, scraped_port, config = scrape_target(job)
        assert names == [service] and scraped_port == port, job
        assert config["metrics_path"] == "/metrics"
        # The admin token, from the secret compose fills with the gatewatch services' token.
        secret_path = config["authorization"]["credentials_file"]
        secret = secret_path.removeprefix("/run/secrets/")
        assert secret in SERVICES["prometheus"]["secrets"]
        assert RAW["secrets"][secret] == {"environment": "GATEWATCH_ADMIN_TOKEN"}
    [alerting] = prometheus_config()["alerting"]["alertmanagers"]
    assert alerting["static_configs"][0]["targets"] == [f"alertmanager:{container_port('alertmanager', 9093)}"]


def test_prometheus_rules_name_metrics_the_processes_export() -> None:
    rules = yaml.safe_load(host_path("prometheus", "/etc/prometheus/rules.yml").read_text())
    exported = (ROOT / "inline" / "metrics.py").read_text() + (ROOT / "streams" / "metrics.py").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            # A counter's samples end in _total, a histogram's in _bucket, _count and _sum.
            for metric in re.findall(r"\b(gatewatch_\w+?)(?:_total|_bucket|_count|_sum)?\b", rule["expr"]):
                assert metric in exported, f"{rule['alert']}: {metric} is not exported"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: apt-get install {package} (make test does)"
    return path


def test_decisions_late_alert_fires_for_a_slow_gateway_only(tmp_path: Path) -> None:
    """GatewatchDecisionsLate, evaluated by Prometheus' own rule engine (``promtool test
    rules``) on the gateway's delivery histogram: a gateway applying decisions 1-2.5 s after
    their publication alerts after its ``for``; one applying them within 10 ms does not."""
    promtool = _tool("promtool", "prometheus")
    rules_file = host_path("prometheus", "/etc/prometheus/rules.yml")
    rule = next(r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]
                if r["alert"] == "GatewatchDecisionsLate")
    bucket = "gatewatch_decision_delivery_seconds_bucket"
    # Ten decisions a minute each: the slow gateway's all in (1, 2.5] s, the fast one's under 10 ms.
    per_le = {"slow": {"0.01": 0, "1.0": 0, "2.5": 10, "+Inf": 10},
              "fast": {"0.01": 10, "1.0": 10, "2.5": 10, "+Inf": 10}}
    series = [{"series": f'{bucket}{{instance="{instance}",le="{le}"}}', "values": f"0+{rate}x40"}
              for instance, buckets in per_le.items() for le, rate in buckets.items()]
    expected = {k: v.replace("{{ $labels.instance }}", "slow") for k, v in rule["annotations"].items()}
    spec = {"rule_files": [str(rules_file)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
                {"eval_time": "3m", "alertname": "GatewatchDecisionsLate", "exp_alerts": []},   # pending
                {"eval_time": "30m", "alertname": "GatewatchDecisionsLate", "exp_alerts": [
                    {"exp_labels": {**rule["labels"], "instance": "slow"}, "exp_annotations": expected}]}]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = _tool("promtool", "prometheus")
    config = prometheus_config()
    # The container paths, as the files they are in this repository (and the secret as a file).
    config["rule_files"] = [str(host_path("prometheus", p)) for p in config["rule_files"]]
    (tmp_path / "admin_token").write_text(ENV["GATEWATCH_ADMIN_TOKEN"])
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(tmp_path / "admin_token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    for args in (["check", "config", str(tmp_path / "prometheus.yml")],
                 ["check", "rules", *config["rule_files"]]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    path = host_path("alertmanager", "/etc/alertmanager/alertmanager.yml")
    command = SERVICES["alertmanager"]["command"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in command
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    route = yaml.safe_load(path.read_text())["route"]
    # The workers' alerts carry these labels (streams/alertmanager.py): one group per offender.
    assert {"alertname", "scope", "value"} <= set(route["group_by"])


# --------------------------------------------------------------------- grafana


def test_grafana_provisioning_mounts_point_at_the_repository_files() -> None:
    provisioning = "/etc/grafana/provisioning"
    for kind in ("datasources", "dashboards", "alerting"):
        folder = host_path("grafana", f"{provisioning}/{kind}")
        assert folder == ROOT / "dashboards" / "provisioning" / kind and any(folder.glob("*.yaml")), kind
    providers = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/gatewatch.yaml").read_text())
    [provider] = providers["providers"]
    boards = host_path("grafana", provider["options"]["path"])
    assert boards == ROOT / "dashboards" / "json" and sorted(p.name for p in boards.glob("*.json"))
    env = environment("grafana")
    plugin, version = env["GF_INSTALL_PLUGINS"].split()
    assert (plugin, version) == (DATASOURCE_TYPE, PLUGIN_VERSION)


def test_grafana_datasource_names_the_clickhouse_service_and_its_reader() -> None:
    doc = yaml.safe_load(host_path("grafana", "/etc/grafana/provisioning/datasources/clickhouse.yaml").read_text())
    [source] = doc["datasources"]
    assert (source["type"], source["uid"]) == (DATASOURCE_TYPE, DATASOURCE_UID)
    data = source["jsonData"]
    assert data["host"] == "clickhouse" and "clickhouse" in SERVICES
    assert (data["protocol"], data["port"]) == ("native", 9000)  # the server image's native port
    assert data["defaultDatabase"] == environment("clickhouse")["CLICKHOUSE_DB"]
    # The read-only user created on the server's first start, with the password Grafana gets.
    init = host_path("clickhouse", "/docker-entrypoint-initdb.d/grafana_reader.sh").read_text()
    assert re.search(rf"CREATE USER IF NOT EXISTS {data['username']}\b", init) and "readonly = 2" in init
    [password_var] = re.findall(r"\$\{(\w+)\}", source["secureJsonData"]["password"])
    assert password_var in environment("grafana") and password_var in environment("clickhouse")
    assert f"${{{password_var}}}" in init


def test_grafana_alerts_go_to_the_alertmanager_service() -> None:
    doc = yaml.safe_load(host_path("grafana", "/etc/grafana/provisioning/alerting/notifications.yaml").read_text())
    [point] = doc["contactPoints"]
    [receiver] = point["receivers"]
    url = urlsplit(receiver["settings"]["url"])
    assert receiver["type"] == "prometheus-alertmanager"
    assert (url.hostname, url.port) == ("alertmanager", container_port("alertmanager", 9093))
    [policy] = doc["policies"]
    assert policy["receiver"] == point["name"]


# ------------------------------------------------------------------- the image


def test_dockerfile_installs_the_package_with_its_pins() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm( AS \w+)?|build", b) for b in bases), bases
    assert "RUN pip install . && pip check" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"mitmproxy==11.0.2"' in pyproject  # the release for Python 3.11, as the image's base
    assert "mitmproxy" not in text.replace("mitmproxy is pinned to 11.0.2 in pyproject.toml", "")
    for package in ("gatewatch", "inline", "streams", "detectors", "storage", "dashboards"):
        assert f"COPY {package} ./{package}" in text, package
