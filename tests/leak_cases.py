"""Hostile answers that echo the caller's credentials back, as data (tests/test_security.py).

Each case is one whole HTTP response the hostile server (tests/hostile.py) sends to
every request. The credentials are sentinels: the API key (sent as a bearer token)
and three custom credential headers; each case quotes them in one of the forms an
upstream may use (plain, in a stream's error object, in the reason phrase, with some
characters ``\\u``-escaped or percent-encoded, cut off by an excerpt limit, in a
redirect's userinfo). Imported by the in-process test and by the logging subprocess.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from tests.hostile import chunked, delta, event, head

KEY_ENV = "PROVHUB_TEST_SECRET_KEY"
KEY = "sk-SENTINEL-KEY-5d1f0c9a"
# Credential headers other than Authorization, as providers send them.
HEADER_KEYS = {
    "X-Goog-Api-Key": "goog-SENTINEL-HDR-71c2e8",
    "Ocp-Apim-Subscription-Key": "apim-SENTINEL-HDR-93ad1f",
    "X-Auth-Token": "auth-SENTINEL-HDR-4be0c7",
}
CREDENTIALS = (KEY, *HEADER_KEYS.values())
ALL = " ".join(CREDENTIALS)


def partly_escaped(secret: str) -> str:
    """``secret`` as JSON text with every other character ``\\u``-escaped."""
    return "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(secret))


def partly_percent_encoded(secret: str) -> str:
    """``secret`` with every third character percent-encoded."""
    return "".join(quote(c, safe="") if i % 3 else f"%{ord(c):02X}" for i, c in enumerate(secret))


def _json_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        head(status, reason, content_type="application/json", framing="length", length=len(body))
        + body
    )


def _error_json(message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}})


ESCAPED = " ".join(partly_escaped(secret) for secret in CREDENTIALS)
PERCENT = " ".join(partly_percent_encoded(secret) for secret in CREDENTIALS)

CASES: dict[str, bytes] = {
    "stream_error_object": head()
    + chunked([event({"error": {"message": f"Incorrect API key provided: {ALL}", "code": 401}})]),
    "stream_error_object_after_a_token": head()
    + chunked([event(delta("Hi")), event({"error": {"message": f"key {ALL} revoked"}})]),
    "json_200_error_body": _json_response(200, "OK", _error_json(f"bad credentials {ALL}")),
    "reason_phrase": f"HTTP/1.1 401 Key {ALL} rejected\r\nContent-Length: 0\r\n\r\n".encode(),
    "partly_escaped_keys_in_a_401_body": _json_response(
        401, "Unauthorized", '{"error": {"message": "bad keys ' + ESCAPED + '"}}'
    ),
    "partly_escaped_keys_in_a_200_error_body": _json_response(
        200, "OK", '{"error": {"message": "bad keys ' + ESCAPED + '"}}'
    ),
    "partly_escaped_keys_in_a_non_json_body": head(
        500, "Oops", content_type="text/plain", framing="length", length=len(ESCAPED) + 5
    )
    + b"keys "
    + ESCAPED.encode(),
    "percent_encoded_keys_in_a_401_body": head(
        401, "No", content_type="text/plain", framing="length", length=len(PERCENT) + 5
    )
    + b"keys "
    + PERCENT.encode(),
    "non_json_200_body": head(
        200, "OK", content_type="text/plain", framing="length", length=len(ALL) + 9
    )
    + f"your key {ALL}".encode(),
    "html_200_body": head(
        200, "OK", content_type="text/html", framing="length", length=len(ALL) + 13
    )
    + f"<html>{ALL}</html>".encode(),
    "keys_cut_by_the_excerpt_limit": _json_response(
        401, "Unauthorized", _error_json("x" * 185 + KEY + " and more")
    ),
    "keys_cut_by_the_stream_error_limit": head()
    + chunked([event({"error": {"message": "y" * 190 + KEY + " and more"}})]),
    "keys_in_a_redirect": head(
        307,
        "Temporary Redirect",
        [("Location", f"http://user:{KEY}@elsewhere.example/v1?key={KEY}")],
        framing="length",
        length=0,
    ),
}
