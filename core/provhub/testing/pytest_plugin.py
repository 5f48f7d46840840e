"""provhub's pytest plugin: fixtures for authors of provider plugins.

Installed with provhub and loaded by pytest through the ``pytest11`` entry point,
so a plugin author's tests can simply ask for the fixtures:

- ``provhub_upstream``: a running :class:`~provhub.testing.FakeUpstream`, a real
  OpenAI-compatible HTTP server on 127.0.0.1 whose answers and faults you script.
- ``provhub_providers``: the providers under test; override it in your
  ``conftest.py`` (the default is ``[]``).
- ``provhub_hub``: a fresh :class:`~provhub.Hub` with only ``provhub_providers``
  registered (no plugin discovery), each pointed at ``provhub_upstream``, with
  fast timeouts.
- ``provhub_hub_factory``: builds more such hubs,
  ``provhub_hub_factory(MyProvider, retries=0)``.
- ``provhub_events``: the event dicts ``provhub_hub`` emitted during the test.
- ``provhub_call``: calls a provider's ``create_completion`` directly, the way a
  hub does, against ``provhub_upstream``: ``list(provhub_call(MyProvider, "m"))``.

The conformance suite lives in :mod:`provhub.testing.conformance`.

This module is imported at the start of every pytest run in an environment where
provhub is installed, so it imports nothing beyond pytest at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from provhub import Config, Hub
    from provhub.testing import FakeUpstream

__all__ = [
    "FAST_ROUTER",
    "FAST_TIMEOUTS",
    "build_hub",
    "call_provider",
    "fast_config",
    "provhub_call",
    "provhub_events",
    "provhub_hub",
    "provhub_hub_factory",
    "provhub_providers",
    "provhub_upstream",
    "provider_name",
]

FAST_TIMEOUTS: Mapping[str, float] = {"connect": 2.0, "first_token": 2.0, "idle": 1.0, "total": 5.0}
"""Timeouts of test hubs: short enough that a hanging upstream fails a test within
seconds, long enough for a loaded CI machine."""

FAST_ROUTER: Mapping[str, Any] = {
    "retries": 2,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "retry_after_cap": 1.0,
    "breaker_threshold": 3,
    "breaker_cooldown": 0.5,
}
"""``[router]`` settings of test hubs: real retries and breakers, tiny waits."""


def provider_name(provider: Any) -> str:
    """The name a provider registers under (validates it against the spec).

    Raises :class:`~provhub.ProviderSpecError` for an invalid provider.
    """
    from provhub._registry import describe

    return describe(provider).name


def fast_config(
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    timeouts: Mapping[str, float] | None = None,
    **router: Any,
) -> Config:
    """A validated :class:`~provhub.Config` with fast test timings.

    ``settings`` maps provider names to ``[providers.NAME]`` tables; ``router``
    overrides ``[router]`` keys (``retries=0``, ``strategy="round_robin"``);
    ``timeouts`` overrides single phases. Invalid values raise
    :class:`~provhub.ConfigError`, exactly as a bad file would.
    """
    from provhub import Config

    data: dict[str, Any] = {
        "router": {
            **FAST_ROUTER,
            "timeouts": {**FAST_TIMEOUTS, **(timeouts or {})},
            **router,
        },
        "providers": {name: dict(table) for name, table in (settings or {}).items()},
    }
    return Config.from_mapping(data)


def build_hub(
    providers: Sequence[Any] = (),
    *,
    url: str | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    log_content: bool = False,
    timeouts: Mapping[str, float] | None = None,
    **router: Any,
) -> Hub:
    """A hub without plugin discovery holding exactly ``providers``.

    With ``url`` each provider gets ``url = URL`` in its ``[providers.NAME]``
    table (unless ``settings`` already sets one), which is where a provider's
    ``call.base_url(...)`` looks first. Close the hub when done.
    """
    from provhub import Hub

    tables = {name: dict(table) for name, table in (settings or {}).items()}
    if url is not None:
        for provider in providers:
            table = tables.setdefault(provider_name(provider), {})
            table.setdefault("url", url)
    hub = Hub(
        fast_config(tables, timeouts=timeouts, **router),
        load_plugins=False,
        log_content=log_content,
    )
    try:
        for provider in providers:
            hub.register(provider)
    except BaseException:
        hub.close()
        raise
    return hub


_END = object()


def call_provider(
    provider: Any,
    model: str,
    messages: Any = None,
    *,
    stream: bool = True,
    url: str | None = None,
    settings: Mapping[str, Any] | None = None,
    timeouts: Mapping[str, float] | None = None,
    **params: Any,
) -> Iterator[Any]:
    """Run ``provider.create_completion`` the way a hub does, without a hub.

    The call happens inside a :class:`~provhub.CallContext` whose settings are the
    ``[providers.NAME]`` table ``settings`` (plus ``url``) and whose timeouts are
    fast, so ``provider_call()`` inside the provider sees them. Nothing is
    retried, assembled or translated: what the provider yields (text and the
    other items, tool-call fragments as sent) and raises reaches you unchanged.
    Close the returned generator to stop early; it closes the provider's
    generator and the call's connections.
    """
    from provhub._context import CallContext
    from provhub._transport import Transport

    table = dict(settings or {})
    if url is not None:
        table.setdefault("url", url)
    name = provider_name(provider)
    config = fast_config({name: table}, timeouts=timeouts)
    provider_settings = config.provider(name)
    context = CallContext(
        transport=Transport(limits=config.limits),
        timeouts=config.router.timeouts,
        settings=provider_settings,
        request_id="provhub-test",
        headers=provider_settings.headers if provider_settings is not None else {},
    )
    if messages is None:
        messages = [{"role": "user", "content": "Say hello."}]
    return _drive(provider, context, model, messages, stream, params)


def _drive(
    provider: Any,
    context: Any,
    model: str,
    messages: Any,
    stream: bool,
    params: dict[str, Any],
) -> Iterator[Any]:
    from provhub._context import bind_call, unbind_call

    iterator: Iterator[Any] | None = None
    try:
        # As in the hub: the context is published while the provider is created
        # and started, which is when SPEC'd providers read it.
        token = bind_call(context)
        try:
            iterator = iter(provider.create_completion(model, messages, stream, **params))
            item = next(iterator, _END)
        finally:
            unbind_call(token)
        while item is not _END:
            yield item
            item = next(iterator, _END)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        context.transport.close()


# -- fixtures ----------------------------------------------------------------

HubFactory = Callable[..., "Hub"]


@pytest.fixture
def provhub_upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on 127.0.0.1, stopped after the test.

    Script it with ``provhub_upstream.script(Behaviour(...))``; inspect
    ``provhub_upstream.requests`` and ``provhub_upstream.disconnects``.
    """
    from provhub.testing import FakeUpstream

    with FakeUpstream() as server:
        yield server


@pytest.fixture
def provhub_providers() -> list[Any]:
    """The providers under test. Override it in your ``conftest.py``::

    @pytest.fixture
    def provhub_providers():
        return [MyProvider]
    """
    return []


@pytest.fixture
def provhub_hub_factory(request: pytest.FixtureRequest) -> Iterator[HubFactory]:
    """Builds fresh hubs holding only the given providers; all closed after the test.

    ``provhub_hub_factory(*providers, url=None, settings=None, log_content=False,
    timeouts=None, **router)``: without ``url`` the providers are pointed at
    ``provhub_upstream``; ``settings`` adds ``[providers.NAME]`` tables;
    ``router`` keys override the fast ``[router]`` defaults (``retries=0``).
    """
    hubs: list[Hub] = []

    def factory(*providers: Any, url: str | None = None, **options: Any) -> Hub:
        if url is None and providers:
            url = request.getfixturevalue("provhub_upstream").url
        hub = build_hub(providers, url=url, **options)
        hubs.append(hub)
        return hub

    yield factory
    for hub in hubs:
        hub.close()


@pytest.fixture
def provhub_hub(provhub_hub_factory: HubFactory, provhub_providers: list[Any]) -> Hub:
    """A fresh hub with only ``provhub_providers``, pointed at ``provhub_upstream``."""
    if not provhub_providers:
        pytest.fail(
            "provhub_hub has no providers to register: override the provhub_providers "
            "fixture in your conftest.py (return [MyProvider]) or call "
            "provhub_hub_factory(MyProvider)",
            pytrace=False,
        )
    return provhub_hub_factory(*provhub_providers)


@pytest.fixture
def provhub_events(provhub_hub: Hub) -> list[dict[str, Any]]:
    """Every event ``provhub_hub`` emits from now on, as dicts, in order."""
    events: list[dict[str, Any]] = []
    provhub_hub.subscribe(lambda event: events.append(dict(event)))
    return events


@pytest.fixture
def provhub_call(request: pytest.FixtureRequest) -> Iterator[Callable[..., Iterator[Any]]]:
    """Call a provider directly against ``provhub_upstream`` (see :func:`call_provider`).

    ``provhub_call(provider, model, messages=None, *, stream=True, **params)``
    returns the provider's items unchanged; generators still open at the end of
    the test are closed.
    """
    calls: list[Iterator[Any]] = []

    def call(provider: Any, model: str, messages: Any = None, **options: Any) -> Iterator[Any]:
        options.setdefault("url", request.getfixturevalue("provhub_upstream").url)
        generator = call_provider(provider, model, messages, **options)
        calls.append(generator)
        return generator

    yield call
    for generator in calls:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
