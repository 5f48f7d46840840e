"""Shell completion scripts for ``provhub``, generated from the CLI's own parser.

``provhub completion bash|zsh|fish`` prints a script; generating it from the
argparse parser keeps it in step with the installed version (no list to keep
by hand) and needs no extra dependency. Subcommands, options and fixed choices
complete instantly inside the shell; model ids and provider names come from
``provhub completion --values models|providers`` (the configured hub), files
from the shell's own file completion.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["SHELLS", "script"]

SHELLS = ("bash", "zsh", "fish")

# What an option's value is, from its metavar: completed by the shell (files) or
# by asking provhub (models, providers).
_VALUE_KINDS = {"FILE": "file", "MODEL": "models", "PROVIDER": "providers"}


@dataclass
class _Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str] | None = None
    kind: str | None = None


@dataclass
class _Command:
    name: str
    help: str
    options: list[_Option] = field(default_factory=list)
    positional_choices: list[str] | None = None
    positional_kind: str | None = None


def _options(parser: argparse.ArgumentParser) -> tuple[list[_Option], list[argparse.Action]]:
    options: list[_Option] = []
    positionals: list[argparse.Action] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if not action.option_strings:
            positionals.append(action)
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else None
        options.append(
            _Option(
                list(action.option_strings),
                " ".join((action.help or "").split()).replace("%%", "%"),
                takes_value=action.nargs != 0,
                choices=[str(c) for c in action.choices] if action.choices else None,
                kind=_VALUE_KINDS.get(metavar or ""),
            )
        )
    return options, positionals


def _model(parser: argparse.ArgumentParser) -> tuple[list[_Option], list[_Command]]:
    top, _ = _options(parser)
    commands: list[_Command] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            if helps.get(name) == argparse.SUPPRESS:
                continue
            options, positionals = _options(sub)
            command = _Command(name, " ".join(helps.get(name, "").split()), options)
            for positional in positionals:
                if positional.choices:
                    command.positional_choices = [str(c) for c in positional.choices]
                metavar = positional.metavar if isinstance(positional.metavar, str) else ""
                command.positional_kind = _VALUE_KINDS.get(metavar) or command.positional_kind
            commands.append(command)
    return top, commands


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    top, commands = _model(parser)
    prog = parser.prog
    if shell == "bash":
        return _bash(prog, top, commands)
    if shell == "zsh":
        return _zsh(prog, top, commands)
    if shell == "fish":
        return _fish(prog, top, commands)
    raise ValueError(f"unknown shell {shell!r} (use {', '.join(SHELLS)})")


# -- bash -------------------------------------------------------------------------------


def _words(options: Iterable[_Option]) -> str:
    return " ".join(flag for option in options for flag in option.flags)


def _bash_reply(kind: str | None, choices: list[str] | None, prog: str) -> str:
    if choices:
        return f'COMPREPLY=($(compgen -W "{" ".join(choices)}" -- "$cur"))'
    if kind == "file":
        return 'COMPREPLY=($(compgen -f -- "$cur"))'
    if kind in ("models", "providers"):
        return (
            f'COMPREPLY=($(compgen -W "$({prog} completion --values {kind} 2>/dev/null)" '
            '-- "$cur"))'
        )
    return "COMPREPLY=()"


def _bash_values(option_flags: str, kind: str | None, choices: list[str] | None, prog: str) -> str:
    return f"        {option_flags}) {_bash_reply(kind, choices, prog)}; return ;;"


def _bash(prog: str, top: list[_Option], commands: list[_Command]) -> str:
    func = "_" + prog.replace("-", "_")
    value_cases: dict[str, str] = {}
    for option in [*top, *(o for c in commands for o in c.options)]:
        if option.takes_value:
            key = "|".join(option.flags)
            value_cases.setdefault(key, _bash_values(key, option.kind, option.choices, prog))
    command_cases = []
    for command in commands:
        words = _words(command.options)  # the common options are among them (parents)
        lines = [f"        {command.name})"]
        if command.positional_choices or command.positional_kind:
            body = _bash_reply(command.positional_kind, command.positional_choices, prog)
            lines.append(f'            if [[ "$cur" != -* ]]; then {body}; return; fi')
        lines.append(f'            COMPREPLY=($(compgen -W "{words}" -- "$cur")) ;;')
        command_cases.append("\n".join(lines))
    names = " ".join(c.name for c in commands)
    return f"""# {prog} completion for bash. Load it with:  eval "$({prog} completion bash)"
{func}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    local prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local command="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {"|".join(c.name for c in commands)}) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$prev" in
{chr(10).join(value_cases.values())}
    esac
    case "$command" in
        "") COMPREPLY=($(compgen -W "{names} {_words(top)}" -- "$cur")) ;;
{chr(10).join(command_cases)}
    esac
}}
complete -o default -F {func} {prog}
"""


# -- zsh --------------------------------------------------------------------------------


def _zsh_text(text: str) -> str:
    for char in "\\[]:'":
        text = text.replace(char, "\\" + char if char != "'" else "'\\''")
    return text


def _zsh_spec(option: _Option, prog: str) -> str:
    description = _zsh_text(option.help)
    if option.takes_value:
        if option.choices:
            action = f":value:({' '.join(option.choices)})"
        elif option.kind == "file":
            action = ":file:_files"
        elif option.kind in ("models", "providers"):
            action = f":{option.kind}:{{_provhub_values {option.kind}}}"
        else:
            action = ":value: "
    else:
        action = ""
    if len(option.flags) == 1:
        return f"'{option.flags[0]}[{description}]{action}'"
    exclusive = " ".join(option.flags)
    flags = ",".join(option.flags)
    return f"'({exclusive})'{{{flags}}}'[{description}]{action}'"


def _zsh(prog: str, top: list[_Option], commands: list[_Command]) -> str:
    func = "_" + prog.replace("-", "_")
    described = "\n".join(f"        '{c.name}:{_zsh_text(c.help)}'" for c in commands)
    top_specs = " \\\n        ".join(_zsh_spec(o, prog) for o in top)
    cases = []
    for command in commands:
        specs = [_zsh_spec(o, prog) for o in command.options]
        if command.positional_choices:
            specs.append(f"'*:argument:({' '.join(command.positional_choices)})'")
        elif command.positional_kind in ("models", "providers"):
            kind = command.positional_kind
            specs.append(f"'*:{kind}:{{_provhub_values {kind}}}'")
        elif command.positional_kind == "file":
            specs.append("'*:file:_files'")
        joined = " \\\n                    ".join(specs)
        cases.append(f"                {command.name}) _arguments {joined} ;;")
    return f"""#compdef {prog}
# {prog} completion for zsh. Load it with (after compinit):  eval "$({prog} completion zsh)"
# or save it as _{prog} in a directory of $fpath.
_provhub_values() {{
    local -a values
    values=(${{(f)"$({prog} completion --values $1 2>/dev/null)"}})
    compadd -a values
}}

{func}() {{
    local curcontext="$curcontext" state line
    local -a commands
    commands=(
{described}
    )
    _arguments -C \\
        {top_specs} \\
        '1: :->command' \\
        '*:: :->argument'
    case $state in
        command) _describe -t commands '{prog} command' commands ;;
        argument)
            case $line[1] in
{chr(10).join(cases)}
            esac ;;
    esac
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    {func} "$@"
else
    compdef {func} {prog}
fi
"""


# -- fish -------------------------------------------------------------------------------


def _fish_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _fish_option(prog: str, option: _Option, condition: str) -> str:
    parts = [f"complete -c {prog}"]
    if condition:
        parts.append(f"-n '{condition}'")
    for flag in option.flags:
        if flag.startswith("--"):
            parts.append(f"-l {flag[2:]}")
        else:
            parts.append(f"-s {flag[1:]}")
    if option.takes_value:
        if option.choices:
            parts.append(f"-x -a '{' '.join(option.choices)}'")
        elif option.kind == "file":
            parts.append("-r -F")
        elif option.kind in ("models", "providers"):
            parts.append(f"-x -a '({prog} completion --values {option.kind} 2>/dev/null)'")
        else:
            parts.append("-x")
    parts.append(f"-d '{_fish_text(option.help)}'")
    return " ".join(parts)


def _fish(prog: str, top: list[_Option], commands: list[_Command]) -> str:
    names = " ".join(c.name for c in commands)
    lines = [
        f"# {prog} completion for fish. Load it with:  {prog} completion fish | source",
        f"# or save it as ~/.config/fish/completions/{prog}.fish",
        f"complete -c {prog} -f",
    ]
    for command in commands:
        lines.append(
            f"complete -c {prog} -n 'not __fish_seen_subcommand_from {names}' "
            f"-a {command.name} -d '{_fish_text(command.help)}'"
        )
    lines += [_fish_option(prog, option, "") for option in top]
    for command in commands:
        condition = f"__fish_seen_subcommand_from {command.name}"
        common = {tuple(o.flags) for o in top}  # complete everywhere already
        lines += [
            _fish_option(prog, option, condition)
            for option in command.options
            if tuple(option.flags) not in common
        ]
        if command.positional_choices:
            choices = " ".join(command.positional_choices)
            lines.append(f"complete -c {prog} -n '{condition}' -x -a '{choices}'")
        elif command.positional_kind in ("models", "providers"):
            kind = command.positional_kind
            lines.append(
                f"complete -c {prog} -n '{condition}' -x "
                f"-a '({prog} completion --values {kind} 2>/dev/null)'"
            )
    return "\n".join(lines) + "\n"
