"""The CLI samples shown in docs/cli.md and docs/errors.md, produced by real runs.

A sample in a page is an HTML comment naming a scenario, then a ``console``
block::

    <!-- cli-sample: refused -->
    ```console
    $ PROVHUB_LOCKCHAT_URL=http://127.0.0.1:41523 provhub chat -m gpt-3.5-turbo "Hello world"
    provhub: error: ...
    ```

Each scenario here sets up what it needs (a ``FakeUpstream``, a refused port, a
silent socket, a config file), runs ``provhub`` in a subprocess and returns the
block: the command as typed, then what the terminal shows (stdout and stderr in
the order they were written). ``python tests/cli_samples.py``
rewrites every block from fresh runs; ``tests/test_cli_docs.py`` checks that the
pages show what the CLI prints, up to what changes from run to run (numbers:
ports, timings; request ids; the temporary directory, shown as
``/home/me/project``).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

if __name__ == "__main__":  # run as a script: import the helpers next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_support import Cli, HangingServer
from provhub.testing import Behaviour, FakeUpstream, unused_port_url

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("docs/cli.md", "docs/errors.md")
PROJECT = "/home/me/project"
HOME_CONFIG = "/home/me/.config"
KEY_ENV = "OPENAI_API_KEY"
KEY = "sk-docs-Qw3rTy7u1oP"

_SAMPLE = re.compile(r"<!-- cli-sample: ([\w-]+) -->\n```console\n(.*?)```\n", re.DOTALL)

Scenario = Callable[[ExitStack, Cli], tuple[list[str], dict[str, str], str]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(func: Scenario) -> Scenario:
        SCENARIOS[name] = func
        return func

    return register


def api_table(url: str, *, key: bool = True, tools: bool = False, name: str = "openai") -> str:
    lines = [
        f"[providers.{name}]",
        'type = "openai-compatible"',
        f'base_url = "{url}"',
        'models = ["gpt-4o-mini"]',
    ]
    if key:
        lines.append(f'api_key_env = "{KEY_ENV}"')
    if tools:
        lines.append('capabilities = ["tools"]')
    return "\n".join(lines) + "\n"


FAST = "[router]\nretries = 1\nbackoff_base = 0.05\nbackoff_max = 0.1\n"


# -- scenarios ---------------------------------------------------------------------------------


@scenario("help")
def _help(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    return [], {}, ""


@scenario("providers")
def _providers(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    return ["providers"], {}, ""


@scenario("providers-require")
def _providers_require(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    return ["providers", "--model", "gpt-4", "--require", "auth"], {}, ""


@scenario("plugins-typo")
def _plugins_typo(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    return ["plugins"], {"PROVHUB_PLUGINS": "provhub-providrs"}, ""


@scenario("route-tools")
def _route_tools(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    upstream = stack.enter_context(FakeUpstream())
    cli.config(
        api_table(upstream.base_url, key=False, tools=True)
        + api_table(upstream.base_url, key=False, name="ollama")
    )
    (cli.cwd / "tools.json").write_text(json.dumps([TOOL]))
    return ["route", "-m", "gpt-4o-mini", "--tools", "tools.json"], {}, ""


@scenario("check")
def _check(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    upstream = stack.enter_context(FakeUpstream())
    silent = stack.enter_context(HangingServer())
    cli.config(api_table(upstream.base_url) + api_table(silent.url + "/v1", key=False, name="vllm"))
    env = {"PROVHUB_LOCKCHAT_URL": unused_port_url(), KEY_ENV: KEY}
    return ["check", "--timeout", "2"], env, ""


@scenario("chat-json")
def _chat_json(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    upstream = stack.enter_context(FakeUpstream())
    upstream.default = Behaviour(tokens=("Paris",))
    cli.config(api_table(upstream.base_url))
    return ["chat", "-m", "gpt-4o-mini", "--json", "Capital of France?"], {KEY_ENV: KEY}, ""


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@scenario("chat-tools")
def _chat_tools(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    upstream = stack.enter_context(FakeUpstream())
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            }
        ],
    }
    upstream.default = Behaviour(body=json.dumps(answer).encode())
    cli.config(api_table(upstream.base_url, tools=True))
    (cli.cwd / "tools.json").write_text(json.dumps([TOOL]))
    args = [
        "chat",
        "-m",
        "gpt-4o-mini",
        "--no-stream",
        "--tools",
        "tools.json",
        "Weather in Paris?",
    ]
    return args, {KEY_ENV: KEY}, ""


@scenario("refused")
def _refused(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    return (
        ["chat", "-m", "gpt-3.5-turbo", "Hello world"],
        {"PROVHUB_LOCKCHAT_URL": unused_port_url()},
        "",
    )


@scenario("dns")
def _dns(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    cli.config(FAST)
    return ["chat", "-m", "gpt-4", "Hello"], {"PROVHUB_LOCKCHAT_URL": "http://lockchat.invalid"}, ""


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


@scenario("http-401")
def _http_401(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    upstream = stack.enter_context(FakeUpstream())
    upstream.default = Behaviour(
        status=401, body=_error_body(f"Incorrect API key provided: {KEY}.")
    )
    cli.config(api_table(upstream.base_url))
    return ["chat", "-m", "gpt-4o-mini", "Hello"], {KEY_ENV: KEY}, ""


@scenario("timeout")
def _timeout(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    silent = stack.enter_context(HangingServer())
    cli.config(
        "[router]\nretries = 0\n[router.timeouts]\nfirst_token = 0.3820692189997317\n"
        + api_table(silent.url + "/v1", key=False)
    )
    return ["chat", "-m", "gpt-4o-mini", "Hello"], {}, ""


@scenario("config-url")
def _config_url(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    cli.config(api_table("http://", key=False))
    return ["chat", "-m", "gpt-4o-mini", "Hello"], {}, ""


@scenario("config-directory")
def _config_directory(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    cli.config(FAST)
    return ["--config", ".", "providers"], {}, ""


@scenario("disabled-plugin")
def _disabled_plugin(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    return ["chat", "-m", "gpt-4", "Hello"], {"PROVHUB_DISABLE_PLUGINS": "provhub"}, ""


@scenario("verbose-config")
def _verbose_config(stack: ExitStack, cli: Cli) -> tuple[list[str], dict[str, str], str]:
    cli.config(FAST)
    return ["-v", "plugins"], {}, ""


# -- running and comparing ---------------------------------------------------------------------


@contextmanager
def _scratch() -> Iterator[tuple[ExitStack, Cli]]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        cli = Cli(Path(tmp))
        cli.env["COLUMNS"] = "100"  # help is wrapped to the terminal: one width everywhere
        yield stack, cli


def render(name: str) -> str:
    """Run scenario ``name`` and return its block: ``$ command``, then the output."""
    with _scratch() as (stack, cli):
        args, env, stdin = SCENARIOS[name](stack, cli)
        output = cli.terminal(*args, stdin=stdin, **env)
        shown_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != KEY_ENV)
        command = " ".join(["provhub", *(shlex.quote(a) for a in args)])
        text = f"$ {shown_env + ' ' if shown_env else ''}{command}\n{output}"
        for real, shown in (
            (str(cli.xdg), HOME_CONFIG),
            (str(cli.cwd), PROJECT),
            (str(Path(tempfile.gettempdir()).resolve()), "/tmp"),
        ):
            text = text.replace(real, shown)
        return text


def normalized(text: str) -> str:
    """``text`` without what changes between runs: numbers, ids, spacing."""
    text = re.sub(r"\b[0-9a-f]{16}\b", "ID", text)
    text = re.sub(r"\d+(\.\d+)?", "0", text)
    return " ".join(text.split())


def samples(page: str) -> list[tuple[str, str]]:
    """``(scenario, block)`` for every sample in ``page`` (relative to the repository)."""
    return _SAMPLE.findall((ROOT / page).read_text(encoding="utf-8"))


def write() -> None:
    """Rewrite every sample block of the pages from fresh runs."""
    for page in PAGES:
        path = ROOT / page
        text = path.read_text(encoding="utf-8")

        def fresh(match: re.Match[str]) -> str:
            return f"<!-- cli-sample: {match[1]} -->\n```console\n{render(match[1])}```\n"

        path.write_text(_SAMPLE.sub(fresh, text), encoding="utf-8")


if __name__ == "__main__":
    write()
