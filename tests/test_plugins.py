"""Plugin discovery through real entry points of real distributions (SPEC §3).

Every test writes distributions (``.dist-info`` with ``entry_points.txt`` plus the
plugin module) into a fresh directory on ``sys.path``; ``Hub(load_plugins=True)``
then finds them with ``importlib.metadata`` exactly as it finds installed
packages, next to provhub's own shipped plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from plugin_dists import Dist, hook_module, provider_class, write_dist, write_plugin
from provhub import Config, Hub, PluginLoadError, PluginRecord, PluginStatus
from shipped import SHIPPED_PROVIDERS

SHIPPED = "provhub_providers"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for test distributions; their modules are forgotten after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("PROVHUB_PLUGINS", raising=False)
    monkeypatch.delenv("PROVHUB_DISABLE_PLUGINS", raising=False)
    yield root
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).is_relative_to(tmp_path):
            del sys.modules[name]


def make_hub(**kwargs: Any) -> Hub:
    """A hub with default config (no user config file) and plugin discovery on."""
    # Distributions were written after sys.path changed; drop finder caches
    # (importlib.metadata caches directory listings by mtime).
    importlib.invalidate_caches()
    return Hub(Config(), load_plugins=True, **kwargs)


def record(hub: Hub, name: str) -> PluginRecord:
    """The plugin record for entry point ``name`` (exactly one must exist)."""
    found = [p for p in hub.plugins if p.name == name]
    assert len(found) == 1, f"expected one record for {name!r}, got {hub.plugins}"
    return found[0]


def names(hub: Hub) -> list[str]:
    return [info.name for info in hub.providers()]


@contextmanager
def captured_events(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    """Collect provhub events emitted while a hub is built (before anyone can subscribe).

    Without structlog configured, provhub logs to the stdlib logger ``provhub``
    (caught by caplog); if another test in this process configured structlog,
    the events go through structlog instead and are caught there.
    """
    events: list[dict[str, Any]] = []
    if structlog.is_configured():
        # The host's filtering level may hide info events; lift it while capturing.
        wrapper = structlog.get_config()["wrapper_class"]
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        try:
            with structlog.testing.capture_logs() as entries:
                yield events
        finally:
            structlog.configure(wrapper_class=wrapper)
        events.extend(entries)
        return
    with caplog.at_level(logging.INFO, logger="provhub"):
        start = len(caplog.records)
        yield events
        for rec in caplog.records[start:]:
            if rec.name == "provhub" and hasattr(rec, "provhub_event"):
                events.append(
                    {"event": rec.provhub_event, "level": rec.levelname, **rec.provhub_fields}
                )


def events_named(events: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == event]


# -- a good plugin -----------------------------------------------------------------------------


def test_third_party_plugin_loads_beside_shipped_lockchat(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dist = write_plugin(site, "acme-provhub", ["Acme", "AcmeLite"], version="2.3.1")

    with captured_events(caplog) as events:
        hub = make_hub()

    acme = record(hub, "acme-provhub")
    assert acme.status is PluginStatus.LOADED
    assert (acme.distribution, acme.version) == ("acme-provhub", "2.3.1")
    assert acme.providers == ("Acme", "AcmeLite")
    assert acme.value == dist.module
    assert (acme.error, acme.stage) == (None, None)
    shipped = record(hub, SHIPPED)
    assert (shipped.status, shipped.distribution) == (PluginStatus.LOADED, "provhub")
    assert shipped.providers == SHIPPED_PROVIDERS
    # Shipped providers first, then third-party ones in their registration order.
    assert names(hub) == [*SHIPPED_PROVIDERS, "Acme", "AcmeLite"]
    by_name = {info.name: info for info in hub.providers()}
    assert by_name["Lockchat"].source == SHIPPED
    assert by_name["Acme"].source == "acme-provhub"
    assert [i.name for i in hub.providers(model="acme-1")] == ["Acme"]
    loaded = {e["plugin"]: e for e in events_named(events, "plugin.loaded")}
    assert loaded["acme-provhub"]["providers"] == ["Acme", "AcmeLite"]
    assert SHIPPED in loaded
    assert events_named(events, "plugin.failed") == []


def test_plugin_provider_streams_through_the_hub(site: Path) -> None:
    write_plugin(site, "acme-provhub", ["Acme"])
    hub = make_hub()
    assert hub.complete("acme-1", [{"role": "user", "content": "hi"}]).text == "Acme says hi"


def test_classmethod_and_instance_providers_register_from_a_plugin(site: Path) -> None:
    body = provider_class("ClassStyle", models=["cm-1"], method="classmethod") + (
        provider_class("Configurable", method="plain")
        + "\nendpoint = Configurable()\nendpoint.name = 'endpoint-eu'\n"
        "endpoint.models = ('eu-1',)\n"
    )
    write_dist(site, "styles", hook_module(body, register=["ClassStyle", "endpoint"]))
    hub = make_hub()
    assert record(hub, "styles").providers == ("ClassStyle", "endpoint-eu")
    assert [i.name for i in hub.providers(model="eu-1")] == ["endpoint-eu"]


def test_two_hubs_load_the_same_plugin_independently(site: Path) -> None:
    write_plugin(site, "acme-provhub", ["Acme"])
    first, second = make_hub(), make_hub()
    assert names(first) == names(second) == [*SHIPPED_PROVIDERS, "Acme"]
    assert (
        first.providers()[len(SHIPPED_PROVIDERS)].provider
        is second.providers()[len(SHIPPED_PROVIDERS)].provider
    )


def test_plugin_offers_a_provider_type_for_config_tables(site: Path) -> None:
    body = provider_class("Endpoint", method="plain") + (
        "\n\ndef build(name, table):\n"
        "    endpoint = Endpoint()\n"
        "    endpoint.name = name\n"
        "    endpoint.models = tuple(table['models'])\n"
        "    return endpoint\n\n\n"
        "@provhub.hookimpl\n"
        "def provhub_register_provider_types(register_type):\n"
        "    register_type('acme-endpoint', build)\n"
    )
    write_dist(site, "acme-types", hook_module(body))
    importlib.invalidate_caches()
    config = Config.from_mapping(
        {"providers": {"eu": {"type": "acme-endpoint", "models": ["eu-large"]}}}
    )
    hub = Hub(config, load_plugins=True)
    (info,) = hub.providers(model="eu-large")
    assert (info.name, info.source) == ("eu", "config (acme-types)")


# -- failures are isolated ---------------------------------------------------------------------

GOOD_BODY = provider_class("Fine", models=["fine-1"])

# (id, module source, stage, text the recorded error must contain)
BROKEN_PLUGINS = [
    pytest.param(
        "import provhub_test_no_such_module\n", "import", "ModuleNotFoundError", id="import-error"
    ),
    pytest.param("def broken(:\n    pass\n", "import", "SyntaxError", id="syntax-error"),
    pytest.param(
        "raise RuntimeError('no config at import time')\n",
        "import",
        "RuntimeError: no config at import time",
        id="raises-at-import",
    ),
    pytest.param(
        "import sys\nsys.exit('missing API key')\n",
        "import",
        "SystemExit: missing API key",
        id="exits-at-import",
    ),
    pytest.param(
        hook_module(GOOD_BODY, register=["Fine"], hook_raises="hook exploded"),
        "hook",
        "RuntimeError: hook exploded",
        id="hook-raises",
    ),
    pytest.param(
        hook_module(
            GOOD_BODY + provider_class("Flaggy", supports_stream="yes"), register=["Fine", "Flaggy"]
        ),
        "register",
        "flag supports_stream must be True or False, got 'yes'",
        id="non-bool-flag",
    ),
    pytest.param(
        hook_module(
            GOOD_BODY + provider_class("Hollow", base="object", method="none"),
            register=["Fine", "Hollow"],
        ),
        "register",
        "no create_completion",
        id="missing-create-completion",
    ),
    pytest.param(
        hook_module(
            GOOD_BODY + provider_class("Abstract", method="none"), register=["Fine", "Abstract"]
        ),
        "register",
        "abstract",
        id="abstract-class",
    ),
    pytest.param(
        hook_module(
            GOOD_BODY + provider_class("Plain", method="plain"), register=["Fine", "Plain"]
        ),
        "register",
        "plain method on a class",
        id="plain-method-on-class",
    ),
    pytest.param(
        hook_module(
            GOOD_BODY + provider_class("Spacey", name="not a slug!"), register=["Fine", "Spacey"]
        ),
        "register",
        "slug",
        id="bad-name",
    ),
    pytest.param(
        hook_module(
            GOOD_BODY + provider_class("Aliased", model_aliases={"best": "gpt-4"}),
            register=["Fine", "Aliased"],
        ),
        "register",
        "does not serve",
        id="alias-to-unserved-model",
    ),
    pytest.param(
        hook_module(GOOD_BODY, register=["Fine", "42"]),
        "register",
        "create_completion is missing",
        id="registers-a-non-provider",
    ),
    pytest.param(
        hook_module(GOOD_BODY, register=["Fine"], hook="provhub_register_provider"),
        "validate",
        "did you mean 'provhub_register_providers'",
        id="misspelled-hook",
    ),
    pytest.param(
        hook_module(GOOD_BODY, register=["Fine"], hook="register_providers"),
        "validate",
        "unknown hook 'register_providers'; did you mean 'provhub_register_providers'",
        id="hookimpl-without-provhub-prefix",
    ),
    pytest.param(
        hook_module(GOOD_BODY, register=["Fine"], decorated=False),
        "validate",
        "not decorated with @provhub.hookimpl",
        id="hook-without-hookimpl",
    ),
    pytest.param(
        hook_module(GOOD_BODY, register=["Fine"], argument="add"),
        "validate",
        "{'add'}",
        id="hookimpl-wrong-argument",
    ),
]


@pytest.mark.parametrize(("source", "stage", "error"), BROKEN_PLUGINS)
def test_broken_plugin_is_recorded_and_skipped_while_others_load(
    site: Path, caplog: pytest.LogCaptureFixture, source: str, stage: str, error: str
) -> None:
    # Sorted by distribution name, the good plugin loads after the broken one:
    # a failure must not stop the loop.
    write_dist(site, "broken-plugin", source, version="0.9")
    write_plugin(site, "zz-good-plugin", ["Good"])

    with captured_events(caplog) as events:
        hub = make_hub()

    broken = record(hub, "broken-plugin")
    assert broken.status is PluginStatus.FAILED
    assert broken.stage == stage
    assert broken.error is not None
    assert error in broken.error
    assert "\n" not in broken.error
    assert broken.providers == ()
    assert (broken.distribution, broken.version) == ("broken-plugin", "0.9")
    assert record(hub, "zz-good-plugin").status is PluginStatus.LOADED
    # All or nothing: "Fine" was registered before the failure and must be gone.
    assert names(hub) == [*SHIPPED_PROVIDERS, "Good"]
    (failed,) = events_named(events, "plugin.failed")
    assert failed["plugin"] == "broken-plugin"
    assert failed["distribution"] == "broken-plugin"
    assert failed["stage"] == stage
    assert failed["error"] == broken.error
    assert failed.get("level", failed.get("log_level")) in {"WARNING", "warning"}


def test_plugin_registers_all_of_its_providers_or_none(site: Path) -> None:
    body = (
        provider_class("First", models=["shared-1"])
        + provider_class("Second", models=["shared-1"])
        + provider_class("Third", models=["shared-1"], working="no")
    )
    write_dist(site, "partial", hook_module(body, register=["First", "Second", "Third"]))
    hub = make_hub()
    assert record(hub, "partial").stage == "register"
    assert names(hub) == [*SHIPPED_PROVIDERS]
    assert hub.providers(model="shared-1") == []


def test_duplicate_provider_name_fails_the_later_plugin_naming_both_sources(site: Path) -> None:
    write_plugin(site, "alpha-plugin", ["Acme"])
    write_plugin(site, "beta-plugin", ["ACME", "BetaOnly"])
    hub = make_hub()

    beta = record(hub, "beta-plugin")
    assert (beta.status, beta.stage) == (PluginStatus.FAILED, "register")
    assert beta.error is not None
    assert "alpha-plugin" in beta.error
    assert "beta-plugin" in beta.error
    assert "duplicate name" in beta.error
    # The first owner keeps the name; none of the loser's providers get in.
    assert names(hub) == [*SHIPPED_PROVIDERS, "Acme"]
    assert hub.providers()[len(SHIPPED_PROVIDERS)].source == "alpha-plugin"


def test_duplicate_within_one_plugin_is_rejected(site: Path) -> None:
    body = provider_class("Twin", models=["t-1"])
    write_dist(site, "twins", hook_module(body, register=["Twin", "Twin"]))
    hub = make_hub()
    assert record(hub, "twins").stage == "register"
    assert names(hub) == [*SHIPPED_PROVIDERS]


def test_third_party_cannot_take_the_shipped_lockchat_name(site: Path) -> None:
    write_plugin(site, "impostor", ["lockchat"])
    hub = make_hub()
    impostor = record(hub, "impostor")
    assert impostor.stage == "register"
    assert impostor.error is not None
    assert SHIPPED in impostor.error
    assert names(hub) == [*SHIPPED_PROVIDERS]
    lockchat = hub.providers()[0]
    assert (lockchat.name, lockchat.source) == ("Lockchat", SHIPPED)


def test_duplicate_provider_type_fails_the_later_plugin(site: Path) -> None:
    body = (
        "@provhub.hookimpl\n"
        "def provhub_register_provider_types(register_type):\n"
        "    register_type('openai-compatible', lambda name, table: None)\n"
    )
    write_dist(site, "hijack", hook_module(body))
    hub = make_hub()
    hijack = record(hub, "hijack")
    assert (hijack.status, hijack.stage) == (PluginStatus.FAILED, "register")
    assert hijack.error is not None
    assert SHIPPED in hijack.error


def test_entry_point_to_a_missing_attribute_fails_at_import(site: Path) -> None:
    dist = write_plugin(site, "wrong-target", ["Target"])
    entry_points = dist.dist_info / "entry_points.txt"
    entry_points.write_text(f"[provhub]\nwrong-target = {dist.module}:nothing_here\n")
    hub = make_hub()
    failed = record(hub, "wrong-target")
    assert (failed.status, failed.stage) == (PluginStatus.FAILED, "import")
    assert names(hub) == [*SHIPPED_PROVIDERS]


# -- strict mode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "stage"),
    [
        pytest.param("import provhub_test_no_such_module\n", "import", id="import"),
        pytest.param(hook_module(hook_raises="boom"), "hook", id="hook"),
        pytest.param(
            hook_module(provider_class("Bad", working=1), register=["Bad"]), "register", id="spec"
        ),
        pytest.param(hook_module(decorated=False), "validate", id="validate"),
    ],
)
def test_strict_hub_raises_plugin_load_error_naming_plugin_and_stage(
    site: Path, source: str, stage: str
) -> None:
    write_dist(site, "fragile", source)
    with pytest.raises(PluginLoadError) as info:
        make_hub(strict=True)
    assert (info.value.plugin, info.value.stage) == ("fragile", stage)
    assert "'fragile'" in str(info.value)
    assert stage in str(info.value)
    assert info.value.__cause__ is not None


def test_strict_hub_loads_normally_when_every_plugin_is_fine(site: Path) -> None:
    write_plugin(site, "acme-provhub", ["Acme"])
    assert names(make_hub(strict=True)) == [*SHIPPED_PROVIDERS, "Acme"]


# -- allow and deny lists ----------------------------------------------------------------------


@pytest.fixture
def guarded(site: Path, tmp_path: Path) -> dict[str, tuple[Dist, Path]]:
    """Three plugins whose modules leave a marker file when (and only when) imported."""
    plugins = {}
    for dist_name, ep_name, provider in (
        ("Acme_Provhub", "acme", "Acme"),
        ("beta.plugins", "beta", "Beta"),
        ("gamma-plugin", "gamma", "Gamma"),
    ):
        marker = tmp_path / f"imported-{ep_name}"
        dist = write_plugin(site, dist_name, [provider], marker=marker, entry_point=ep_name)
        plugins[ep_name] = (dist, marker)
    return plugins


def assert_never_imported(dist: Dist, marker: Path) -> None:
    assert not marker.exists(), f"{dist.module} was imported"
    assert dist.module not in sys.modules


def test_all_plugins_load_when_provhub_plugins_is_unset(
    guarded: dict[str, tuple[Dist, Path]],
) -> None:
    hub = make_hub()
    assert names(hub) == [*SHIPPED_PROVIDERS, "Acme", "Beta", "Gamma"]
    assert all(marker.exists() for _, marker in guarded.values())


def test_empty_provhub_plugins_loads_only_shipped_providers(
    guarded: dict[str, tuple[Dist, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVHUB_PLUGINS", "")
    hub = make_hub()
    assert names(hub) == [*SHIPPED_PROVIDERS]
    for ep_name, (dist, marker) in guarded.items():
        disabled = record(hub, ep_name)
        assert disabled.status is PluginStatus.DISABLED
        assert disabled.error is not None
        assert "PROVHUB_PLUGINS" in disabled.error
        assert disabled.distribution == dist.name
        assert_never_imported(dist, marker)


@pytest.mark.parametrize(
    "allow",
    [
        pytest.param("acme,gamma", id="entry-point-names"),
        pytest.param("acme-provhub, GAMMA_PLUGIN", id="distribution-names-normalised"),
        pytest.param(" Acme.Provhub ,, gamma ", id="mixed-with-blanks"),
    ],
)
def test_provhub_plugins_loads_only_the_listed_plugins(
    guarded: dict[str, tuple[Dist, Path]], monkeypatch: pytest.MonkeyPatch, allow: str
) -> None:
    monkeypatch.setenv("PROVHUB_PLUGINS", allow)
    hub = make_hub()
    assert names(hub) == [*SHIPPED_PROVIDERS, "Acme", "Gamma"]
    assert record(hub, "beta").status is PluginStatus.DISABLED
    assert_never_imported(*guarded["beta"])
    assert guarded["acme"][1].exists()


@pytest.mark.parametrize("deny", ["beta", "Beta_Plugins", "beta.plugins,unknown-thing"])
def test_provhub_disable_plugins_denies_by_entry_point_or_distribution(
    guarded: dict[str, tuple[Dist, Path]], monkeypatch: pytest.MonkeyPatch, deny: str
) -> None:
    monkeypatch.setenv("PROVHUB_DISABLE_PLUGINS", deny)
    hub = make_hub()
    beta = record(hub, "beta")
    assert beta.status is PluginStatus.DISABLED
    assert beta.error is not None
    assert "PROVHUB_DISABLE_PLUGINS" in beta.error
    assert names(hub) == [*SHIPPED_PROVIDERS, "Acme", "Gamma"]
    assert_never_imported(*guarded["beta"])


def test_deny_wins_over_allow(
    guarded: dict[str, tuple[Dist, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVHUB_PLUGINS", "acme,beta")
    monkeypatch.setenv("PROVHUB_DISABLE_PLUGINS", "acme")
    hub = make_hub()
    assert names(hub) == [*SHIPPED_PROVIDERS, "Beta"]
    assert_never_imported(*guarded["acme"])
    assert_never_imported(*guarded["gamma"])


@pytest.mark.parametrize("deny", ["provhub", SHIPPED, "PROVHUB-PROVIDERS"])
def test_shipped_plugin_can_be_denied(
    guarded: dict[str, tuple[Dist, Path]], monkeypatch: pytest.MonkeyPatch, deny: str
) -> None:
    monkeypatch.setenv("PROVHUB_DISABLE_PLUGINS", deny)
    hub = make_hub()
    assert record(hub, SHIPPED).status is PluginStatus.DISABLED
    assert names(hub) == ["Acme", "Beta", "Gamma"]
    assert hub.providers(model="gpt-4") == []


def test_denied_plugin_that_would_crash_on_import_is_never_imported(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = write_dist(site, "landmine", "raise SystemExit('imported a denied plugin')\n")
    monkeypatch.setenv("PROVHUB_DISABLE_PLUGINS", "landmine")
    hub = make_hub(strict=True)
    assert record(hub, "landmine").status is PluginStatus.DISABLED
    assert dist.module not in sys.modules


# -- discovery details -------------------------------------------------------------------------


def test_distribution_visible_twice_on_sys_path_loads_once(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_plugin(site, "acme-provhub", ["Acme"])
    again = tmp_path / "again"
    # Same distribution, same module name, in a second sys.path entry (e.g. an
    # installed copy plus a development checkout).
    write_dist(again, first.name, (site / f"{first.module}.py").read_text(), module=first.module)
    monkeypatch.syspath_prepend(str(again))

    hub = make_hub(strict=True)
    assert record(hub, "acme-provhub").status is PluginStatus.LOADED
    assert names(hub) == [*SHIPPED_PROVIDERS, "Acme"]


def test_shipped_plugin_loads_first_then_third_party_by_distribution_name(site: Path) -> None:
    write_plugin(site, "zeta-plugin", ["Zeta"])
    write_plugin(site, "aardvark-plugin", ["Aardvark"])
    hub = make_hub()
    assert [p.name for p in hub.plugins] == [SHIPPED, "aardvark-plugin", "zeta-plugin"]
    assert names(hub) == [*SHIPPED_PROVIDERS, "Aardvark", "Zeta"]


def test_plugin_record_as_dict_is_json_ready(site: Path) -> None:
    write_dist(site, "broken-plugin", hook_module(hook_raises="nope"), version="0.1")
    hub = make_hub()
    assert record(hub, "broken-plugin").as_dict() == {
        "name": "broken-plugin",
        "distribution": "broken-plugin",
        "version": "0.1",
        "status": "failed",
        "providers": [],
        "error": "RuntimeError: nope",
        "stage": "hook",
        "entry_point": record(hub, "broken-plugin").value,
        "unavailable": [],
    }


# -- a real wheel, built and pip-installed -----------------------------------------------------

WHEEL_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "acme-wheel-provider"
version = "0.4.2"
dependencies = ["provhub"]

[project.entry-points.provhub]
acme-wheel = "acme_wheel.plugin"

[tool.hatch.build.targets.wheel]
packages = ["src/acme_wheel"]
"""

WHEEL_PLUGIN = hook_module(
    provider_class("AcmeWheel", models=["acme-wheel-1"], supports_stream=True),
    register=["AcmeWheel"],
)


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_pip_installed_wheel_is_discovered_without_touching_provhub(tmp_path: Path) -> None:
    project = tmp_path / "acme-wheel-provider"
    package = project / "src" / "acme_wheel"
    package.mkdir(parents=True)
    (project / "pyproject.toml").write_text(WHEEL_PYPROJECT)
    (package / "__init__.py").write_text('"""Acme provider for provhub."""\n')
    (package / "plugin.py").write_text(WHEEL_PLUGIN)

    # Offline: hatchling comes from this venv, nothing is downloaded.
    offline = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    dist = tmp_path / "dist"
    run(
        "-m",
        "build",
        "--wheel",
        "--no-isolation",
        "--outdir",
        str(dist),
        str(project),
        cwd=tmp_path,
        env=offline,
    )
    (wheel,) = dist.glob("acme_wheel_provider-0.4.2-*.whl")
    target = tmp_path / "target"
    run(
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--target",
        str(target),
        str(wheel),
        cwd=tmp_path,
        env=offline,
    )
    assert (target / "acme_wheel_provider-0.4.2.dist-info" / "entry_points.txt").is_file()

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    env.update(PYTHONPATH=str(target), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    providers = json.loads(run("-m", "provhub", "providers", "--json", cwd=tmp_path, env=env))
    assert [(p["name"], p["source"]) for p in providers] == [
        *((name, SHIPPED) for name in SHIPPED_PROVIDERS),
        ("AcmeWheel", "acme-wheel"),
    ]
    plugins = {
        p["name"]: p
        for p in json.loads(run("-m", "provhub", "plugins", "--json", cwd=tmp_path, env=env))
    }
    assert plugins["acme-wheel"]["distribution"] == "acme-wheel-provider"
    assert plugins["acme-wheel"]["version"] == "0.4.2"
    assert plugins["acme-wheel"]["status"] == "loaded"
    assert plugins["acme-wheel"]["entry_point"] == "acme_wheel.plugin"
    # Installed beside provhub, not into its environment.
    importlib.invalidate_caches()
    assert "acme-wheel" not in {ep.name for ep in importlib.metadata.entry_points(group="provhub")}


# -- names in PROVHUB_PLUGINS / PROVHUB_DISABLE_PLUGINS that match nothing ----------------------


@pytest.mark.parametrize(
    ("env", "unknown"),
    [
        ({"PROVHUB_PLUGINS": "My_Plugin, provhub"}, []),  # normalised, and the distribution
        ({"PROVHUB_PLUGINS": " my-plugn "}, [("PROVHUB_PLUGINS", "my-plugn", "my-plugin")]),
        ({"PROVHUB_DISABLE_PLUGINS": "zzz"}, [("PROVHUB_DISABLE_PLUGINS", "zzz", None)]),
        (
            {"PROVHUB_PLUGINS": "", "PROVHUB_DISABLE_PLUGINS": ",, ,"},
            [],
        ),
    ],
)
def test_selection_reports_names_that_match_no_installed_plugin(
    env: dict[str, str], unknown: list[tuple[str, str, str | None]]
) -> None:
    from provhub._plugins import PluginSelection

    selection = PluginSelection.from_env(env)
    assert selection.unknown(["my-plugin", "provhub_providers", "provhub"]) == unknown


def test_unknown_names_become_records_and_warning_events(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plugin(site, "acme-provhub", ["Acme"])
    monkeypatch.setenv("PROVHUB_PLUGINS", "acme-provhb")
    events: list[dict[str, Any]] = []
    hub = Hub(Config(), subscribers=[events.append])
    (unknown,) = [p for p in hub.plugins if p.status is PluginStatus.UNKNOWN]
    assert unknown.name == "acme-provhb"
    assert "did you mean 'acme-provhub'?" in str(unknown.error)
    (event,) = [e for e in events if e["event"] == "plugin.unknown"]
    assert (event["level"], event["plugin"], event["error"]) == (
        "warning",
        "acme-provhb",
        unknown.error,
    )
    assert unknown.as_dict()["status"] == "unknown"
