"""State shared by every hub on one Redis (SPEC §15; extra ``redis``).

Each phase of a request is one server-side Lua script call, so it is atomic
across processes and costs one round trip: *plan/acquire* (check the ordered
candidates, admit the first with room), *finish* (reconcile tokens, count the
outcome on the breaker, update latency), and a fallback's *finish + acquire*
together. The script reads the server's clock (``TIME``), so every replica sees
the same windows and cooldowns whatever its own clock says.

Keys (all under ``PREFIX:``, each with an expiry so a flushed or abandoned
store needs no cleaning):

- ``b:PROVIDER``: the breaker (hash: state, failures, opened_at, trial lease
  and its expiry, cooldown_until, ttft moving average);
- ``i:PROVIDER``: leases in flight (sorted set scored by expiry: a crashed
  process's leases expire instead of counting forever);
- per limit scope ``K``: ``r:K`` (admissions in the window, for ``rpm``),
  ``t:K`` and ``u:K`` (token reservations ``lease:tokens`` in the window and
  their sum, for ``tpm``), ``f:K`` (leases in flight, for ``max_in_flight``).

Redis down, slow (every call has a tight socket timeout) or failing: the store
serves from its in-process :class:`~provhub._state.MemoryStateStore`, emits
``state.degraded``, tries Redis again after ``retry_interval`` (one caller at a
time) and emits ``state.restored`` when it answers. A request never fails
because of Redis. Redis Cluster is not supported (the script derives its keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from provhub._config import StateConfig
from provhub._errors import ConfigError
from provhub._events import INFO, WARNING
from provhub._health import TRIAL_REASON, cooldown_reason, open_reason
from provhub._limits import Scope
from provhub._state import (
    WINDOW,
    Acquired,
    EmitFn,
    Lease,
    MemoryStateStore,
    Outcome,
    Skip,
    Slot,
    Verdict,
    lease_id,
    limit_reason,
)

__all__ = ["RedisStateStore"]

_SCRIPT = r"""
-- Arguments, flat (cheaper than JSON on both sides): prefix, window, threshold,
-- cooldown, ttl, tokens, lease id, take, check_all, retry, order, then the finish
-- (0, or 1 and its fields and scopes), then the slots (count, then per slot the
-- provider and its scopes); a scope is key, rpm, tpm, max_in_flight (0: none).
local A = ARGV
local r = {p = A[1], w = tonumber(A[2]), th = tonumber(A[3]), cd = tonumber(A[4]),
           ttl = tonumber(A[5]), n = tonumber(A[6]), id = A[7], a = tonumber(A[8]),
           all = tonumber(A[9]), rt = tonumber(A[10]), ob = A[11]}
local x = 12
local function scopes()
  local count = tonumber(A[x])
  x = x + 1
  local out = {}
  for j = 1, count do
    out[j] = {k = A[x], rpm = tonumber(A[x + 1]), tpm = tonumber(A[x + 2]),
              fly = tonumber(A[x + 3])}
    x = x + 4
  end
  return out
end
if A[x] == '1' then
  r.f = {id = A[x + 1], p = A[x + 2], n = tonumber(A[x + 3]), v = A[x + 4],
         ttft = tonumber(A[x + 5]), tok = tonumber(A[x + 6]), cd = tonumber(A[x + 7])}
  x = x + 8
  r.f.sc = scopes()
else
  x = x + 1
end
local slots = tonumber(A[x])
x = x + 1
r.s = {}
for i = 1, slots do
  local name = A[x]
  x = x + 1
  r.s[i] = {p = name, sc = scopes()}
end
local P = r.p
local W = r.w
local T = redis.call('TIME')
local now = tonumber(T[1]) + tonumber(T[2]) / 1000000
local tr = {}
local DAY = 86400
local keep = math.ceil(W + r.ttl) + 1

local function num(v)
  return tonumber(v) or 0
end

local function tokens_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

local function trim_tokens(k)
  local zkey, ukey = P .. 't:' .. k, P .. 'u:' .. k
  while true do
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - W, 'LIMIT', 0, 256)
    if #old == 0 then return end
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tokens_of(m) end
    redis.call('ZREM', zkey, unpack(old))
    redis.call('DECRBY', ukey, freed)
    if #old < 256 then return end
  end
end

local function finish(f)
  redis.call('ZREM', P .. 'i:' .. f.p, f.id)
  for _, sc in ipairs(f.sc) do
    local k = sc.k
    redis.call('ZREM', P .. 'f:' .. k, f.id)
    if sc.rpm > 0 and f.v == 'unused' then
      redis.call('ZREM', P .. 'r:' .. k, f.id)
    end
    if sc.tpm > 0 then
      local zkey = P .. 't:' .. k
      local member = f.id .. ':' .. f.n
      local score = redis.call('ZSCORE', zkey, member)
      local new = f.tok
      if f.v == 'unused' then new = 0 end
      if score and new >= 0 then
        redis.call('ZREM', zkey, member)
        if new > 0 then redis.call('ZADD', zkey, score, f.id .. ':' .. new) end
        redis.call('INCRBY', P .. 'u:' .. k, new - f.n)
        redis.call('EXPIRE', zkey, keep)
        redis.call('EXPIRE', P .. 'u:' .. k, keep)
      end
    end
  end
  local b = P .. 'b:' .. f.p
  if f.cd > 0 then
    local cu = now + f.cd
    if cu > num(redis.call('HGET', b, 'cu')) then
      redis.call('HSET', b, 'cu', tostring(cu))
      redis.call('EXPIRE', b, DAY)
    end
  end
  -- An auth failure counts on the caller's own breaker only (other hubs may hold a good key).
  if f.v == 'local' then return end
  local h = redis.call('HMGET', b, 's', 'tl', 't')
  local st = h[1] or 'c'
  local mine = h[2] == f.id
  if f.v == 'ok' then
    if f.ttft >= 0 then
      local old = tonumber(h[3])
      local avg = f.ttft
      if old then avg = old + 0.3 * (f.ttft - old) end
      redis.call('HSET', b, 'f', 0, 't', tostring(avg))
    else
      redis.call('HSET', b, 'f', 0)
    end
    if mine or st ~= 'c' then redis.call('HDEL', b, 'tl', 'tu') end
    if st ~= 'c' then
      redis.call('HSET', b, 's', 'c')
      tr[#tr + 1] = {'circuit.closed', f.p}
    end
  elseif f.v == 'fail' then
    local fails = redis.call('HINCRBY', b, 'f', 1)
    if mine then redis.call('HDEL', b, 'tl', 'tu') end
    if st == 'h' or (st == 'c' and fails >= r.th) then
      redis.call('HSET', b, 's', 'o', 'o', tostring(now))
      redis.call('HDEL', b, 'tl', 'tu')
      tr[#tr + 1] = {'circuit.opened', f.p}
    end
  elseif mine then
    redis.call('HDEL', b, 'tl', 'tu')
  end
  redis.call('EXPIRE', b, DAY)
end

-- A refusal: {code, limit, used, retry_after (-1: unknown), scope index (0: none)}.
local function check(s)
  local h = redis.call('HMGET', P .. 'b:' .. s.p, 's', 'f', 'o', 'tu', 'cu')
  local st = h[1] or 'c'
  if st == 'o' then
    local rem = r.cd - (now - num(h[3]))
    if rem > 0 then return {'open', num(h[2]), 0, rem, 0} end
  elseif st == 'h' then
    if num(h[4]) > now then return {'trial', 0, 0, -1, 0} end
  end
  if r.rt == 0 and num(h[5]) > now then return {'cool', 0, 0, num(h[5]) - now, 0} end
  for j, sc in ipairs(s.sc) do
    local k = sc.k
    if sc.rpm > 0 then
      local key = P .. 'r:' .. k
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - W)
      local n = redis.call('ZCARD', key)
      if n >= sc.rpm then
        local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        return {'rpm', sc.rpm, n, num(first[2]) + W - now, j}
      end
    end
    if sc.tpm > 0 then
      trim_tokens(k)
      local used = num(redis.call('GET', P .. 'u:' .. k))
      if used > 0 and used + r.n > sc.tpm then
        local entries = redis.call('ZRANGE', P .. 't:' .. k, 0, 999, 'WITHSCORES')
        local freed, at = 0, -1
        for x = 1, #entries, 2 do
          freed = freed + tokens_of(entries[x])
          if used - freed + r.n <= sc.tpm or used - freed <= 0 then
            at = num(entries[x + 1]) + W - now
            break
          end
        end
        return {'tpm', sc.tpm, used, at, j}
      end
    end
    if sc.fly > 0 then
      local key = P .. 'f:' .. k
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      local n = redis.call('ZCARD', key)
      if n >= sc.fly then return {'fly', sc.fly, n, -1, j} end
    end
  end
  return nil, st
end

local function take(s, st)
  local b = P .. 'b:' .. s.p
  if st == 'o' then
    redis.call('HSET', b, 's', 'h', 'tl', r.id, 'tu', tostring(now + r.ttl))
    redis.call('EXPIRE', b, DAY)
    tr[#tr + 1] = {'circuit.half_open', s.p}
  elseif st == 'h' then
    redis.call('HSET', b, 'tl', r.id, 'tu', tostring(now + r.ttl))
    redis.call('EXPIRE', b, DAY)
  end
  local ikey = P .. 'i:' .. s.p
  redis.call('ZADD', ikey, now + r.ttl, r.id)
  redis.call('EXPIRE', ikey, keep)
  for _, sc in ipairs(s.sc) do
    local k = sc.k
    if sc.rpm > 0 then
      redis.call('ZADD', P .. 'r:' .. k, now, r.id)
      redis.call('EXPIRE', P .. 'r:' .. k, keep)
    end
    if sc.tpm > 0 then
      redis.call('ZADD', P .. 't:' .. k, now, r.id .. ':' .. r.n)
      redis.call('INCRBY', P .. 'u:' .. k, r.n)
      redis.call('EXPIRE', P .. 't:' .. k, keep)
      redis.call('EXPIRE', P .. 'u:' .. k, keep)
    end
    redis.call('ZADD', P .. 'f:' .. k, now + r.ttl, r.id)
    redis.call('EXPIRE', P .. 'f:' .. k, keep)
  end
end

if r.f then finish(r.f) end

local order = {}
for i = 1, #r.s do order[i] = i end
if r.ob ~= '' then
  local key = {}
  for i, s in ipairs(r.s) do
    if r.ob == 'ttft' then
      key[i] = tonumber(redis.call('HGET', P .. 'b:' .. s.p, 't')) or 0
    else
      local ikey = P .. 'i:' .. s.p
      redis.call('ZREMRANGEBYSCORE', ikey, '-inf', now)
      key[i] = redis.call('ZCARD', ikey)
    end
  end
  table.sort(order, function(a, b)
    if key[a] ~= key[b] then return key[a] < key[b] end
    return a < b
  end)
end

local chosen = -1
local skipped = {}
for _, i in ipairs(order) do
  if chosen >= 0 and r.all == 0 then break end
  local why, st = check(r.s[i])
  if why then
    skipped[#skipped + 1] = {i - 1, why[1], why[2], why[3], why[4], why[5]}
  elseif chosen < 0 and r.a == 1 then
    take(r.s[i], st)
    chosen = i - 1
  end
end
-- The reply, flat: chosen (-1: none), now, the transitions (count, then event and
-- provider each), the refusals (count, then six values each), then the order.
-- Fractions travel as strings: Redis turns a Lua number into an integer.
local out = {chosen, tostring(now), #tr}
for _, t in ipairs(tr) do
  out[#out + 1] = t[1]
  out[#out + 1] = t[2]
end
out[#out + 1] = #skipped
for _, k in ipairs(skipped) do
  out[#out + 1] = k[1]
  out[#out + 1] = k[2]
  out[#out + 1] = k[3]
  out[#out + 1] = k[4]
  out[#out + 1] = tostring(k[5])
  out[#out + 1] = k[6]
end
for _, i in ipairs(order) do out[#out + 1] = i - 1 end
return out
"""

_SNAPSHOT = r"""
local P = ARGV[1]
local T = redis.call('TIME')
local now = tonumber(T[1]) + tonumber(T[2]) / 1000000
local out = {}
for x = 2, #ARGV do
  local name = ARGV[x]
  local h = redis.call('HMGET', P .. 'b:' .. name, 's', 'f', 'o', 't')
  redis.call('ZREMRANGEBYSCORE', P .. 'i:' .. name, '-inf', now)
  out[#out + 1] = {name, h[1] or 'c', tonumber(h[2]) or 0, now - (tonumber(h[3]) or now),
                   tonumber(h[4]) or -1, redis.call('ZCARD', P .. 'i:' .. name)}
end
return cjson.encode(out)
"""

_VERDICT_CODES = {
    Verdict.SUCCESS: "ok",
    Verdict.FAILURE: "fail",
    Verdict.LOCAL_FAILURE: "local",
    Verdict.NEUTRAL: "neutral",
    Verdict.UNUSED: "unused",
}
_LIMIT_KINDS = {"rpm": "rpm", "tpm": "tpm", "fly": "max_in_flight"}


class _Script:
    """A Lua script's source and SHA1 (what ``EVALSHA`` names it by)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


def _pack(*parts: bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "the redis backend needs the redis client library: pip install 'provhub[redis]'",
            key="state.backend",
        ) from None
    return redis


def _shown(url: str) -> str:
    """The URL without user information, for events."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scopes_args(scopes: Sequence[Scope], out: list[str]) -> None:
    out.append(str(len(scopes)))
    for scope in scopes:
        limits = scope.limits
        out += (
            scope.key,
            str(limits.rpm or 0),
            str(limits.tpm or 0),
            str(limits.max_in_flight or 0),
        )


# Finishes sent without waiting for the reply (see RedisStateStore.finish).
_UNAWAITED = frozenset({Verdict.SUCCESS, Verdict.NEUTRAL, Verdict.UNUSED})


def _finish_args(lease: Lease, outcome: Outcome, out: list[str]) -> None:
    out += (
        "1",
        lease.id,
        lease.provider,
        str(lease.tokens),
        _VERDICT_CODES[outcome.verdict],
        "-1" if outcome.ttft is None else repr(outcome.ttft),
        "-1" if outcome.tokens is None else str(max(0, outcome.tokens)),
        repr(outcome.cooldown or 0.0),
    )
    _scopes_args(lease.scopes, out)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(reply: Any) -> dict[str, Any]:
    """The script's flat reply as ``{"c", "n", "t", "s", "o"}``."""
    chosen, now, count = int(reply[0]), float(reply[1]), int(reply[2])
    at = 3
    transitions = [(_text(reply[at + 2 * i]), _text(reply[at + 2 * i + 1])) for i in range(count)]
    at += 2 * count
    count = int(reply[at])
    at += 1
    skipped = []
    for i in range(count):
        row = reply[at + 6 * i : at + 6 * i + 6]
        skipped.append(
            (int(row[0]), _text(row[1]), int(row[2]), int(row[3]), float(row[4]), int(row[5]))
        )
    at += 6 * count
    return {
        "c": chosen,
        "n": now,
        "t": transitions,
        "s": skipped,
        "o": [int(v) for v in reply[at:]],
    }


class RedisStateStore:
    """A :class:`~provhub._state.StateStore` shared through Redis.

    ``RedisStateStore(config, threshold=5, cooldown=30.0, emit=None)``: ``config``
    is the ``[state]`` table; ``emit(level, event, fields)`` receives
    ``state.degraded``/``state.restored``. ``window`` (seconds of the rate
    window) and ``clock`` (of the local fallback) are for tests.
    """

    def __init__(
        self,
        config: StateConfig,
        *,
        threshold: int = 5,
        cooldown: float = 30.0,
        emit: EmitFn | None = None,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        redis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._local = MemoryStateStore(
            threshold=threshold, cooldown=cooldown, clock=clock, window=window
        )
        self.health = self._local.health
        self.url = _shown(config.url)
        password = os.environ.get(config.password_env) if config.password_env else None
        self._client = redis.Redis.from_url(
            config.url,
            password=password,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.connect_timeout,
            # No client-side retries: a failed call degrades to local state at
            # once instead of multiplying the timeout.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._script = _Script(_SCRIPT)
        self._snapshot = _Script(_SNAPSHOT)
        self._no_script: type[BaseException] = redis.exceptions.NoScriptError
        self._response_error: type[BaseException] = redis.exceptions.ResponseError
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, ValueError)
        # Idle connections of this store. Calls go through them directly (one packed
        # command, one reply): redis-py's client-level command path costs about
        # 70 us of CPU per call, several times the round trip on loopback.
        self._idle: list[Any] = []
        # ids of idle connections whose last command's reply is still unread (a
        # finish sent without waiting, see finish()); read before their next use.
        self._unread: set[int] = set()
        self._prefix = f"{config.prefix}:"
        self._cooldown = cooldown
        self._head = [self._prefix, repr(float(window)), str(threshold), repr(float(cooldown))]
        self._retry_interval = config.retry_interval
        self._emit = emit
        self._lock = threading.Lock()
        self._degraded_at: float | None = None
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """Whether the store is serving from local state (Redis unreachable)."""
        return self._degraded_at is not None

    # -- one round trip, or None when Redis cannot be used -------------------

    def _take(self) -> Any:
        """An idle connection (or a new one), its unread reply read and handled."""
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._client.connection_pool.make_connection()
        if id(connection) in self._unread:
            self._unread.discard(id(connection))
            try:
                reply = connection.read_response()
            except self._response_error:
                # NOSCRIPT from a restarted or flushed Redis: the lease that finish
                # released is gone with the rest of its state.
                pass
            except BaseException:
                connection.disconnect()
                raise
            else:
                self._late_transitions(reply)
        return connection

    def _late_transitions(self, reply: Any) -> None:
        """Breaker transitions a deferred finish caused (rare: a half-open breaker closed)."""
        if self._emit is None:
            return
        with contextlib.suppress(Exception):  # a reply we cannot read changes nothing
            for event, provider in _parse(reply)["t"]:
                level = INFO if event == "circuit.closed" else WARNING
                self._emit(level, event, {"provider": provider})

    def _send(self, script: _Script, args: Sequence[str]) -> bool:
        """``EVALSHA`` without waiting for its reply; False if Redis cannot be used.

        Redis runs a connection's commands in order, so the next call on this
        connection (this thread's next request takes it first: the idle list is
        a stack) sees the effect; its reply is read then.
        """
        if self._degraded_at is not None:
            return False
        try:
            connection = self._take()
            encoded = [arg.encode() for arg in args]
            try:
                connection.send_packed_command(
                    [_pack(b"EVALSHA", script.sha, b"0", *encoded)], check_health=False
                )
            except BaseException:
                connection.disconnect()
                raise
        except Exception as exc:  # whatever Redis or the client does, a request goes on
            self._degrade(exc)
            return False
        self._unread.add(id(connection))
        self._idle.append(connection)
        return True

    def _evaluate(self, script: _Script, args: Sequence[str]) -> Any:
        """``EVALSHA`` on an idle connection (loading the script if Redis lost it)."""
        connection = self._take()
        encoded = [arg.encode() for arg in args]
        try:
            try:
                connection.send_packed_command(
                    [_pack(b"EVALSHA", script.sha, b"0", *encoded)], check_health=False
                )
                reply = connection.read_response()
            except self._no_script:
                # A restarted or flushed Redis: load the script and go on.
                connection.send_packed_command(
                    [_pack(b"SCRIPT", b"LOAD", script.source)], check_health=False
                )
                connection.read_response()
                connection.send_packed_command(
                    [_pack(b"EVALSHA", script.sha, b"0", *encoded)], check_health=False
                )
                reply = connection.read_response()
        except BaseException:
            # A timeout may leave half a reply on the socket: never reuse it.
            connection.disconnect()
            raise
        self._idle.append(connection)
        return reply

    def _call(
        self, script: _Script, args: Sequence[str], parse: Callable[[Any], Any] = _parse
    ) -> Any:
        if self._degraded_at is not None:
            with self._lock:
                now = time.monotonic()
                if self._degraded_at is not None:
                    if now < self._retry_at:
                        return None
                    # This caller probes Redis; the others stay local meanwhile.
                    self._retry_at = now + self._retry_interval
        try:
            data = parse(self._evaluate(script, args))
        except Exception as exc:  # whatever Redis or the client does, a request goes on
            self._degrade(exc)
            return None
        if self._degraded_at is not None:
            self._restore()
        return data

    def _degrade(self, exc: BaseException) -> None:
        with self._lock:
            first = self._degraded_at is None
            now = time.monotonic()
            if first:
                self._degraded_at = now
            self._retry_at = now + self._retry_interval
        if first and self._emit is not None:
            text = str(exc).splitlines()[0][:160] if str(exc) else ""
            self._emit(
                WARNING,
                "state.degraded",
                {
                    "backend": "redis",
                    "url": self.url,
                    "error": f"{type(exc).__name__}: {text}" if text else type(exc).__name__,
                    "retry_in": self._retry_interval,
                },
            )

    def _restore(self) -> None:
        with self._lock:
            since = self._degraded_at
            self._degraded_at = None
        if since is not None and self._emit is not None:
            self._emit(
                INFO,
                "state.restored",
                {
                    "backend": "redis",
                    "url": self.url,
                    "degraded_s": round(time.monotonic() - since, 3),
                },
            )

    # -- the protocol -------------------------------------------------------

    def _local_refusals(self, slots: Sequence[Slot]) -> dict[int, Skip]:
        """This hub's own breakers (auth failures; state from a degraded spell)."""
        health = self.health
        refusals: dict[int, Skip] = {}
        if not health._providers:
            return refusals
        for index, slot in enumerate(slots):
            reason = health.exclusion(slot.name)
            if reason is not None:
                refusals[index] = Skip(index, reason, health.open_remaining(slot.name), False)
        return refusals

    def _request(
        self,
        slots: Sequence[Slot],
        *,
        tokens: int,
        ttl: float,
        order: str | None,
        retry: bool,
        take: bool,
        check_all: bool,
        finish: tuple[Lease, Outcome] | None,
        lease: str,
    ) -> Any:
        args = self._script_args(
            slots,
            tokens=tokens,
            ttl=ttl,
            order=order,
            retry=retry,
            take=take,
            check_all=check_all,
            finish=finish,
            lease=lease,
        )
        return self._call(self._script, args)

    def _script_args(
        self,
        slots: Sequence[Slot],
        *,
        tokens: int = 0,
        ttl: float = 1.0,
        order: str | None = None,
        retry: bool = False,
        take: bool = False,
        check_all: bool = False,
        finish: tuple[Lease, Outcome] | None = None,
        lease: str = "",
    ) -> list[str]:
        """The script's flat arguments: the call's switches, a finish, the candidates."""
        args = [
            *self._head,
            repr(float(ttl)),
            str(tokens),
            lease,
            "1" if take else "0",
            "1" if check_all else "0",
            "1" if retry else "0",
            order or "",
        ]
        if finish is None:
            args.append("0")
        else:
            _finish_args(*finish, args)
        args.append(str(len(slots)))
        for slot in slots:
            args.append(slot.name)
            _scopes_args(slot.scopes, args)
        return args

    def _decide(
        self,
        slots: Sequence[Slot],
        *,
        tokens: int,
        ttl: float,
        order: str | None,
        retry: bool,
        take: bool,
        check_all: bool,
        finish: tuple[Lease, Outcome] | None,
    ) -> Acquired:
        local_transitions: tuple[tuple[str, str], ...] = ()
        if finish is not None and (finish[0].local or finish[0].done):
            local_transitions = self._finish_here(*finish)
            finish = None
        refused = self._local_refusals(slots)
        sent = [i for i in range(len(slots)) if i not in refused]
        lease = lease_id()
        # What this hub refuses on its own is not sent: the script never admits it.
        data = self._request(
            [slots[i] for i in sent],
            tokens=tokens,
            ttl=ttl,
            order=order,
            retry=retry,
            take=take,
            check_all=check_all,
            finish=finish,
            lease=lease,
        )
        if data is None:
            if finish is not None:
                finish[0].done = True
                self._local.record(finish[0].provider, finish[1])
            if take:
                got = self._local.acquire(
                    slots, tokens=tokens, ttl=ttl, order=order, retry=retry, check_all=check_all
                )
            else:
                got = self._local.check(slots, tokens=tokens, order=order)
            return Acquired(
                got.lease, got.index, got.skipped, got.order, local_transitions + got.transitions
            )
        if finish is not None:
            finish[0].done = True
            local_transitions += self._mirror(finish[0].provider, finish[1])
        skipped = [self._skip(sent[s[0]], slots[sent[s[0]]], s, tokens) for s in data["s"]]
        skipped.extend(refused.values())
        skipped.sort(key=lambda skip: skip.index)
        order_used = tuple(sent[i] for i in data["o"]) + tuple(refused)
        chosen = data["c"]
        admitted: Lease | None = None
        index: int | None = None
        if chosen >= 0:
            index = sent[chosen]
            slot = slots[index]
            trial = ("circuit.half_open", slot.name) in data["t"]
            admitted = Lease(lease, slot.name, slot.scopes, tokens, local=False, trial=trial)
        transitions = tuple(dict.fromkeys(local_transitions + tuple(data["t"])))
        return Acquired(admitted, index, tuple(skipped), order_used, transitions)

    @staticmethod
    def _skip(index: int, slot: Slot, row: Sequence[Any], tokens: int) -> Skip:
        _, code, limit, used, retry_after, scope_no = row
        after = None if retry_after < 0 else float(retry_after)
        if code == "open":
            return Skip(index, open_reason(int(limit), after or 0.0), after, False)
        if code == "trial":
            return Skip(index, TRIAL_REASON, None, False)
        if code == "cool":
            return Skip(index, cooldown_reason(after or 0.0), after, True)
        scope = slot.scopes[int(scope_no) - 1]
        reason = limit_reason(_LIMIT_KINDS[code], scope, int(limit), int(used), tokens, after)
        return Skip(index, reason, after, True)

    def _mirror(self, name: str, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        """Keep this hub's own breaker: auth failures, and closing it on success."""
        verdict = outcome.verdict
        transition: str | None = None
        if verdict is Verdict.LOCAL_FAILURE:
            transition = self.health.failure(name)
        elif verdict is Verdict.SUCCESS and name in self.health._providers:
            transition = self.health.success(name)
        return ((transition, name),) if transition else ()

    def _finish_here(self, lease: Lease, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        if lease.local:
            return self._local.finish(lease, outcome)
        return ()

    def check(self, slots: Sequence[Slot], *, tokens: int, order: str | None = None) -> Acquired:
        """Which candidates would be admitted now (one round trip), taking nothing."""
        return self._decide(
            slots,
            tokens=tokens,
            ttl=1.0,
            order=order,
            retry=False,
            take=False,
            check_all=True,
            finish=None,
        )

    def acquire(
        self,
        slots: Sequence[Slot],
        *,
        tokens: int,
        ttl: float,
        order: str | None = None,
        retry: bool = False,
        check_all: bool = False,
        finish: tuple[Lease, Outcome] | None = None,
    ) -> Acquired:
        """Finish ``finish`` and admit the first candidate with room, in one round trip."""
        return self._decide(
            slots,
            tokens=tokens,
            ttl=ttl,
            order=order,
            retry=retry,
            take=True,
            check_all=check_all,
            finish=finish,
        )

    def finish(self, lease: Lease, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        """End an attempt (local for a lease taken while degraded).

        A failure, or the end of a half-open breaker's trial, waits for Redis'
        answer: every replica must skip a provider whose breaker it opened, and
        the run emits the transition with its request. Any other outcome is sent
        without waiting (its reply is read on the connection's next use): the
        request's result does not depend on it, and the caller is spared a
        round trip.
        """
        if lease.done:
            return ()
        if lease.local:
            return self._local.finish(lease, outcome)
        args = self._script_args((), finish=(lease, outcome))  # a finish, no candidate
        if outcome.verdict in _UNAWAITED and not lease.trial and self._send(self._script, args):
            lease.done = True
            return self._mirror(lease.provider, outcome)
        data = self._call(self._script, args)
        lease.done = True
        if data is None:
            transition = self._local.record(lease.provider, outcome)
            return ((transition, lease.provider),) if transition else ()
        mirrored = self._mirror(lease.provider, outcome)
        shared = tuple(data["t"])
        return tuple(dict.fromkeys(shared + mirrored))

    def snapshot(self, names: Sequence[str]) -> dict[str, dict[str, object]]:
        """Every named provider's shared breaker and statistics (one round trip)."""
        data = self._call(self._snapshot, [self._prefix, *names], json.loads) if names else None
        if data is None:
            return self._local.snapshot(names)
        states = {"c": "closed", "o": "open", "h": "half_open"}
        result: dict[str, dict[str, object]] = {}
        cooldown = self._cooldown
        rows = data if isinstance(data, list) else []  # cjson writes an empty list as {}
        for name, state, failures, opened_ago, ttft, in_flight in rows:
            shown = states.get(state, "closed")
            if shown == "open" and opened_ago >= cooldown:
                shown = "half_open"
            result[name] = {
                "state": shown,
                "consecutive_failures": int(failures),
                "ttft_ms": None if ttft < 0 else round(ttft * 1000, 3),
                "in_flight": int(in_flight),
            }
        return result

    def close(self) -> None:
        """Close the Redis connections (they reopen on the next call)."""
        idle, self._idle = self._idle, []
        self._unread.clear()  # their replies go with the connections
        for connection in idle:
            with contextlib.suppress(*self._errors):
                connection.disconnect()
        with contextlib.suppress(*self._errors):
            self._client.close()
