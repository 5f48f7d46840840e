"""The ``provhub`` command line (SPEC §9).

Answers and listings go to stdout; events, progress and errors to stderr. An
error is one line saying what failed, why, and what to do next (``-v`` adds the
chain of causes). Exit codes: 0 ok, 2 bad usage or input, 3 no provider for the
request, 4 all providers failed (``check``: a probe failed), 130 interrupted,
1 an internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from provhub._explain import Endpoint
    from provhub._hub import Hub
    from provhub._probe import Probe
    from provhub._spec import Capability, ProviderInfo
    from provhub._stream import Stream

__all__ = ["main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_PROVIDER, EXIT_FAILED, EXIT_INTERRUPTED = (
    0,
    1,
    2,
    3,
    4,
    130,
)

_EXIT_CODES = """\
exit codes:
  0    success (also when stdout is closed early, as by '| head')
  1    internal error (a bug in provhub or a plugin; -v prints the traceback)
  2    bad usage or input: unknown option, bad config file, invalid request
  3    no provider for the request (unknown model, none qualifies, none to check)
  4    all providers failed, or a stream broke mid-answer; 'check': a probe failed
  130  interrupted (Ctrl-C)"""

_CHECK_EXIT_CODES = """\
exit codes:
  0    every checked provider answered (skipped ones do not count)
  2    bad usage: an unknown provider name, a bad config file
  3    no provider to check
  4    a probe failed; with no PROVIDER named, also a plugin that failed or an unknown
       plugin name in PROVHUB_PLUGINS/PROVHUB_DISABLE_PLUGINS"""

_FLAG_COLUMNS = (
    ("working", "working"),
    ("needs_auth", "auth"),
    ("supports_stream", "stream"),
    ("supports_message_history", "history"),
    ("supports_system_message", "system"),
    ("supports_tools", "tools"),
    ("supports_vision", "vision"),
    ("supports_structured_output", "schema"),
    ("supports_reasoning", "reasoning"),
)

# Provider progress events shown on stderr while a command waits (SPEC §12: the
# local model's first load). Event name -> the line to print from its fields;
# a provider adds a row here, nothing else changes.
_PROGRESS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "local.assembling": lambda e: str(e.get("summary") or "preparing the local model"),
    "local.loading": lambda e: str(e.get("summary") or "loading the local model"),
    "local.loaded": lambda e: str(e.get("summary") or "local model loaded"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"provhub: error: {message} (see '{self.prog} --help')\n")


class _UsageError(Exception):
    """Bad input found by the CLI itself (exit 2)."""


def _user_config() -> str:
    from provhub._config import user_config_path

    return str(user_config_path())


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # SPEC §9 writes `provhub chat -m gpt-4 --log-format json`: the common options
    # work before and after the command. On a command they default to SUPPRESS,
    # so an option given only before the command is not reset by its defaults.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"config file (default: $PROVHUB_CONFIG, else ./provhub.toml, else {_user_config()})",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=default("console"),
        help="how events are written to stderr: aligned text or JSON lines",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="-v: info events and the causes under an error; -vv: debug events too",
    )


def _capability_help(what: str) -> str:
    return (
        f"{what}: comma-separated stream, message_history, system_message, auth, tools, "
        "vision, structured_output, reasoning"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="provhub",
        description=textwrap.fill(
            "Talk to many LLM chat-completion providers through one interface: list what "
            "is installed, check that it answers, plan routes and chat.",
            78,
        ),
        epilog=f"{_EXIT_CODES}\n\nuser config file: {_user_config()}\n"
        "'provhub COMMAND --help' describes a command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, top=True)
    parser.add_argument("--version", action="version", version=_version())
    common = _Parser(add_help=False)
    _add_common(common, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(
        name: str, summary: str, description: str, epilog: str = _EXIT_CODES
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=textwrap.fill(description, 78),
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    providers = add(
        "providers",
        "the capability matrix of registered providers",
        "List the registered providers, their URL and what each declares it can do. "
        "'working' is the provider's own claim: 'provhub check' asks the upstreams.",
    )
    providers.add_argument(
        "--model", metavar="MODEL", help="only providers serving this model id or alias"
    )
    providers.add_argument(
        "--require", default="", metavar="CAPS", help=_capability_help("only providers with")
    )
    providers.add_argument("--json", action="store_true", help="a JSON list instead of a table")

    plugins = add(
        "plugins",
        "discovered plugins and what happened to each",
        "List every plugin found through the 'provhub' entry-point group: loaded, failed "
        "(with the stage and error), disabled by PROVHUB_PLUGINS/PROVHUB_DISABLE_PLUGINS, "
        "and names in those variables that match no installed plugin (unknown).",
    )
    plugins.add_argument("--json", action="store_true", help="a JSON list instead of a table")

    check = add(
        "check",
        "check the setup: config, plugins, keys, and a live probe of each provider",
        "Show the config file in use, the plugins, which API keys are set (never their "
        "values), and probe each provider: GET its model listing where it has one "
        "(free), else connect. --completion also sends a real one-line request, which "
        "may cost money. Probes run at the same time, each within --timeout.",
        _CHECK_EXIT_CODES,
    )
    check.add_argument(
        "provider",
        nargs="*",
        metavar="PROVIDER",
        help="providers to check (default: all registered)",
    )
    check.add_argument(
        "--completion",
        action="store_true",
        help="also send a real completion request to each provider (may cost money)",
    )
    check.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="time limit of each probe phase (default: 5)",
    )
    check.add_argument("--json", action="store_true", help="one JSON object instead of text")

    route = add(
        "route",
        "show the route plan for a request, without sending it",
        "Plan a request as chat would and show the candidates in order and every "
        "excluded provider with its reason, including capabilities the options imply "
        "(--tools needs tools, --schema structured_output). Nothing is sent.",
    )
    _add_request_options(route)
    route.add_argument("--json", action="store_true", help="the plan as JSON")

    chat = add(
        "chat",
        "send a prompt and print the answer",
        "Send one prompt and print the answer to stdout as it arrives. Tool calls the "
        "model makes are printed after the text, one per line: "
        "tool call NAME(ARG=VALUE, ...) [id ID].",
    )
    _add_request_options(chat)
    chat.add_argument("-p", "--provider", metavar="PROVIDER", help="use only this provider")
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.add_argument(
        "-t", "--temperature", type=float, metavar="T", help="sampling temperature, 0 to 2"
    )
    chat.add_argument("--max-tokens", type=int, metavar="N", help="cap on the answer's tokens")
    chat.add_argument(
        "--tool-choice",
        metavar="CHOICE",
        help="auto, required, none, or the name of one tool to call (needs --tools)",
    )
    chat.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (text, provider, model, finish_reason, usage, attempts, "
        "tool_calls, reasoning, refusal, request_id) instead of the text",
    )
    chat.add_argument(
        "--show-reasoning",
        action="store_true",
        help="print the model's reasoning (when it sends any) to stderr",
    )
    chat.add_argument(
        "prompt", nargs="?", default="-", metavar="PROMPT", help="the prompt, or '-' for stdin"
    )

    completion = add(
        "completion",
        "print a shell completion script (bash, zsh, fish)",
        'Print a completion script. bash: eval "$(provhub completion bash)" in ~/.bashrc; '
        'zsh: eval "$(provhub completion zsh)" in ~/.zshrc after compinit; '
        "fish: provhub completion fish > ~/.config/fish/completions/provhub.fish",
    )
    completion.add_argument(
        "shell", nargs="?", choices=("bash", "zsh", "fish"), help="the shell to complete for"
    )
    # Used by the scripts themselves for model ids and provider names.
    completion.add_argument("--values", choices=("models", "providers"), help=argparse.SUPPRESS)

    serve = add(
        "serve",
        "run the OpenAI-compatible gateway (extra 'server')",
        "Serve POST /v1/chat/completions, /v1/models, /v1/providers, /healthz, /readyz, "
        "/metrics and a status page at / over the configured providers. Without "
        "[server] api_keys_env it listens on loopback only, unless "
        "--allow-unauthenticated.",
    )
    serve.add_argument(
        "--host", metavar="HOST", help="address to listen on (default: [server] host, 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, metavar="PORT", help="TCP port (default: [server] port, 8080)"
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (default: [server] workers, 1)"
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen on a non-loopback address without API keys (only behind a proxy that "
        "checks access)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    return parser


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        metavar="MODEL",
        help="model id or alias (default: [router] default_model, else local when installed)",
    )
    parser.add_argument("-s", "--system", metavar="TEXT", help="a system message")
    parser.add_argument(
        "--require", default="", metavar="CAPS", help=_capability_help("extra capabilities")
    )
    parser.add_argument(
        "--tools",
        metavar="FILE",
        help="JSON file with the tools array the model may call (OpenAI format)",
    )
    parser.add_argument(
        "--schema",
        metavar="FILE",
        help="JSON Schema file the answer must follow (sent as response_format json_schema)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def _version() -> str:
    from provhub import __version__

    return f"provhub {__version__}"


def _capabilities(text: str) -> Capability:
    from provhub._spec import Capability

    try:
        return Capability.parse(text)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


# -- the hub and where providers' URLs come from ------------------------------------------


class _Context:
    """What one CLI run holds: its arguments and, once built, its hub."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.built: Hub | None = None

    def hub(self, *, progress: bool = False, retries: int | None = None) -> Hub:
        from provhub._config import load_config
        from provhub._hub import Hub

        config = load_config(self.args.config)
        if retries is not None:
            config = dataclasses.replace(
                config, router=dataclasses.replace(config.router, retries=retries)
            )
        subscribers = [_show_progress] if progress else []
        self.built = Hub(config, subscribers=subscribers)
        return self.built

    def endpoints(self) -> dict[str, Endpoint]:
        hub = self.built
        return {} if hub is None else _endpoints(hub)

    def close(self) -> None:
        if self.built is not None:
            self.built.close()


def _endpoints(hub: Hub) -> dict[str, Endpoint]:
    from provhub._explain import endpoint_of

    return {
        info.name: endpoint_of(info, hub.config.provider(info.name), hub.config.path)
        for info in hub.providers()
    }


def _show_progress(event: Mapping[str, Any]) -> None:
    render = _PROGRESS.get(str(event.get("event")))
    if render is not None:
        print(f"provhub: {render(event)}", file=sys.stderr, flush=True)


# -- output helpers ---------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    # The last column is not padded: it may be long (a URL, a message).
    widths[-1] = 0
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * (w or len(headers[-1])) for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN``.

    Error lines quote what an upstream sent; a hostile one must not be able to
    move the cursor, recolour or clear the user's terminal, or forge lines.
    """
    return text.translate(_CONTROL)


def _hint(text: str) -> None:
    print(f"provhub: {text}", file=sys.stderr)


def _url_cell(endpoint: Endpoint | None, info: ProviderInfo) -> str:
    if endpoint is None or endpoint.url is None:
        return "(in-process)" if info.url is None else info.url
    suffix = {"env": f" (${endpoint.url_env})", "config": " (config)"}.get(endpoint.origin, "")
    return endpoint.url + suffix


# -- providers / plugins ----------------------------------------------------------------


def _cmd_providers(ctx: _Context) -> int:
    args = ctx.args
    require = _capabilities(args.require)
    hub = ctx.hub()
    everyone = hub.providers()
    if args.model is not None:
        serving = hub.providers(model=args.model)
        if not serving:
            if args.json:
                print("[]")  # the exit code must not depend on the output format
            hub.route(args.model)  # raises ModelNotFoundError: close matches, disabled plugins
        infos = [i for i in serving if require in i.capabilities_for(args.model)]
    else:
        serving = everyone
        infos = [i for i in serving if require in i.capabilities]
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
    elif infos:
        endpoints = _endpoints(hub)
        rows = [
            [
                i.name,
                *("yes" if i.flags[f] else "-" for f, _ in _FLAG_COLUMNS),
                i.source,
                _url_cell(endpoints.get(i.name), i),
                ", ".join(i.models) or "-",
            ]
            for i in infos
        ]
        headers = ["provider", *(c for _, c in _FLAG_COLUMNS), "source", "url", "models"]
        print(_table(headers, rows))
        _hint("'working' is what each provider declares; 'provhub check' asks them live")
    filtered = args.model is not None or bool(require)
    if infos:
        return EXIT_OK
    if not filtered:
        if not args.json:
            _hint(
                "no providers registered; 'provhub plugins' shows what was found "
                "(PROVHUB_PLUGINS and PROVHUB_DISABLE_PLUGINS can switch plugins off)"
            )
        return EXIT_OK
    if not args.json:
        print(f"provhub: error: {_no_match(serving, require, args.model)}", file=sys.stderr)
    return EXIT_NO_PROVIDER


def _no_match(serving: Sequence[ProviderInfo], require: Capability, model: str | None) -> str:
    """Why no provider matched ``providers --model/--require``, naming what each lacks."""
    wanted = ", ".join(require.names())
    who = f"serving {model!r} " if model is not None else ""
    lacks = []
    for info in serving:
        have = info.capabilities_for(model) if model is not None else info.capabilities
        lacks.append(f"{info.name} lacks {', '.join((require & ~have).names())}")
    detail = "; ".join(lacks) if lacks else "no provider is registered"
    return f"no provider {who}has {wanted}: {detail}"


_PLUGIN_COLUMNS = ("plugin", "distribution", "version", "status", "providers", "error")


def _cmd_plugins(ctx: _Context) -> int:
    hub = ctx.hub()
    if ctx.args.json:
        print(json.dumps([p.as_dict() for p in hub.plugins], indent=2))
        return EXIT_OK
    print(_table(_PLUGIN_COLUMNS, [_plugin_row(p) for p in hub.plugins]))
    return EXIT_OK


def _plugin_row(record: Any) -> list[str]:
    notes = []
    if record.error:
        notes.append(f"[{record.stage}] {record.error}" if record.stage else record.error)
    for provider, reason in record.unavailable:
        notes.append(f"{provider} unavailable: {reason}")
    return [
        record.name,
        record.distribution or "-",
        record.version or "-",
        str(record.status),
        ", ".join(record.providers) or "-",
        "; ".join(notes),
    ]


# -- route / chat -----------------------------------------------------------------------


def _read_json_file(path: str, option: str) -> Any:
    file = Path(path)
    if file.is_dir():
        raise _UsageError(f"{option} {path}: is a directory, not a JSON file")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _UsageError(f"{option} {path}: file not found") from None
    except UnicodeDecodeError:
        raise _UsageError(f"{option} {path}: not UTF-8 text; save it as UTF-8 JSON") from None
    except OSError as exc:
        raise _UsageError(f"{option} {path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _UsageError(
            f"{option} {path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _tools(path: str) -> list[Any]:
    data = _read_json_file(path, "--tools")
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]  # a request-shaped file: {"tools": [...]}
    elif isinstance(data, dict):
        data = [data]  # one tool
    if not isinstance(data, list) or not data:
        raise _UsageError(
            f"--tools {path}: must hold a non-empty JSON array of tools, such as "
            '[{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]'
        )
    tools = []
    for tool in data:
        # A bare function ({"name": ..., "parameters": ...}) is accepted as is written
        # in many docs; it is wrapped the way the API wants it.
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        tools.append(tool)
    return tools


def _schema(path: str) -> dict[str, Any]:
    data = _read_json_file(path, "--schema")
    if not isinstance(data, dict):
        raise _UsageError(f"--schema {path}: must hold a JSON Schema object ({{...}})")
    if isinstance(data.get("schema"), dict) and isinstance(data.get("name"), str):
        json_schema = data  # already {"name", "schema", "strict"?}
    else:
        stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(path).stem)
        json_schema = {"name": stem[:64] or "answer", "schema": data, "strict": True}
    return {"type": "json_schema", "json_schema": json_schema}


def _request_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.tools:
        params["tools"] = _tools(args.tools)
    if args.schema:
        params["response_format"] = _schema(args.schema)
    if getattr(args, "tool_choice", None):
        choice = args.tool_choice
        if choice not in ("auto", "required", "none"):
            choice = {"type": "function", "function": {"name": choice}}
        params["tool_choice"] = choice
    if getattr(args, "temperature", None) is not None:
        params["temperature"] = args.temperature
    if getattr(args, "max_tokens", None) is not None:
        params["max_tokens"] = args.max_tokens
    return params


def _name_the_file(exc: Exception, args: argparse.Namespace) -> None:
    """Re-raise an error about tools/response_format as one naming the file it came from."""
    param = getattr(exc, "param", None) or ""
    for option, key in (("--tools", "tools"), ("--schema", "response_format")):
        path = getattr(args, option[2:], None)
        if path and param.startswith(key):
            raise _UsageError(f"{option} {path}: {exc}") from exc


def _cmd_route(ctx: _Context) -> int:
    from provhub._errors import InvalidRequestError

    args = ctx.args
    require = _capabilities(args.require)
    params = _request_params(args)
    hub = ctx.hub()
    messages = [{"role": "user", "content": "?"}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    try:
        plan = hub.route(args.model, messages, require, **params)
    except InvalidRequestError as exc:
        _name_the_file(exc, args)
        raise
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(
            f"model {plan.model}  strategy {plan.strategy}  required "
            f"{', '.join(plan.required.names()) or '-'}"
        )
        for index, candidate in enumerate(plan.candidates, 1):
            print(f"  {index}. {candidate.label}")
        for name, reason in plan.excluded:
            print(f"  x  {name}: {reason}")
    return EXIT_OK if plan.candidates else EXIT_NO_PROVIDER


def _format_tool_call(call: Any) -> str:
    """``tool call get_weather(city="Paris") [id call_1]``: JSON values, keys bare."""
    try:
        arguments = call.parsed()
    except Exception:
        arguments = None
    if isinstance(arguments, dict):
        inside = ", ".join(
            f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items()
        )
    else:
        inside = call.arguments
    return f"tool call {call.name}({inside}) [id {call.id}]"


def _completion_dict(result: Any) -> dict[str, Any]:
    return {
        "text": result.text,
        "provider": result.provider,
        "model": result.model,
        "finish_reason": result.finish_reason,
        "usage": result.usage.as_dict() if result.usage is not None else None,
        "cost": result.cost,
        "attempts": [dataclasses.asdict(a) for a in result.attempts],
        "tool_calls": [call.as_dict() for call in result.tool_calls],
        "reasoning": result.reasoning,
        "refusal": result.refusal,
        "request_id": result.request_id,
    }


def _cmd_chat(ctx: _Context) -> int:
    from provhub._errors import InvalidRequestError

    args = ctx.args
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise _UsageError("the prompt is empty (pass it as an argument or on stdin with '-')")
    require = _capabilities(args.require)
    params = _request_params(args)
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    # With --log-format json stderr holds JSON events only (the load is among them).
    console = args.log_format == "console"
    hub = ctx.hub(progress=console)
    announced: dict[str, str] = {}
    if args.model is None:
        hub.subscribe(functools.partial(_note_model_id, announced))
    try:
        if args.no_stream:
            result = hub.complete(args.model, messages, args.provider, require, **params)
        else:
            stream = hub.stream(args.model, messages, args.provider, require, **params)
            with stream:
                if args.json:
                    result = stream.complete()
                else:
                    _print_stream(stream, args.show_reasoning)
                    if args.model is None and console:
                        _answered_by(hub, announced, stream.provider, stream.model, stream.usage)
                    return EXIT_OK
    except InvalidRequestError as exc:
        _name_the_file(exc, args)
        raise
    if args.json:
        print(json.dumps(_completion_dict(result), ensure_ascii=False))
        return EXIT_OK
    if args.show_reasoning and result.reasoning:
        print(f"reasoning: {result.reasoning}", file=sys.stderr)
    if result.text:
        sys.stdout.write(result.text + "\n")
    _print_tail(result.text, result.tool_calls, result.refusal, result.finish_reason)
    if args.model is None and console:
        _answered_by(hub, announced, result.provider, result.model, result.usage)
    return EXIT_OK


def _note_model_id(announced: dict[str, str], event: Mapping[str, Any]) -> None:
    # A provider event with ``model_id`` (local.loaded) names the model it runs,
    # which a configured model_path can make differ from the id it registered.
    if "model_id" in event and event.get("provider"):
        announced[str(event["provider"])] = str(event["model_id"])


def _answered_by(
    hub: Hub, announced: Mapping[str, str], provider: str | None, model: str, usage: Any
) -> None:
    """Name the model that answered when the user did not choose one (SPEC §12).

    ``provhub: answered by local (gemma-3-270m), 64 tokens``: the model the
    provider announced, else the id behind the alias (``local`` hides it).
    """
    served = announced.get(provider or "")
    if served is None:
        info = next((i for i in hub.providers() if i.name == provider), None)
        served = info.aliases.get(model, model) if info is not None else model
    tokens = getattr(usage, "completion_tokens", None)
    count = f", {tokens} tokens" if tokens is not None else ""
    sys.stdout.flush()
    print(f"provhub: answered by {provider} ({served}){count}", file=sys.stderr)


def _print_stream(stream: Stream, show_reasoning: bool) -> None:
    from provhub._spec import Reasoning

    out = sys.stdout
    reasoning = False
    text = False
    for item in stream.items():
        if isinstance(item, str):
            out.write(item)
            out.flush()
            text = text or bool(item)
        elif isinstance(item, Reasoning) and show_reasoning:
            if not reasoning:
                sys.stderr.write("reasoning: ")
                reasoning = True
            sys.stderr.write(item.text)
            sys.stderr.flush()
    if reasoning:
        sys.stderr.write("\n")
    if text:
        out.write("\n")
    _print_tail(stream.text, stream.tool_calls, stream.refusal, stream.finish_reason)


def _print_tail(
    text: str, tool_calls: Sequence[Any], refusal: str | None, finish_reason: str | None
) -> None:
    # Tool calls and a refusal are the model's answer as much as its text: stdout.
    for call in tool_calls:
        print(_printable(_format_tool_call(call)))
    if refusal:
        print(f"refusal: {refusal}")
    if not text and not tool_calls and not refusal:
        _hint(f"the answer is empty (finish_reason: {finish_reason or 'not given'})")


# -- check ------------------------------------------------------------------------------


def _cmd_check(ctx: _Context) -> int:
    from provhub._probe import ProbeStatus, probe_all

    args = ctx.args
    hub = ctx.hub(progress=True, retries=0)
    endpoints = _endpoints(hub)
    infos = hub.providers()
    if args.provider:
        known = {i.name.lower(): i for i in infos}
        unknown = [n for n in args.provider if n.lower() not in known]
        if unknown:
            from difflib import get_close_matches

            close = get_close_matches(unknown[0], [i.name for i in infos], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _UsageError(
                f"no provider named {unknown[0]!r}{hint} (registered: "
                f"{', '.join(i.name for i in infos) or 'none'})"
            )
        infos = [known[n.lower()] for n in dict.fromkeys(args.provider)]
    jobs = [(i, hub.config.provider(i.name), endpoints[i.name]) for i in infos]
    completion = (
        functools.partial(_check_completion, hub, args.timeout) if args.completion else None
    )
    probes = probe_all(jobs, timeout=args.timeout, completion=completion)
    source = hub.config.source
    plugin_problems = [
        p for p in hub.plugins if str(p.status) in ("failed", "unknown") and not args.provider
    ]
    failed = any(p.status is ProbeStatus.FAIL for p in probes) or bool(plugin_problems)
    code = EXIT_FAILED if failed else EXIT_OK if probes else EXIT_NO_PROVIDER
    if args.json:
        print(
            json.dumps(
                {
                    "config": source.as_dict() if source is not None else None,
                    "plugins": [p.as_dict() for p in hub.plugins],
                    "providers": [p.as_dict() for p in probes],
                    "exit_code": code,
                },
                indent=2,
            )
        )
        return code
    print(f"config   {source.describe() if source is not None else '-'}")
    for index, record in enumerate(hub.plugins):
        row = _plugin_row(record)
        label = "plugins  " if index == 0 else "         "
        note = f" ({row[5]})" if row[5] else ""
        served = f": {row[4]}" if row[4] != "-" else ""
        version = f" {row[2]}" if row[2] != "-" else ""
        print(f"{label}{record.name}{version} {record.status}{served}{note}")
    if not hub.plugins:
        print("plugins  none (plugin discovery found no entry point)")
    keys = sorted({(e.key_env, e.key_set) for e in endpoints.values() if e.key_env})
    if keys:
        shown = ", ".join(f"{name} {'set' if present else 'NOT SET'}" for name, present in keys)
        print(f"keys     {shown}")
    print()
    if not probes:
        print("no providers to check; 'provhub plugins' shows what discovery found")
        return code
    rows = [
        [
            p.provider,
            str(p.status),
            f"{p.elapsed_ms:.0f} ms" if p.elapsed_ms is not None else "-",
            p.endpoint.url or "(in-process)",
            _printable(p.detail + (f". Next: {p.next_step}" if p.next_step else "")),
        ]
        for p in probes
    ]
    print(_table(["provider", "status", "time", "url", "result"], rows))
    return code


def _check_completion(hub: Hub, timeout: float, info: ProviderInfo, probe: Probe) -> Probe:
    """Send one tiny real request to ``info`` and record how it went."""
    import time

    from provhub._config import Timeouts
    from provhub._errors import ProvhubError
    from provhub._explain import failure_line
    from provhub._probe import ProbeStatus

    model = info.default_model or (info.models[0] if info.models else None)
    if model is None:
        return dataclasses.replace(probe, detail=probe.detail + "; no model to ask")
    started = time.monotonic()
    limits = Timeouts(connect=timeout, first_token=timeout * 4, idle=timeout, total=timeout * 6)
    try:
        result = hub.complete(
            model,
            [{"role": "user", "content": "Reply with the word OK."}],
            info.name,
            timeouts=limits,
            max_tokens=5,
        )
    except ProvhubError as exc:
        from provhub._errors import AllProvidersFailedError

        words = (
            failure_line(exc, _endpoints(hub))
            if isinstance(exc, AllProvidersFailedError)
            else str(exc)
        )
        return dataclasses.replace(
            probe,
            status=ProbeStatus.FAIL,
            method="completion",
            detail=f"{probe.detail}; completion failed: {words}",
            completion={"ok": False, "error": words},
        )
    elapsed = round((time.monotonic() - started) * 1000, 1)
    answer = " ".join(result.text.split())
    shown = answer if len(answer) <= 40 else answer[:37] + "..."
    return dataclasses.replace(
        probe,
        status=ProbeStatus.OK,
        method="completion",
        detail=f"{probe.detail}; completion by {model} in {elapsed:.0f} ms: {shown!r}",
        completion={
            "ok": True,
            "model": model,
            "text": result.text,
            "elapsed_ms": elapsed,
            "usage": result.usage.as_dict() if result.usage is not None else None,
        },
    )


# -- completion scripts -----------------------------------------------------------------


def _cmd_completion(ctx: _Context) -> int:
    args = ctx.args
    if args.values is not None:
        return _print_values(ctx, args.values)
    if args.shell is None:
        raise _UsageError("name the shell: provhub completion bash|zsh|fish")
    from provhub._completion import script

    sys.stdout.write(script(_parser(), args.shell))
    return EXIT_OK


def _print_values(ctx: _Context, kind: str) -> int:
    try:
        hub = ctx.hub()
    except Exception:
        return EXIT_OK  # completing must never print an error into the user's prompt
    infos = hub.providers()
    if kind == "providers":
        values = [i.name for i in infos]
    else:
        values = sorted({m for i in infos for m in (*i.models, *i.aliases)})
    print("\n".join(values))
    return EXIT_OK


_SERVER_MODULES = ("starlette", "uvicorn", "prometheus_client")


def _cmd_serve(ctx: _Context) -> int:
    import importlib

    args = ctx.args

    missing = []
    for module in _SERVER_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise _UsageError(
            f"provhub serve needs the 'server' extra ({', '.join(missing)} not installed): "
            "pip install 'provhub[server]'"
        )
    if args.port is not None and not 0 <= args.port <= 65535:
        raise _UsageError(f"--port must be 0-65535, got {args.port}")
    if args.workers is not None and args.workers < 1:
        raise _UsageError(f"--workers must be 1 or more, got {args.workers}")
    from provhub.gateway import ServeOptions, serve

    levels = {0: "warning", 1: "info"}
    return serve(
        ServeOptions(
            host=args.host,
            port=args.port,
            workers=args.workers,
            config=args.config,
            allow_unauthenticated=args.allow_unauthenticated,
            access_log=args.access_log,
            log_level=levels.get(args.verbose, "debug"),
            announce=lambda line: print(line, file=sys.stderr, flush=True),
        )
    )


_COMMANDS: Mapping[str, Callable[[_Context], int]] = {
    "serve": _cmd_serve,
    "providers": _cmd_providers,
    "plugins": _cmd_plugins,
    "check": _cmd_check,
    "route": _cmd_route,
    "chat": _cmd_chat,
    "completion": _cmd_completion,
}


# -- errors -----------------------------------------------------------------------------


def _error_line(exc: BaseException, ctx: _Context) -> tuple[str, int]:
    """The one line an error becomes, and the exit code."""
    from provhub import _errors as errors
    from provhub._explain import failure_line

    if isinstance(exc, errors.AllProvidersFailedError):
        return failure_line(exc, ctx.endpoints()), EXIT_FAILED
    if isinstance(exc, errors.StreamInterruptedError):
        cause = exc.cause
        why = cause.detail if isinstance(cause, errors.ProviderError) else str(cause)
        return (
            f"the answer from {exc.provider} broke after {len(exc.text)} characters: {why}; "
            "what arrived is printed above: run the command again for a whole answer",
            EXIT_FAILED,
        )
    if isinstance(exc, errors.ModelNotFoundError | errors.NoProviderError):
        return str(exc), EXIT_NO_PROVIDER
    return str(exc), EXIT_USAGE


def _unrecognized(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> None:
    """Report unknown arguments from the command's own parser, with the closest option."""
    from difflib import get_close_matches

    target = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            target = action.choices[command]
    options = [o for a in target._actions for o in a.option_strings if a.help != argparse.SUPPRESS]
    unknown = next((e for e in extra if e.startswith("-")), extra[0])
    close = get_close_matches(unknown.split("=", 1)[0], options, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close and unknown.startswith("-") else ""
    target.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unrecognized(parser, args.command, extra)
    if args.command is None:
        # A bare 'provhub' asks what it can do: the help, and success.
        parser.print_help()
        return EXIT_OK
    from provhub import _errors as errors
    from provhub._events import configure_logging

    level = "warning" if args.verbose == 0 else "info" if args.verbose == 1 else "debug"
    if args.log_format == "json" and args.verbose == 0:
        level = "info"  # asking for JSON events means wanting the story
    if args.command == "completion":
        level = "critical"  # completion output is read by a shell, not a person
    configure_logging(format=args.log_format, level=level)
    ctx = _Context(args)
    try:
        return _COMMANDS[args.command](ctx)
    except KeyboardInterrupt:
        print("provhub: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output closed early ('| head'): not an error; keep Python from
        # complaining about the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if not isinstance(exc, _UsageError | errors.ProvhubError):
            # A bug, not an input problem: still one line, detail on request.
            print(
                f"provhub: internal error: {type(exc).__name__}: {exc} "
                "(run with -v for the traceback, and please report it)",
                file=sys.stderr,
            )
            if args.verbose:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            return EXIT_INTERNAL
        line, code = _error_line(exc, ctx)
        if getattr(args, "json", False) and args.command == "chat":
            error = {"type": type(exc).__name__, "message": line, "exit_code": code}
            if isinstance(exc, errors.AllProvidersFailedError):
                error["attempts"] = [dataclasses.asdict(a) for a in exc.attempts]
            print(json.dumps({"error": error}, ensure_ascii=False))
        print(f"provhub: error: {_printable(line)}", file=sys.stderr)
        if args.verbose:
            cause = exc.__cause__
            while cause is not None:
                print(f"  caused by {type(cause).__name__}: {cause}", file=sys.stderr)
                cause = cause.__cause__
        return code
    finally:
        ctx.close()
