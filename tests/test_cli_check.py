"""``provhub check``: config source, plugins, keys, and a live probe of every provider.

Probed against real servers on loopback: ``FakeUpstream`` (it serves ``GET .../models``),
a refused port, and a raw socket that accepts and never answers. The probes are
concurrent and bounded by ``--timeout``, so a dead provider does not make the
check slow; a completion is sent only with ``--completion``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_support import Cli, HangingServer, one_error_line
from provhub import Config, Hub
from provhub._explain import endpoint_of
from provhub._probe import ProbeStatus, probe_all
from provhub.testing import Behaviour, FakeUpstream, unused_port_url
from shipped import SHIPPED_PROVIDERS

KEY_ENV = "PROVHUB_TEST_CHECK_KEY"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as server:
        yield server


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's probes by provider name."""
    return {p["provider"]: p for p in report["providers"]}


def check_json(cli: Cli, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    result = cli("check", "--json", *args, **env)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def endpoints(*, keyed: tuple[str, ...] = (), models: str = '["gpt-4o-mini"]', **urls: str) -> str:
    """Lockchat off; one openai-compatible table per name; ``keyed`` tables need KEY_ENV."""
    lines = ["[providers.Lockchat]", "enabled = false"]
    for name, url in urls.items():
        lines += [
            f"[providers.{name}]",
            'type = "openai-compatible"',
            f'base_url = "{url}"',
            f"models = {models}",
        ]
        if name in keyed:
            lines.append(f'api_key_env = "{KEY_ENV}"')
    return "\n".join(lines) + "\n"


def test_healthy_endpoint_lists_its_models_and_exits_0(cli: Cli, upstream: FakeUpstream) -> None:
    cli.config(endpoints(api=upstream.base_url))
    code, report = check_json(cli)
    assert code == 0
    assert report["exit_code"] == 0
    assert report["config"] == {
        "path": "provhub.toml",
        "origin": "working directory",
        "searched": [str(cli.cwd / "provhub.toml")],
    }
    assert [p["name"] for p in report["plugins"]] == ["provhub_providers"]
    assert [p["provider"] for p in report["providers"]] == [*SHIPPED_PROVIDERS, "api"]
    lockchat, api = by_name(report)["Lockchat"], by_name(report)["api"]
    assert (lockchat["provider"], lockchat["status"], lockchat["detail"]) == (
        "Lockchat",
        "skip",
        "disabled in config",
    )
    assert api["status"] == "ok"
    assert api["method"] == "models"
    assert api["http_status"] == 200
    assert api["models"] == ["gpt-3.5-turbo", "gpt-4", "gpt-4o-mini"]
    assert api["detail"] == "GET /models: HTTP 200, 3 models listed"
    assert (api["url"], api["url_origin"]) == (upstream.base_url, "config")
    # One GET of the listing; never a completion (it could cost money).
    assert [(r.method, r.path) for r in upstream.requests] == [("GET", "/v1/models")]


def test_a_refused_provider_fails_with_the_cause_and_what_to_do(cli: Cli) -> None:
    url = unused_port_url()
    result = cli("check", PROVHUB_LOCKCHAT_URL=url)
    assert result.returncode == 4
    host = url.removeprefix("http://")
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "config   none found (searched "
        + ", ".join([str(cli.cwd / "provhub.toml"), str(cli.xdg / "provhub" / "provhub.toml")])
        + ")"
    )
    assert lines[1].startswith("plugins  provhub_providers ")
    assert lines[1].endswith(" loaded: " + ", ".join(SHIPPED_PROVIDERS))
    assert lines[3].split() == ["provider", "status", "time", "url", "result"]
    row = lines[5]
    assert row.startswith("Lockchat  fail    ")
    assert row.endswith(
        f"{url}  cannot connect to {host}: connection refused (nothing listens on that port). "
        "Next: start the server, or point Lockchat at one that runs; its URL "
        f"{url} comes from $PROVHUB_LOCKCHAT_URL"
    )


def test_a_hanging_provider_is_cut_off_at_the_timeout(
    cli: Cli, hanging: HangingServer, upstream: FakeUpstream
) -> None:
    cli.config(endpoints(api=upstream.base_url, stuck=hanging.url + "/v1"))
    started = time.monotonic()
    code, report = check_json(cli, "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert code == 4
    probes = {p["provider"]: p for p in report["providers"]}
    assert probes["stuck"]["status"] == "fail"
    assert probes["stuck"]["detail"] == (
        f"no response from 127.0.0.1:{hanging.port} within 0.5 s (probe timeout)"
    )
    assert probes["stuck"]["next_step"].startswith("the server is slow or stuck")
    assert probes["api"]["status"] == "ok"
    assert hanging.accepted == 1
    assert elapsed < 30  # a subprocess on a loaded machine; the bound that matters is below


def test_probes_run_concurrently_so_dead_providers_cost_one_timeout(
    upstream: FakeUpstream,
) -> None:
    servers = [HangingServer() for _ in range(4)]
    try:
        tables = {
            f"stuck{i}": {
                "type": "openai-compatible",
                "base_url": s.url + "/v1",
                "models": ["m"],
            }
            for i, s in enumerate(servers)
        }
        tables["api"] = {
            "type": "openai-compatible",
            "base_url": upstream.base_url,
            "models": ["m"],
        }
        with Hub(Config.from_mapping({"providers": tables}), load_plugins=False) as hub:
            jobs = [
                (
                    info,
                    hub.config.provider(info.name),
                    endpoint_of(info, hub.config.provider(info.name)),
                )
                for info in hub.providers()
            ]
            started = time.monotonic()
            probes = probe_all(jobs, timeout=1.0)
            elapsed = time.monotonic() - started
    finally:
        for server in servers:
            server.stop()
    assert [p.status for p in probes] == [ProbeStatus.FAIL] * 4 + [ProbeStatus.OK]
    assert all(p.elapsed_ms is not None and p.elapsed_ms >= 900 for p in probes[:4])
    # Four 1 s probes one after another would take 4 s.
    assert elapsed < 2.0


def test_named_providers_only_and_an_unknown_name_is_usage(
    cli: Cli, upstream: FakeUpstream
) -> None:
    cli.config(endpoints(api=upstream.base_url, other=unused_port_url()))
    code, report = check_json(cli, "api")
    assert code == 0
    assert [p["provider"] for p in report["providers"]] == ["api"]
    wrong = cli("check", "apj")
    assert wrong.returncode == 2
    assert one_error_line(wrong.stderr) == (
        "provhub: error: no provider named 'apj'; did you mean 'api'? "
        f"(registered: {', '.join([*SHIPPED_PROVIDERS, 'api', 'other'])})"
    )


def test_keys_are_reported_present_or_not_never_their_value(
    cli: Cli, upstream: FakeUpstream
) -> None:
    secret = "sk-check-Q5bX9s0K"
    cli.config(endpoints(api=upstream.base_url, keyless=upstream.base_url, keyed=("api",)))
    with_key = cli("check", **{KEY_ENV: secret})
    assert with_key.returncode == 0, with_key.stdout
    assert f"keys     {KEY_ENV} set" in with_key.stdout.splitlines()
    assert secret not in with_key.stdout + with_key.stderr
    # The probe sends the key the way a completion does.
    sent = sorted(r.headers.get("authorization", "-") for r in upstream.requests)
    assert sent == ["-", f"Bearer {secret}"]  # keyless sends none

    without = cli("check", "--json")
    report = json.loads(without.stdout)
    assert without.returncode == 4
    api = next(p for p in report["providers"] if p["provider"] == "api")
    assert (api["key_env"], api["key_set"], api["status"]) == (KEY_ENV, False, "fail")
    assert api["detail"] == f"needs credentials: environment variable {KEY_ENV} is not set"
    assert api["next_step"] == f"put the API key in ${KEY_ENV}"


def test_a_rejected_key_shows_the_upstreams_message_masked(cli: Cli, tmp_path: Path) -> None:
    secret = "sk-check-R7cY0t1L"
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {secret}"}})
    # FakeUpstream answers GET /models with its listing whatever the key: a raw
    # server answering 401 stands for a real one here.
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            payload = body.encode()
            connection.sendall(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/v1"
        cli.config(endpoints(api=url, keyed=("api",)))
        code, report = check_json(cli, **{KEY_ENV: secret})
    finally:
        thread.join(timeout=5)
        listener.close()
    assert code == 4
    api = next(p for p in report["providers"] if p["provider"] == "api")
    assert api["detail"] == (
        f"HTTP 401 Unauthorized from 127.0.0.1:{port}: Incorrect API key provided: ***"
    )
    assert api["next_step"] == f"check the API key in ${KEY_ENV}"
    assert secret not in json.dumps(report)


def test_models_the_listing_does_not_name_are_pointed_out(cli: Cli, upstream: FakeUpstream) -> None:
    cli.config(endpoints(api=upstream.base_url, models='["gpt-4o-mini", "gtp-4"]'))
    code, report = check_json(cli)
    assert code == 0
    api = by_name(report)["api"]
    assert api["missing_models"] == ["gtp-4"]
    assert api["detail"] == "GET /models: HTTP 200, 3 models listed; not listed: gtp-4"
    assert api["next_step"] == "check the model ids in [providers.api] against the listing"


def test_completion_is_sent_only_with_the_flag(cli: Cli, upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(tokens=("OK",))
    cli.config(endpoints(api=upstream.base_url))
    code, report = check_json(cli, "--completion")
    assert code == 0
    api = by_name(report)["api"]
    assert api["method"] == "completion"
    assert api["completion"]["ok"] is True
    assert api["completion"]["text"] == "OK"
    assert api["completion"]["model"] == "gpt-4o-mini"
    sent = [r for r in upstream.requests if r.method == "POST"]
    assert len(sent) == 1
    assert sent[0].json["max_tokens"] == 5


def test_completion_failure_fails_the_check(cli: Cli, upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(status=500)
    cli.config(endpoints(api=upstream.base_url))
    code, report = check_json(cli, "--completion")
    assert code == 4
    api = by_name(report)["api"]
    assert api["status"] == "fail"
    assert api["completion"]["ok"] is False
    # The check never retries: one POST.
    assert len([r for r in upstream.requests if r.method == "POST"]) == 1


def test_lockchat_is_probed_at_its_v1_models(cli: Cli, upstream: FakeUpstream) -> None:
    code, report = check_json(cli, PROVHUB_LOCKCHAT_URL=upstream.url)
    assert code == 0
    assert [p["provider"] for p in report["providers"]] == [*SHIPPED_PROVIDERS]
    lockchat = by_name(report)["Lockchat"]
    assert (lockchat["url"], lockchat["url_origin"], lockchat["url_env"]) == (
        upstream.url,
        "env",
        "PROVHUB_LOCKCHAT_URL",
    )
    assert [r.path for r in upstream.requests] == ["/v1/models"]


def test_a_failed_or_unknown_plugin_fails_the_whole_check(cli: Cli, upstream: FakeUpstream) -> None:
    code, report = check_json(
        cli, PROVHUB_LOCKCHAT_URL=upstream.url, PROVHUB_DISABLE_PLUGINS="no-such-plugin"
    )
    assert code == 4
    assert [p["status"] for p in report["plugins"]] == ["unknown", "loaded"]
    assert report["providers"][0]["status"] == "ok"


def test_nothing_to_check_exits_3(cli: Cli) -> None:
    result = cli("check", PROVHUB_DISABLE_PLUGINS="provhub")
    assert result.returncode == 3
    assert result.stdout.splitlines()[-1] == (
        "no providers to check; 'provhub plugins' shows what discovery found"
    )
