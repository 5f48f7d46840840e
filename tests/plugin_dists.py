"""Write real, importable provhub plugin distributions into a directory.

Each distribution is what ``pip install`` leaves behind, minus the RECORD: a
``<name>-<version>.dist-info`` directory with ``METADATA`` and an
``entry_points.txt`` declaring group ``provhub``, next to the plugin's module
source. Once the directory is on ``sys.path`` (or ``PYTHONPATH`` of a
subprocess), ``importlib.metadata`` discovers the entry point exactly as it
discovers an installed package, so provhub's loader runs unmodified.

Module names get a random suffix: a module imported by one test stays in
``sys.modules`` of the worker process, and a later test must never be handed
that cached copy instead of its own source.
"""

from __future__ import annotations

import re
import textwrap
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Dist",
    "hook_module",
    "provider_class",
    "write_dist",
    "write_plugin",
]


@dataclass(frozen=True)
class Dist:
    """A distribution written by :func:`write_dist`."""

    name: str
    version: str
    entry_point: str
    module: str
    root: Path

    @property
    def dist_info(self) -> Path:
        """The ``.dist-info`` directory."""
        return self.root / f"{_wheel_name(self.name)}-{self.version}.dist-info"


def _wheel_name(name: str) -> str:
    # Installers write the dist-info directory with the name normalised and
    # "-" replaced by "_" (binary distribution format spec).
    return re.sub(r"[-_.]+", "_", name).lower()


def module_name(name: str) -> str:
    """A fresh, importable module name derived from a distribution name."""
    return f"{_wheel_name(name)}_{uuid.uuid4().hex[:10]}"


def write_dist(
    root: Path,
    name: str,
    source: str,
    *,
    version: str = "1.0.0",
    entry_point: str | None = None,
    module: str | None = None,
    extra_entry_points: Mapping[str, str] | None = None,
) -> Dist:
    """Write distribution ``name`` with one module holding ``source`` into ``root``.

    The entry point (group ``provhub``) is named ``entry_point`` (default: the
    distribution name) and points at the module. ``extra_entry_points`` adds
    more ``name = value`` lines to the same group.
    """
    root.mkdir(parents=True, exist_ok=True)
    module = module or module_name(name)
    entry_point = entry_point or name
    (root / f"{module}.py").write_text(source, encoding="utf-8")
    dist = Dist(name=name, version=version, entry_point=entry_point, module=module, root=root)
    dist.dist_info.mkdir()
    (dist.dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: provhub test plugin\n",
        encoding="utf-8",
    )
    lines = [f"{entry_point} = {module}"]
    lines += [f"{k} = {v}" for k, v in (extra_entry_points or {}).items()]
    (dist.dist_info / "entry_points.txt").write_text(
        "[provhub]\n" + "\n".join(lines) + "\n", encoding="utf-8"
    )
    (dist.dist_info / "INSTALLER").write_text("provhub-tests\n", encoding="utf-8")
    return dist


def provider_class(
    name: str,
    /,
    *,
    models: Iterable[str] = (),
    method: str = "staticmethod",
    base: str = "provhub.AbstractProvider",
    **attrs: object,
) -> str:
    """Source of a provider class called ``name``.

    ``attrs`` become class attributes (``repr``-ed, so ``supports_stream="yes"``
    makes a non-bool flag); ``method`` is ``staticmethod``, ``classmethod``,
    ``plain`` (an instance method, invalid on a class) or ``none`` (no
    ``create_completion`` at all).
    """
    body = [f"class {name}({base}):", f"    url = 'http://127.0.0.1:9/{name.lower()}'"]
    body.append(f"    models = {tuple(models)!r}")
    body += [f"    {key} = {value!r}" for key, value in attrs.items()]
    if method == "staticmethod":
        body += ["    @staticmethod", "    def create_completion(model, messages, stream, **kw):"]
    elif method == "classmethod":
        body += [
            "    @classmethod",
            "    def create_completion(cls, model, messages, stream, **kw):",
        ]
    elif method == "plain":
        body += ["    def create_completion(self, model, messages, stream, **kw):"]
    if method != "none":
        body.append(f"        yield {name + ' says hi'!r}")
    return "\n".join(body) + "\n"


def hook_module(
    body: str = "",
    *,
    register: Iterable[str] = (),
    marker: Path | None = None,
    hook: str = "provhub_register_providers",
    argument: str = "register",
    decorated: bool = True,
    hook_raises: str | None = None,
) -> str:
    """Source of a plugin module.

    ``body`` is module-level code (usually :func:`provider_class` output);
    ``register`` lists expressions passed to ``register(...)`` in the hook.
    ``marker``: the module writes this file when imported (proof of import).
    ``hook``/``argument``/``decorated`` let tests misspell the hook, rename
    its argument or drop ``@provhub.hookimpl``; ``hook_raises`` makes the hook
    raise ``RuntimeError(hook_raises)`` after registering.
    """
    lines = ["from __future__ import annotations", "", "import provhub", ""]
    if marker is not None:
        lines += [
            "import pathlib",
            f"pathlib.Path({str(marker)!r}).write_text(__name__, encoding='utf-8')",
            "",
        ]
    lines.append(textwrap.dedent(body))
    if decorated:
        lines.append("@provhub.hookimpl")
    lines.append(f"def {hook}({argument}):")
    lines += [f"    {argument}({expr})" for expr in register]
    if hook_raises is not None:
        lines.append(f"    raise RuntimeError({hook_raises!r})")
    lines.append("    return None")
    return "\n".join(lines) + "\n"


def write_plugin(
    root: Path,
    name: str,
    providers: Iterable[str] = (),
    /,
    *,
    marker: Path | None = None,
    version: str = "1.0.0",
    entry_point: str | None = None,
    **class_attrs: object,
) -> Dist:
    """A well-formed plugin distribution registering one class per name in ``providers``.

    Every class streams, serves ``<name lower>-1`` and gets ``class_attrs``.
    """
    providers = list(providers)
    body = "\n\n".join(
        provider_class(p, models=[f"{p.lower()}-1"], supports_stream=True, **class_attrs)
        for p in providers
    )
    source = hook_module(body, register=providers, marker=marker)
    return write_dist(root, name, source, version=version, entry_point=entry_point)
