"""Tests of the Echo provider, run against provhub's fake upstream."""

import provhub
import pytest
import requests
from provhub.testing import Behaviour
from provhub.testing.conformance import ProviderConformance

from provhub_echo import Echo

HELLO = [{"role": "user", "content": "Say hello."}]


class TestEchoConformance(ProviderConformance):
    """provhub's conformance suite: flags, generator, streaming, errors, early close."""

    provider = Echo


def test_answer_streams_through_a_hub(provhub_hub, provhub_upstream):
    provhub_upstream.script(Behaviour(tokens=("Hello", " from", " Echo")))
    with provhub_hub.stream("echo-1", HELLO) as stream:
        tokens = list(stream)
    assert tokens == ["Hello", " from", " Echo"]
    assert stream.provider == "Echo"
    assert stream.finish_reason == "stop"


def test_alias_echo_requests_model_echo_1(provhub_hub, provhub_upstream):
    provhub_hub.complete("echo", HELLO)
    assert provhub_upstream.requests[0].json["model"] == "echo-1"


def test_supported_parameters_reach_the_upstream(provhub_hub, provhub_upstream):
    provhub_hub.complete("echo-1", HELLO, temperature=0.2, max_tokens=50, seed=7)
    sent = provhub_upstream.requests[0].json
    assert (sent["temperature"], sent["max_tokens"]) == (0.2, 50)
    assert "seed" not in sent  # Echo Chat does not know it


def test_api_key_is_sent_as_a_bearer_token(provhub_call, provhub_upstream, monkeypatch):
    monkeypatch.setenv("ECHO_API_KEY", "sk-test")
    list(provhub_call(Echo, "echo-1"))
    assert provhub_upstream.requests[0].headers["authorization"] == "Bearer sk-test"


def test_rate_limit_raises_http_error_with_the_status(provhub_call, provhub_upstream):
    provhub_upstream.script(Behaviour(status=429, retry_after="1"))
    with pytest.raises(requests.HTTPError) as caught:
        list(provhub_call(Echo, "echo-1"))
    assert caught.value.response.status_code == 429


def test_hub_falls_back_to_nothing_and_reports_every_attempt(provhub_hub, provhub_upstream):
    provhub_upstream.default = Behaviour(status=503)
    with pytest.raises(provhub.AllProvidersFailedError) as caught:
        provhub_hub.complete("echo-1", HELLO)
    assert [a.status for a in caught.value.attempts] == [503, 503, 503]


def test_installed_package_registers_echo_through_its_entry_point(monkeypatch):
    monkeypatch.setenv("PROVHUB_PLUGINS", "echo")
    hub = provhub.Hub(provhub.Config(), strict=True)
    (record,) = [p for p in hub.plugins if p.name == "echo"]
    assert (record.status, record.providers) == ("loaded", ("Echo",))
    assert hub.providers(model="echo")[0].source == "echo"
