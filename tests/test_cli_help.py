"""Help that answers a newcomer's questions, and shell completion that really completes.

Help: every command has a description, every option a help text, the exit codes
and the user config file are in ``provhub --help``, and a bare ``provhub`` prints
help (exit 0). Completion: ``provhub completion bash|zsh|fish`` prints a script
generated from the parser; bash and fish complete in a real shell subprocess,
zsh loads it under ``compinit``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_support import Cli, one_error_line
from provhub.cli import _parser


def needs_shell(name: str) -> pytest.MarkDecorator:
    """Skip without the shell on a developer's machine; in CI (``CI`` set) run and fail.

    ``.ci/run`` installs the shells, so a missing one there is a broken CI, not a skip.
    """
    missing = shutil.which(name) is None and not os.environ.get("CI")
    return pytest.mark.skipif(missing, reason=f"{name} is not installed (CI installs it)")


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_bare_provhub_prints_the_help_and_exits_0(cli: Cli) -> None:
    result = cli()
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout == cli("--help").stdout
    assert result.stdout.startswith("usage: provhub ")


def test_top_help_lists_commands_exit_codes_and_the_user_config_file(cli: Cli) -> None:
    text = cli("--help").stdout
    for command in subparsers():
        assert f"    {command} " in text, command
    assert "exit codes:\n  0    success" in text
    for code in ("1", "2", "3", "4", "130"):
        assert f"\n  {code} " in text, code
    user_file = cli.xdg / "provhub" / "provhub.toml"
    assert f"user config file: {user_file}" in text


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_every_command_has_a_description_and_every_option_a_help_text(command: str) -> None:
    parser = subparsers()[command]
    assert parser.description is not None
    assert len(parser.description) > 40, command
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, (command, action.option_strings or action.dest)
    assert "exit codes:" in (parser.epilog or "")


def test_chat_model_option_says_what_the_default_is(cli: Cli) -> None:
    text = cli("chat", "--help").stdout
    assert "-m MODEL, --model MODEL" in text
    assert "default: [router] default_model" in text


def test_a_usage_error_points_at_the_help(cli: Cli) -> None:
    result = cli("chat", "--modle", "gpt-4", "hi")
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        "provhub: error: unrecognized arguments: --modle hi; did you mean --model? "
        "(see 'provhub chat --help')"
    )


# -- shell completion ------------------------------------------------------------------------


def completion_script(cli: Cli, shell: str, tmp_path: Path) -> Path:
    result = cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    path = tmp_path / f"provhub.{shell}"
    path.write_text(result.stdout)
    return path


def bash_complete(script: Path, words: list[str], cli: Cli) -> list[str]:
    """COMPREPLY of the script's function for ``words`` (the last word is being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source '{script}'\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        '_provhub; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=cli.cwd,
        env=cli.env,
    )
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture
def provhub_on_path(cli: Cli, tmp_path: Path) -> Cli:
    """``provhub`` on PATH as this interpreter's ``-m provhub`` (the scripts call it)."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "provhub"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m provhub "$@"\n')
    launcher.chmod(0o755)
    cli.env["PATH"] = f"{bin_dir}:{cli.env.get('PATH', '')}"
    return cli


@needs_shell("bash")
def test_bash_completes_a_subcommand_options_choices_and_models(
    provhub_on_path: Cli, tmp_path: Path
) -> None:
    cli = provhub_on_path
    script = completion_script(cli, "bash", tmp_path)
    assert bash_complete(script, ["provhub", "ch"], cli) == ["check", "chat"]
    assert bash_complete(script, ["provhub", "chat", "--to"], cli) == ["--tools", "--tool-choice"]
    assert bash_complete(script, ["provhub", "--log-format", "j"], cli) == ["json"]
    assert bash_complete(script, ["provhub", "completion", "z"], cli) == ["zsh"]
    # Model ids come from the configured hub: the shipped Lockchat here.
    assert bash_complete(script, ["provhub", "chat", "-m", "gpt"], cli) == [
        "gpt-3.5-turbo",
        "gpt-4",
    ]
    assert bash_complete(script, ["provhub", "check", "L"], cli) == ["Lockchat"]
    (cli.cwd / "tools.json").write_text("[]")
    assert bash_complete(script, ["provhub", "chat", "--tools", "too"], cli) == ["tools.json"]


@needs_shell("fish")
def test_fish_completes_a_subcommand_and_its_options(provhub_on_path: Cli, tmp_path: Path) -> None:
    cli = provhub_on_path
    script = completion_script(cli, "fish", tmp_path)
    subprocess.run(["fish", "--no-execute", str(script)], check=True, timeout=60)

    def complete(line: str) -> list[str]:
        done = subprocess.run(
            ["fish", "--no-config", "-c", f"source '{script}'; complete -C '{line}'"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=cli.cwd,
            env=cli.env,
        )
        return [row.split("\t")[0] for row in done.stdout.splitlines()]

    assert complete("provhub ch") == ["chat", "check"]
    assert "--show-reasoning" in complete("provhub chat --sh")
    assert complete("provhub chat -m gpt-3") == ["gpt-3.5-turbo"]


@needs_shell("zsh")
def test_zsh_script_parses_and_registers_under_compinit(cli: Cli, tmp_path: Path) -> None:
    script = completion_script(cli, "zsh", tmp_path)
    subprocess.run(["zsh", "-n", str(script)], check=True, timeout=60)
    done = subprocess.run(
        [
            "zsh",
            "-f",
            "-c",
            "autoload -U compinit && compinit -u -D; "
            f"eval \"$(cat '{script}')\"; print -r -- ${{_comps[provhub]}}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**cli.env, "HOME": str(tmp_path)},
    )
    assert (done.returncode, done.stdout.strip()) == (0, "_provhub"), done.stderr


def test_every_shell_script_names_every_command(cli: Cli) -> None:
    for shell in ("bash", "zsh", "fish"):
        text = cli("completion", shell).stdout
        for command in subparsers():
            assert command in text, (shell, command)


def test_completion_without_a_shell_is_a_usage_error(cli: Cli) -> None:
    result = cli("completion")
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        "provhub: error: name the shell: provhub completion bash|zsh|fish"
    )
    bad = cli("completion", "tcsh")
    assert bad.returncode == 2
    assert "invalid choice: 'tcsh'" in one_error_line(bad.stderr)


def test_values_for_completion_never_print_an_error(cli: Cli) -> None:
    cli.config("[router]\nretries = -1\n")  # a broken config: completion stays quiet
    result = cli("completion", "--values", "models")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
