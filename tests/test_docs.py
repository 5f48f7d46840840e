"""The documentation is true: it builds, its code runs, its references match the code.

- The MkDocs site builds with ``--strict`` (when mkdocs is installed: the ``docs`` extra).
- Every Python block of the guides runs, against a fake upstream standing in for
  Lockchat. A block preceded by ``<!-- docs-test: skip -->`` is a fragment;
  ``<!-- docs-test: continue -->`` appends a block to the one before it;
  ``<!-- docs-test: needs MODULE ... -->`` runs it only where the modules import.
- The references name every CLI option and exit code, every config key with its
  default, every event with the fields and level it is really emitted with, every
  error class, and every public name of the API.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import provhub
import provhub.testing
from provhub.testing import FakeUpstream

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = (
    "index.md",
    "concepts.md",
    "embedding.md",
    "tools.md",
    "plugins.md",
    "testing.md",
    "configuration.md",
    "errors.md",
    "telemetry.md",
)


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    nxt = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE).search(text, start + len(heading))
    return text[start : nxt.start() if nxt else len(text)]


# -- the site ------------------------------------------------------------------


def test_site_builds_with_mkdocs_strict(tmp_path: Path) -> None:
    missing = [
        m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if not _importable(m)
    ]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: the site needs the docs extra "
            "(pip install -e '.[docs]'); this test then runs 'mkdocs build --strict'"
        )
    for linked in ("performance.md", "reliability.md"):
        assert (DOCS / linked).is_file(), f"mkdocs.yml's nav links docs/{linked}, which is missing"
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        # No bytecode for the hook module: the build leaves the checkout untouched.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The guide shows the example plugin's real source (snippets resolved) ...
    guide = (site / "plugins" / "index.html").read_text(encoding="utf-8")
    assert "provhub_register_providers" in guide
    assert "--8<--" not in guide
    # ... and the API reference is generated from the docstrings.
    api = (site / "api" / "hub" / "index.html").read_text(encoding="utf-8")
    assert "Discovers providers, routes requests" in api


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# -- code blocks ---------------------------------------------------------------

_BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<marker>[^>]*?) -->\n)?```python[^\n]*\n(?P<code>.*?)```", re.DOTALL
)


def _blocks() -> Iterator[Any]:
    for name in GUIDES:
        runnable: list[tuple[str, list[str]]] = []
        for match in _BLOCK.finditer(page(name)):
            marker = (match.group("marker") or "").split()
            code = match.group("code")
            if code.lstrip().startswith("--8<--"):
                continue  # a file of the example plugin, run by test_example_plugin.py
            if marker[:1] == ["skip"]:
                continue
            if marker[:1] == ["continue"]:
                previous, needs = runnable[-1]
                runnable[-1] = (previous + "\n" + code, needs)
                continue
            runnable.append((code, marker[1:] if marker[:1] == ["needs"] else []))
        for index, (code, needs) in enumerate(runnable, 1):
            yield pytest.param(code, needs, id=f"{name}-{index}")


@pytest.mark.parametrize(("code", "needs"), list(_blocks()))
def test_guide_code_runs(code: str, needs: list[str], tmp_path: Path) -> None:
    missing = [module for module in needs if not _importable(module)]
    if missing:
        pytest.skip(f"this example needs {', '.join(missing)}, not installed here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    with FakeUpstream() as upstream:
        # The examples use the installed plugins; Lockchat answers from the fake.
        (tmp_path / "provhub.toml").write_text(f'[providers.Lockchat]\nurl = "{upstream.url}"\n')
        (tmp_path / "example.py").write_text(code, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "example.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


# -- getting started -------------------------------------------------------------


def test_getting_started_uses_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = section(readme, "## Set up (two commands)")
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.DOTALL)
    assert len(commands) == 2, setup
    start = section(page("index.md"), "## Getting started")
    for command in commands:
        assert f"```bash\n{command}\n```" in start, command
    # The test command is the one continuous integration runs.
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


# -- references --------------------------------------------------------------------


def test_cli_reference_names_every_command_option_and_exit_code() -> None:
    from provhub import cli

    text = page("cli.md")
    parser = cli._parser()
    common = section(text, "## Common options")
    for action in parser._actions:
        for option in action.option_strings:
            assert f"`{option}" in common, option
    (commands,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    for name, sub in commands.choices.items():
        part = section(text, f"## `provhub {name}`")
        for action in sub._actions:
            if action.option_strings and action.dest not in {"help", "config", "log_format"}:
                if action.dest == "verbose":
                    continue
                for option in action.option_strings:
                    assert f"`{option}" in part, f"provhub {name} {option}"
            elif not action.option_strings:
                assert f"`{action.dest.upper()}`" in part, f"provhub {name} {action.dest}"
    codes = section(text, "## Exit codes")
    for code in (
        cli.EXIT_OK,
        cli.EXIT_USAGE,
        cli.EXIT_NO_PROVIDER,
        cli.EXIT_FAILED,
        cli.EXIT_INTERRUPTED,
        1,
    ):
        assert f"| `{code}` |" in codes, code


def _default(field: dataclasses.Field[Any]) -> str | None:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f'"{value.value}"'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return None
    if isinstance(value, tuple | list):
        return "[]" if not value else None
    if isinstance(value, dict):
        return "{}" if not value else None
    return None  # a nested table: documented in its own section


@pytest.mark.parametrize(
    ("cls", "heading", "skip"),
    [
        (provhub.Config, "## Top level", {"path", "providers", "groups", "prices", "source"}),
        (provhub.RouterConfig, "## `[router]`", set()),
        (provhub.Timeouts, "## `[router.timeouts]`", set()),
        (provhub.Limits, "## `[limits]`", set()),
        (provhub.TelemetryConfig, "## `[telemetry]`", set()),
        (provhub.ProviderConfig, "## `[providers.NAME]`", {"name", "extra"}),
        # The group's default strategy is written "ordered" in the file (PRIORITY inside).
        (provhub.GroupConfig, "## `[groups.NAME]`", {"name", "strategy"}),
        (provhub.GroupMember, "### Members", {"provider"}),
        (provhub.Price, "## `[prices.MODEL]`", set()),
        (provhub.StateConfig, "## `[state]`", set()),
    ],
)
def test_configuration_reference_names_every_key_and_default(
    cls: type, heading: str, skip: set[str]
) -> None:
    part = section(page("configuration.md"), heading)
    rows = [line for line in part.splitlines() if line.startswith("| `")]
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        (row,) = [r for r in rows if r.startswith(f"| `{field.name}`")]
        default = _default(field)
        if default is not None:
            assert f"| `{default}` |" in row, (field.name, default, row)


SPEC_EVENTS = {
    "plugin.loaded",
    "plugin.failed",
    "provider.registered",
    "route.planned",
    "attempt.started",
    "stream.first_token",
    "stream.chunk",
    "stream.completed",
    "attempt.failed",
    "route.fallback",
    "stream.interrupted",
    "route.exhausted",
    "circuit.opened",
    "circuit.half_open",
    "circuit.closed",
}
REQUEST_FIELDS = {"request_id", "model", "provider", "attempt"}


def _documented_events(*, providers: bool = False) -> dict[str, tuple[str, str]]:
    """Event name -> (level, its section of events.md).

    provhub's own events, or (``providers=True``) those under "Provider events":
    the shipped providers' own, checked where the provider runs (tests/test_local.py).
    """
    full = page("events.md")
    own = section(full, "## Provider events")
    text = own if providers else full.replace(own, "")
    events = {}
    for name in re.findall(r"^### `([a-z_]+\.[a-z_]+)`$", text, re.MULTILINE):
        part = section(text, f"### `{name}`")
        level = re.search(r"^`(debug|info|warning|error)`\.", part, re.MULTILINE)
        assert level, f"events.md does not give the level of {name}"
        events[name] = (level.group(1), part)
    return events


def test_events_reference_names_every_event_in_the_code_and_the_spec() -> None:
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "core" / "provhub").glob("*.py")
    )
    in_code = set(
        re.findall(r'"((?:plugin|provider|route|attempt|stream|circuit|state)\.[a-z_]+)"', source)
    )
    # "state.backend" and alike are config keys (in ConfigError), not events.
    in_code -= {f"state.{f.name}" for f in dataclasses.fields(provhub.StateConfig)}
    documented = set(_documented_events())
    assert in_code - documented == set(), "emitted but not documented"
    assert SPEC_EVENTS - documented == set(), "in SPEC §7 but not documented"


_SCENARIO = r"""
import json, logging, sys, time
from pathlib import Path

# A real distribution whose plugin fails to import: plugin.failed.
root = Path.cwd() / "site"
(root / "broken_dist-0.1.dist-info").mkdir(parents=True)
(root / "broken_dist-0.1.dist-info" / "METADATA").write_text(
    "Metadata-Version: 2.1\nName: broken-dist\nVersion: 0.1\n")
(root / "broken_dist-0.1.dist-info" / "entry_points.txt").write_text(
    "[provhub]\nbroken = broken_plugin_module\n")
(root / "broken_plugin_module.py").write_text("raise ImportError('boom')\n")
# One whose provider needs a missing optional dependency: provider.unavailable.
(root / "partial_dist-0.1.dist-info").mkdir(parents=True)
(root / "partial_dist-0.1.dist-info" / "METADATA").write_text(
    "Metadata-Version: 2.1\nName: partial-dist\nVersion: 0.1\n")
(root / "partial_dist-0.1.dist-info" / "entry_points.txt").write_text(
    "[provhub]\npartial = partial_plugin_module\n")
(root / "partial_plugin_module.py").write_text(
    "import provhub\n"
    "@provhub.hookimpl\n"
    "def provhub_register_providers(register):\n"
    "    register.unavailable('fancy', 'needs fancylib: pip install partial-dist[fancy]')\n")
sys.path.insert(0, str(root))
import os
os.environ["PROVHUB_DISABLE_PLUGINS"] = "no-such-plugin"  # plugin.unknown

from provhub import AllProvidersFailedError, Config, Hub, NoProviderError, StreamInterruptedError
from provhub import FinishReason, UpstreamTimeoutError
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

seen = {}

class Capture(logging.Handler):
    def emit(self, record):
        name = getattr(record, "provhub_event", None)
        if name:
            entry = seen.setdefault(name, {"levels": set(), "fields": set()})
            entry["levels"].add(record.levelname.lower())
            entry["fields"].update(record.provhub_fields)

logger = logging.getLogger("provhub")
logger.addHandler(Capture())
logger.setLevel(logging.DEBUG)
HI = [{"role": "user", "content": "hi"}]

with FakeUpstream() as a, FakeUpstream() as b:
    config = Config.from_mapping({
        "router": {"retries": 1, "backoff_base": 0.001, "backoff_max": 0.002,
                   "breaker_threshold": 2, "breaker_cooldown": 0.5,
                   "timeouts": {"connect": 2, "first_token": 2, "idle": 1, "total": 5}},
        "providers": {
            "Lockchat": {"url": a.url},
            "insecure": {"type": "openai-compatible", "base_url": "http://example.invalid/v1",
                         "models": ["other"], "verify_tls": False},
        },
    })
    hub = Hub(config)
    hub.register(OpenAICompatible("one", a.base_url, ["m"]))
    hub.register(OpenAICompatible("two", b.base_url, ["m"]))
    hub.complete("m", HI)
    a.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2))
    try:
        list(hub.stream("m", HI, provider="one"))
    except StreamInterruptedError:
        pass
    hub.complete("m", HI, provider="one")  # a success resets one's failure count
    with hub.stream("m", HI, provider="two") as early:  # closed early: stream.cancelled
        next(iter(early))
    a.script(Behaviour(status=503), Behaviour(status=503))
    hub.complete("m", HI)  # one fails twice (its circuit opens), two answers
    a.default = b.default = Behaviour(status=500)
    for _ in range(2):
        try:
            hub.complete("m", HI)
        except (AllProvidersFailedError, NoProviderError):
            pass
    a.default = b.default = Behaviour()
    time.sleep(0.7)  # the breakers' cooldown: a duration under test, not a synchronisation
    hub.complete("m", HI)

    class Tail:  # the connection goes silent after the finish reason: stream.tail_failed
        name = "tail"
        models = ("t",)
        supports_stream = True

        @staticmethod
        def create_completion(model, messages, stream, **kw):
            yield "whole"
            yield FinishReason("stop")
            raise UpstreamTimeoutError("upstream went silent", provider="tail", retryable=True)

    hub.register(Tail)
    assert "".join(hub.stream("t", HI)) == "whole"
    hub.close()

print(json.dumps({k: {"levels": sorted(v["levels"]), "fields": sorted(v["fields"])}
                  for k, v in seen.items()}))
"""


def test_events_reference_matches_the_events_really_emitted(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCENARIO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    emitted: dict[str, dict[str, list[str]]] = json.loads(done.stdout)
    documented = _documented_events()
    # The state events need a Redis that goes away and comes back: test_state_redis.py
    # provokes them and checks them against this reference the same way.
    documented = {k: v for k, v in documented.items() if not k.startswith("state.")}
    assert set(emitted) == set(documented), "the scenario must provoke every documented event"
    for name, facts in emitted.items():
        level, part = documented[name]
        assert facts["levels"] == [level], (name, facts["levels"], level)
        fields = set(facts["fields"])
        if fields >= REQUEST_FIELDS:
            fields -= REQUEST_FIELDS  # documented once, for every request event
        for field in fields:
            assert f"| `{field}` |" in part, f"{name}: field {field!r} is not documented"


def test_errors_reference_names_every_error() -> None:
    text = page("errors.md")
    api = page("api/errors.md")
    errors = [
        name
        for name in provhub.__all__
        if isinstance(getattr(provhub, name), type)
        and issubclass(getattr(provhub, name), BaseException)
    ]
    assert len(errors) >= 14
    for name in errors:
        assert f"## `{name}`" in text or f"| `{name}` |" in text, name
        assert f"::: provhub.{name}\n" in api, name


def test_api_reference_covers_every_public_name() -> None:
    directives = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md"))
    for name in provhub.__all__:
        if name != "__version__":
            assert f"::: provhub.{name}\n" in directives, name
    for name in provhub.testing.__all__:
        assert f"::: provhub.testing.{name}\n" in directives, name
