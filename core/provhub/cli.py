"""The ``provhub`` command line (SPEC §9).

Tokens go to stdout as they arrive; events go to stderr. Errors are one line
(``-v`` adds detail); exit codes: 0 ok, 2 bad usage or input, 3 no provider for
the request, 4 all providers failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from provhub._hub import Hub

__all__ = ["main"]

EXIT_OK, EXIT_USAGE, EXIT_NO_PROVIDER, EXIT_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130

_FLAG_COLUMNS = (
    ("working", "working"),
    ("needs_auth", "auth"),
    ("supports_stream", "stream"),
    ("supports_message_history", "history"),
    ("supports_system_message", "system"),
    ("supports_gpt_35_turbo", "gpt-3.5-turbo"),
    ("supports_gpt_4", "gpt-4"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"provhub: error: {message} (see 'provhub --help')\n")


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # SPEC §9 writes `provhub chat -m gpt-4 --log-format json`: the common options
    # work before and after the command. On a command they default to SUPPRESS,
    # so an option given only before the command is not reset by its defaults.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        default=default(None),
        help="config file (default: $PROVHUB_CONFIG, ./provhub.toml)",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=default("console"),
        help="how events are written to stderr",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="-v: info events and error detail; -vv: debug events",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="provhub", description="Talk to many LLM chat providers.")
    _add_common(parser, top=True)
    parser.add_argument("--version", action="version", version=_version())
    common = _Parser(add_help=False)
    _add_common(common, top=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add = functools.partial(sub.add_parser, parents=[common])

    providers = add("providers", help="capability matrix of registered providers")
    providers.add_argument("--model", help="only providers serving this model id or alias")
    providers.add_argument("--require", default="", help="e.g. stream,system_message")
    providers.add_argument("--json", action="store_true", help="JSON instead of a table")

    plugins = add("plugins", help="discovered plugins and their status")
    plugins.add_argument("--json", action="store_true", help="JSON instead of a table")

    route = add("route", help="show the route plan for a model")
    route.add_argument("-m", "--model", required=True)
    route.add_argument("--require", default="", help="e.g. stream,system_message")
    route.add_argument("-s", "--system", help="plan as if a system message were sent")
    route.add_argument("--json", action="store_true", help="JSON instead of text")

    chat = add("chat", help="send a prompt and print the answer")
    chat.add_argument(
        "-m", "--model", help="model id or alias (default: [router] default_model, else local)"
    )
    chat.add_argument("-p", "--provider", help="use only this provider")
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.add_argument("-t", "--temperature", type=float)
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("-s", "--system", help="system message")
    chat.add_argument("--require", default="", help="extra required capabilities")
    chat.add_argument("prompt", nargs="?", default="-", help="the prompt, or '-' for stdin")

    serve = add("serve", help="run the OpenAI-compatible gateway (extra 'server')")
    serve.add_argument("--host", help="address to bind (default: [server] host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default: [server] port, 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default: 1)")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen on a non-loopback address without API keys (only behind a proxy that "
        "checks access)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    return parser


def _version() -> str:
    from provhub import __version__

    return f"provhub {__version__}"


def _capabilities(text: str) -> Any:
    from provhub._spec import Capability

    try:
        return Capability.parse(text)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


class _UsageError(Exception):
    pass


def _hub(args: argparse.Namespace) -> Hub:
    from provhub._hub import Hub

    return Hub(args.config)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _cmd_providers(args: argparse.Namespace) -> int:
    require = _capabilities(args.require)
    hub = _hub(args)
    infos = hub.providers(model=args.model, require=require)
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        # The exit code must not depend on the output format (SPEC §9).
        return EXIT_NO_PROVIDER if args.model and not infos else EXIT_OK
    if not infos:
        print(
            "no providers" + (f" serve {args.model!r}" if args.model else " registered"),
            file=sys.stderr,
        )
        return EXIT_NO_PROVIDER if args.model else EXIT_OK
    rows = [
        [
            i.name,
            *("yes" if i.flags[f] else "-" for f, _ in _FLAG_COLUMNS),
            str(len(i.models)),
            i.source,
        ]
        for i in infos
    ]
    print(_table(["provider", *(c for _, c in _FLAG_COLUMNS), "models", "source"], rows))
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    hub = _hub(args)
    if args.json:
        print(json.dumps([p.as_dict() for p in hub.plugins], indent=2))
        return EXIT_OK
    rows = [
        [
            p.name,
            p.distribution or "?",
            p.version or "?",
            str(p.status),
            ", ".join(p.providers) or "-",
            f"[{p.stage}] {p.error}" if p.stage else (p.error or ""),
        ]
        for p in hub.plugins
    ]
    print(_table(["plugin", "distribution", "version", "status", "providers", "error"], rows))
    return EXIT_OK


def _cmd_route(args: argparse.Namespace) -> int:
    require = _capabilities(args.require)
    hub = _hub(args)
    messages = [{"role": "user", "content": "?"}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    plan = hub.route(args.model, messages, require)
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(
            f"model {plan.model}  strategy {plan.strategy}  required "
            f"{', '.join(plan.required.names()) or '-'}"
        )
        for index, info in enumerate(plan.candidates, 1):
            print(f"  {index}. {info.name}")
        for name, reason in plan.excluded:
            print(f"  x  {name}: {reason}")
    return EXIT_OK if plan.candidates else EXIT_NO_PROVIDER


def _cmd_chat(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise _UsageError("the prompt is empty (pass it as an argument or on stdin with '-')")
    require = _capabilities(args.require)
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    params: dict[str, Any] = {}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    hub = _hub(args)
    try:
        if args.no_stream:
            result = hub.complete(args.model, messages, args.provider, require, **params)
            sys.stdout.write(result.text + "\n")
            return EXIT_OK
        with hub.stream(args.model, messages, args.provider, require, **params) as stream:
            out = sys.stdout
            for token in stream:
                out.write(token)
                out.flush()
            out.write("\n")
        return EXIT_OK
    finally:
        hub.close()


_SERVER_MODULES = ("starlette", "uvicorn", "prometheus_client")


def _cmd_serve(args: argparse.Namespace) -> int:
    import importlib

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
        )
    )


_COMMANDS = {
    "serve": _cmd_serve,
    "providers": _cmd_providers,
    "plugins": _cmd_plugins,
    "route": _cmd_route,
    "chat": _cmd_chat,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    from provhub import _errors as errors
    from provhub._events import configure_logging

    level = "warning" if args.verbose == 0 else "info" if args.verbose == 1 else "debug"
    if args.log_format == "json" and args.verbose == 0:
        level = "info"  # asking for JSON events means wanting the story
    configure_logging(format=args.log_format, level=level)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("provhub: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        code = EXIT_USAGE
        if isinstance(exc, errors.ModelNotFoundError | errors.NoProviderError):
            code = EXIT_NO_PROVIDER
        elif isinstance(exc, errors.AllProvidersFailedError | errors.StreamInterruptedError):
            code = EXIT_FAILED
        elif not isinstance(exc, _UsageError | errors.ProvhubError):
            # A bug, not an input problem: still one line, detail on request.
            print(
                f"provhub: internal error: {type(exc).__name__}: {exc} "
                "(run with -v for the traceback, and please report it)",
                file=sys.stderr,
            )
            if args.verbose:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            return 1
        print(f"provhub: error: {exc}", file=sys.stderr)
        if args.verbose:
            cause = exc.__cause__
            while cause is not None:
                print(f"  caused by {type(cause).__name__}: {cause}", file=sys.stderr)
                cause = cause.__cause__
        return code
