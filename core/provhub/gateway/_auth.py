"""Bearer keys for ``provhub serve`` (SPEC §13).

Keys come from the environment variable named by ``[server] api_keys_env``
(comma- or whitespace-separated), never from the config file. A presented key
is compared with every accepted key in constant time: both sides are hashed to
32 bytes first and compared with :func:`hmac.compare_digest`, and the loop never
stops early, so neither a key's content nor its length nor its position in the
list shows in the response time. Keys are never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from provhub._errors import ConfigError

__all__ = ["KeyRing"]


class KeyRing:
    """The accepted bearer keys (possibly none: then every request is allowed)."""

    __slots__ = ("_digests",)

    def __init__(self, keys: list[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    @classmethod
    def from_env(cls, name: str | None, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Read the keys from the variable ``name`` (no keys when ``name`` is None).

        Raises :class:`ConfigError` when the variable is named but unset or empty:
        a server that was meant to require keys must not silently accept anyone.
        """
        if name is None:
            return cls([])
        value = (os.environ if environ is None else environ).get(name, "")
        keys = [k for k in value.replace(",", " ").split() if k]
        if not keys:
            raise ConfigError(
                f"environment variable {name} (named by api_keys_env) is unset or empty; "
                f"export the accepted keys, e.g. {name}=key1,key2",
                key="server.api_keys_env",
            )
        return cls(keys)

    @property
    def enabled(self) -> bool:
        """Whether requests must present a key."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"<KeyRing keys={len(self._digests)}>"  # never the keys themselves

    def check(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted key."""
        if not self._digests:
            return True
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(b" ")
        presented = hashlib.sha256(token.strip()).digest()
        ok = False
        for digest in self._digests:
            # No short-circuit: every key is compared whatever matched before.
            ok |= hmac.compare_digest(presented, digest)
        return ok and scheme.lower() == b"bearer"
