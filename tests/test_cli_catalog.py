"""``provhub providers`` and ``provhub plugins`` as real subprocesses (SPEC §9).

Each command runs ``python -m provhub`` with the project's interpreter in a
scratch working directory, a scratch ``XDG_CONFIG_HOME`` (so no user config is
read) and no ``PROVHUB_*`` variables from the outer environment. Third-party
plugins are real distributions on the child's ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_dists import hook_module, write_dist, write_plugin
from shipped import LOCAL_AVAILABLE, SHIPPED_PROVIDERS

SHIPPED = "provhub_providers"
PROVIDER_KEYS = {
    "name",
    "url",
    "flags",
    "capabilities",
    "models",
    "aliases",
    "model_capabilities",
    "default_model",
    "source",
    "url_env",
    "models_path",
}
PLUGIN_KEYS = {
    "name",
    "distribution",
    "version",
    "status",
    "providers",
    "error",
    "stage",
    "entry_point",
    "unavailable",
}


class Cli:
    """Runs ``python -m provhub`` in an isolated environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path / "cwd"
        self.site = tmp_path / "site"
        self.cwd.mkdir()
        self.site.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
        self.env.pop("PYTHONPATH", None)
        self.env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        child_env = {**self.env, "PYTHONPATH": str(self.site), **env}
        return subprocess.run(
            [sys.executable, "-m", "provhub", *args],
            cwd=self.cwd,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def json(self, *args: str, **env: str) -> list[dict[str, object]]:
        result = self(*args, "--json", **env)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert isinstance(data, list)
        return data


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Rows of a CLI table keyed by their first column (header under ``"header"``).

    Columns are cut where the rule's dash groups start, so a cell with spaces
    (the last column's ``gpt-3.5-turbo, gpt-4``) stays one cell.
    """
    import re

    lines = [line for line in stdout.splitlines() if line.strip()]
    assert set(lines[1].replace(" ", "")) == {"-"}, "second line must be the rule"
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    bounds = [*zip(starts, [*starts[1:], None], strict=True)]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in bounds]

    rows = {"header": cells(lines[0])}
    rows.update({cells(line)[0]: cells(line) for line in lines[2:]})
    return rows


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("provhub: error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0]


# -- provhub providers -------------------------------------------------------------------------


def test_providers_table_shows_lockchat_with_its_seed_flags_url_and_models(cli: Cli) -> None:
    result = cli("providers")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "provhub: 'working' is what each provider declares; 'provhub check' asks them live\n"
    )
    rows = table_rows(result.stdout)
    header = rows["header"]
    assert header == [
        "provider",
        "working",
        "auth",
        "stream",
        "history",
        "system",
        "tools",
        "vision",
        "schema",
        "reasoning",
        "source",
        "url",
        "models",
    ]
    lockchat = dict(zip(header, rows["Lockchat"], strict=True))
    # The seed's three flags: supports_stream, supports_gpt_35_turbo, supports_gpt_4.
    assert lockchat["stream"] == "yes"
    assert lockchat["models"] == "gpt-3.5-turbo, gpt-4"
    assert (lockchat["working"], lockchat["auth"], lockchat["tools"]) == ("yes", "-", "-")
    assert (lockchat["url"], lockchat["source"]) == ("http://supertest.lockchat.app", SHIPPED)


def test_providers_table_says_where_an_overridden_url_comes_from(cli: Cli) -> None:
    from_env = table_rows(cli("providers", PROVHUB_LOCKCHAT_URL="http://127.0.0.1:9").stdout)
    assert from_env["Lockchat"][-2] == "http://127.0.0.1:9 ($PROVHUB_LOCKCHAT_URL)"
    (cli.cwd / "provhub.toml").write_text('[providers.Lockchat]\nurl = "http://10.0.0.7:8000"\n')
    from_config = table_rows(cli("providers", PROVHUB_LOCKCHAT_URL="http://127.0.0.1:9").stdout)
    assert from_config["Lockchat"][-2] == "http://10.0.0.7:8000 (config)"


def test_providers_json_describes_every_provider(cli: Cli) -> None:
    described = cli.json("providers")
    assert [p["name"] for p in described] == [*SHIPPED_PROVIDERS]
    assert all(set(p) == PROVIDER_KEYS for p in described)
    lockchat = described[0]
    assert lockchat["name"] == "Lockchat"
    assert lockchat["source"] == SHIPPED
    assert lockchat["url"] == "http://supertest.lockchat.app"
    flags = lockchat["flags"]
    assert isinstance(flags, dict)
    assert flags["supports_stream"] is True
    assert flags["supports_gpt_35_turbo"] is True
    assert flags["supports_gpt_4"] is True
    assert flags["needs_auth"] is False
    assert lockchat["models"] == ["gpt-3.5-turbo", "gpt-4"]
    assert lockchat["capabilities"] == ["stream", "message_history", "system_message"]
    assert (lockchat["url_env"], lockchat["models_path"]) == ("PROVHUB_LOCKCHAT_URL", "/v1/models")


def test_providers_lists_third_party_plugin_providers_with_their_source(cli: Cli) -> None:
    write_plugin(cli.site, "acme-provhub", ["Acme"], supports_gpt_4=True)
    rows = table_rows(cli("providers").stdout)
    assert rows["Acme"][rows["header"].index("source")] == "acme-provhub"
    assert [p["name"] for p in cli.json("providers", "--model", "gpt-4")] == ["Lockchat", "Acme"]
    assert [p["name"] for p in cli.json("providers", "--model", "acme-1")] == ["Acme"]


@pytest.mark.parametrize(
    ("require", "expected"),
    [
        ("stream", [*SHIPPED_PROVIDERS, "Acme"]),
        ("stream,system_message", [*SHIPPED_PROVIDERS]),
        ("STREAM|Message_History", [*SHIPPED_PROVIDERS, "Acme"]),
    ],
)
def test_providers_require_filters_by_capability(
    cli: Cli, require: str, expected: list[str]
) -> None:
    write_plugin(cli.site, "acme-provhub", ["Acme"], supports_system_message=False)
    assert [p["name"] for p in cli.json("providers", "--require", require)] == expected


def test_require_that_no_provider_meets_names_what_each_lacks_and_exits_3(cli: Cli) -> None:
    # The issue: "--require stream,auth" said "no providers registered" (rc 0).
    write_plugin(cli.site, "acme-provhub", ["Acme"], supports_system_message=False)
    result = cli("providers", "--require", "stream,auth")
    assert result.returncode == 3
    assert result.stdout == ""
    lacking = "; ".join(f"{name} lacks auth" for name in [*SHIPPED_PROVIDERS, "Acme"])
    assert result.stderr == f"provhub: error: no provider has stream, auth: {lacking}\n"
    as_json = cli("providers", "--require", "auth", "--json")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (3, [])


def test_model_served_but_without_a_capability_says_who_serves_it(cli: Cli) -> None:
    # The issue: "--model gpt-4 --require auth" said "no providers serve 'gpt-4'".
    result = cli("providers", "--model", "gpt-4", "--require", "auth")
    assert result.returncode == 3
    assert result.stderr == (
        "provhub: error: no provider serving 'gpt-4' has auth: Lockchat lacks auth\n"
    )


def test_no_provider_registered_at_all_points_at_plugins(cli: Cli) -> None:
    result = cli("providers", PROVHUB_DISABLE_PLUGINS="provhub")
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr == (
        "provhub: no providers registered; 'provhub plugins' shows what was found "
        "(PROVHUB_PLUGINS and PROVHUB_DISABLE_PLUGINS can switch plugins off)\n"
    )


def test_unknown_capability_is_a_usage_error_on_one_line(cli: Cli) -> None:
    result = cli("providers", "--require", "stream,telepathy")
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "telepathy", "stream, message_history")


def test_unknown_model_exits_3(cli: Cli) -> None:
    result = cli("providers", "--model", "nope")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "nope" in result.stderr
    assert result.stdout == ""


def test_unknown_model_exits_3_in_json_mode_too(cli: Cli) -> None:
    result = cli("providers", "--model", "nope", "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout) == []


def test_bad_subcommand_option_exits_2_without_traceback(cli: Cli) -> None:
    result = cli("providers", "--modle", "gpt-4")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--modle" in result.stderr


# -- provhub plugins ---------------------------------------------------------------------------


def test_plugins_json_shape_for_the_shipped_plugin(cli: Cli) -> None:
    (shipped,) = cli.json("plugins")
    assert set(shipped) == PLUGIN_KEYS
    assert shipped["name"] == SHIPPED
    assert shipped["distribution"] == "provhub"
    assert shipped["status"] == "loaded"
    assert shipped["providers"] == [*SHIPPED_PROVIDERS]
    assert shipped["entry_point"] == "provhub_providers.plugin"
    assert (shipped["error"], shipped["stage"]) == (None, None)
    assert isinstance(shipped["version"], str)


def test_broken_plugin_is_shown_failed_while_lockchat_still_works(cli: Cli) -> None:
    write_dist(cli.site, "broken-plugin", "import provhub_no_such_dependency\n", version="0.3")
    write_dist(cli.site, "angry-hook", hook_module(hook_raises="upstream said no"))

    plugins = {p["name"]: p for p in cli.json("plugins")}
    assert plugins[SHIPPED]["status"] == "loaded"
    broken = plugins["broken-plugin"]
    assert (broken["status"], broken["stage"], broken["version"]) == ("failed", "import", "0.3")
    assert "ModuleNotFoundError" in str(broken["error"])
    assert (plugins["angry-hook"]["status"], plugins["angry-hook"]["stage"]) == ("failed", "hook")

    table = cli("plugins")
    assert table.returncode == 0
    rows = table_rows(table.stdout)
    assert rows["broken-plugin"][3] == "failed"
    assert rows["broken-plugin"][5].startswith("[import] ModuleNotFoundError")
    assert rows[SHIPPED][3] == "loaded"
    # The failure is reported as a warning event on stderr, not as a crash.
    assert "plugin.failed" in table.stderr
    assert "Traceback" not in table.stderr

    providers = cli("providers")
    assert providers.returncode == 0
    assert list(table_rows(providers.stdout))[1:] == [*SHIPPED_PROVIDERS]


def test_plugins_shows_denied_plugins_as_disabled(cli: Cli) -> None:
    marker = cli.cwd / "imported"
    write_plugin(cli.site, "acme-provhub", ["Acme"], marker=marker)
    plugins = {p["name"]: p for p in cli.json("plugins", PROVHUB_PLUGINS="")}
    assert plugins["acme-provhub"]["status"] == "disabled"
    assert "PROVHUB_PLUGINS" in str(plugins["acme-provhub"]["error"])
    assert plugins[SHIPPED]["status"] == "loaded"
    assert not marker.exists()

    denied = cli.json("providers", PROVHUB_DISABLE_PLUGINS="provhub, acme-provhub")
    assert denied == []
    assert not marker.exists()


def test_a_typo_in_provhub_plugins_is_shown_with_the_real_name(cli: Cli) -> None:
    # The issue: PROVHUB_PLUGINS with a typo was silently accepted, and the real
    # plugin was then disabled.
    write_plugin(cli.site, "acme-provhub", ["Acme"])
    result = cli("plugins", PROVHUB_PLUGINS="acme-provhb")
    assert result.returncode == 0
    rows = table_rows(result.stdout)
    assert rows["acme-provhb"][3] == "unknown"
    assert rows["acme-provhb"][5] == (
        "PROVHUB_PLUGINS names 'acme-provhb', which matches no installed plugin; did you "
        "mean 'acme-provhub'? (installed: acme-provhub, provhub_providers)"
    )
    assert rows["acme-provhub"][3] == "disabled"
    # ...and a warning event says so on stderr, once.
    assert result.stderr.count("plugin.unknown") == 1
    assert "acme-provhb" in result.stderr


def test_unknown_names_in_the_deny_list_are_reported_too(cli: Cli) -> None:
    plugins = {p["name"]: p for p in cli.json("plugins", PROVHUB_DISABLE_PLUGINS="nope, provhub")}
    assert plugins["nope"]["status"] == "unknown"
    assert str(plugins["nope"]["error"]).startswith(
        "PROVHUB_DISABLE_PLUGINS names 'nope', which matches no installed plugin"
    )
    assert "provhub" not in plugins  # a real name (the distribution): no record of its own
    assert plugins[SHIPPED]["status"] == "disabled"


def test_model_of_a_plugin_switched_off_by_a_typo_names_the_plugin_and_the_typo(
    cli: Cli,
) -> None:
    write_plugin(cli.site, "acme-provhub", ["Acme"])
    result = cli("chat", "-m", "acme-1", "hi", PROVHUB_PLUGINS="acme-provhb")
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("provhub: error:")]
    known = (
        "gemma-3-270m, gpt-3.5-turbo, gpt-4, local" if LOCAL_AVAILABLE else "gpt-3.5-turbo, gpt-4"
    )
    assert errors == [
        f"provhub: error: no provider serves model 'acme-1' (known models: {known}); "
        "disabled plugins may serve it: acme-provhub (not listed in PROVHUB_PLUGINS); "
        "PROVHUB_PLUGINS names 'acme-provhb', which matches no installed plugin; did you "
        "mean 'acme-provhub'? (installed: acme-provhub, provhub_providers)"
    ]


def test_shipped_plugin_denied_chat_says_it_may_serve_the_model(cli: Cli) -> None:
    result = cli("chat", "-m", "gpt-4", "hi", PROVHUB_DISABLE_PLUGINS="provhub")
    assert result.returncode == 3
    assert result.stderr == (
        "provhub: error: no provider serves model 'gpt-4' (known models: none, no provider "
        "is registered); disabled plugins may serve it: provhub_providers (denied by "
        "PROVHUB_DISABLE_PLUGINS)\n"
    )
