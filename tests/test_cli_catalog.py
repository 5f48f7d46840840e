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
    """Rows of a CLI table keyed by their first column (header under ``"header"``)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert set(lines[1].replace(" ", "")) == {"-"}, "second line must be the rule"
    rows = {"header": lines[0].split()}
    rows.update({line.split()[0]: line.split() for line in lines[2:]})
    return rows


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("provhub: error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0]


# -- provhub providers -------------------------------------------------------------------------


def test_providers_table_shows_lockchat_with_its_seed_flags(cli: Cli) -> None:
    result = cli("providers")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    header = rows["header"]
    assert header == [
        "provider",
        "working",
        "auth",
        "stream",
        "history",
        "system",
        "gpt-3.5-turbo",
        "gpt-4",
        "models",
        "source",
    ]
    lockchat = dict(zip(header, rows["Lockchat"], strict=True))
    # The seed's three flags: supports_stream, supports_gpt_35_turbo, supports_gpt_4.
    assert (lockchat["stream"], lockchat["gpt-3.5-turbo"], lockchat["gpt-4"]) == ("yes",) * 3
    assert (lockchat["working"], lockchat["auth"]) == ("yes", "-")
    assert (lockchat["models"], lockchat["source"]) == ("2", SHIPPED)


def test_providers_json_describes_every_provider(cli: Cli) -> None:
    (lockchat,) = cli.json("providers")
    assert set(lockchat) == PROVIDER_KEYS
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


def test_providers_lists_third_party_plugin_providers_with_their_source(cli: Cli) -> None:
    write_plugin(cli.site, "acme-provhub", ["Acme"], supports_gpt_4=True)
    rows = table_rows(cli("providers").stdout)
    assert rows["Acme"][-1] == "acme-provhub"
    assert [p["name"] for p in cli.json("providers", "--model", "gpt-4")] == ["Lockchat", "Acme"]
    assert [p["name"] for p in cli.json("providers", "--model", "acme-1")] == ["Acme"]


@pytest.mark.parametrize(
    ("require", "expected"),
    [
        ("stream", ["Lockchat", "Acme"]),
        ("stream,system_message", ["Lockchat"]),
        ("STREAM|Message_History", ["Lockchat", "Acme"]),
        ("auth", []),
    ],
)
def test_providers_require_filters_by_capability(
    cli: Cli, require: str, expected: list[str]
) -> None:
    write_plugin(cli.site, "acme-provhub", ["Acme"], supports_system_message=False)
    assert [p["name"] for p in cli.json("providers", "--require", require)] == expected


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


def test_model_served_without_the_required_capability_exits_3(cli: Cli) -> None:
    result = cli("providers", "--model", "gpt-4", "--require", "auth")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr


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
    assert shipped["providers"] == ["Lockchat"]
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
    assert "[import]" in rows["broken-plugin"]
    assert rows[SHIPPED][3] == "loaded"
    # The failure is reported as a warning event on stderr, not as a crash.
    assert "plugin.failed" in table.stderr
    assert "Traceback" not in table.stderr

    providers = cli("providers")
    assert providers.returncode == 0
    assert list(table_rows(providers.stdout))[1:] == ["Lockchat"]


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
