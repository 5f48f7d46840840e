"""Fair turns on an event loop for the streams it drives (see :mod:`provhub._aio`).

Hundreds of loop-driven streams whose sockets become readable at once would all
resume in one iteration of the loop, and every other coroutine would wait for
the lot. A :class:`Pacer` per loop spreads them over the iterations.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import Any

__all__ = ["TURN", "Pacer", "pacer_for"]

# Most time loop-driven streams together spend resuming in one loop iteration;
# past it, the others resume in the next one.
TURN = 0.002
# The least a resumption is assumed to cost (a wake-up and a task step).
_MIN_COST = 20e-6


class Pacer:
    """Spreads the work of many loop-driven streams over the loop's iterations.

    Hundreds of streams whose sockets became readable at once would all resume
    in one iteration of the loop, and every other coroutine would wait for the
    lot (500 streams started together held the loop for 160 ms). Streams charge
    the loop time they use; once an iteration has spent :data:`TURN`, a
    stream that wants to go on waits in a queue, and each later iteration lets
    as many resume, in order, as its estimated cost per resumption fits in
    :data:`TURN`.
    """

    __slots__ = ("_cost", "_loop", "_queue", "_scheduled", "spent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the pacer is the value of a WeakKeyDictionary keyed by the loop.
        self._loop = weakref.ref(loop)
        self._scheduled = False
        self._queue: collections.deque[tuple[asyncio.Future[Any], Any]] = collections.deque()
        self._cost = 50e-6  # running estimate of one resumption
        self.spent = 0.0

    async def turn(self, *, first: bool = False) -> None:
        """Wait for an iteration with time left (at once when this one has some).

        ``first``: a stream let in by the estimate found the iteration spent
        after all; it goes first next time.
        """
        if self.spent <= TURN and (first or not self._queue):
            return
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if first:
            self._queue.appendleft((waiter, None))
        else:
            self._queue.append((waiter, None))
        self._schedule()
        await waiter

    def wake(self, waiter: asyncio.Future[Any], value: Any) -> None:
        """Resolve ``waiter`` now if this iteration has time left, else in its turn.

        Called where a socket became ready, before the stream's task is even
        scheduled: a stream that waits for its turn costs the loop nothing.
        """
        if self.spent <= TURN and not self._queue:
            if not waiter.done():
                waiter.set_result(value)
            return
        self._queue.append((waiter, value))
        self._schedule()

    def charge(self, seconds: float, resumption: float | None = None) -> None:
        """Count ``seconds`` of loop time against this iteration.

        ``resumption``: what one resumption of a stream took in all (from its
        wake-up to its next wait), for the estimate of how many fit in a turn.
        """
        self.spent += seconds
        if resumption is not None:
            # Quick to rise, slow to fall: letting too many in costs the loop's lag.
            cost = self._cost
            cost = (cost + resumption) / 2 if resumption > cost else cost * 0.95
            self._cost = max(cost, _MIN_COST)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            loop = self._loop()
            if loop is not None:
                self._scheduled = True
                loop.call_soon(self._next_iteration)

    def _next_iteration(self) -> None:
        self._scheduled = False
        self.spent = 0.0
        queue = self._queue
        room = TURN
        while queue and room > 0:
            waiter, value = queue.popleft()
            if not waiter.done():
                waiter.set_result(value)
                room -= self._cost
        if queue:
            self._schedule()


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def pacer_for(loop: asyncio.AbstractEventLoop) -> Pacer:
    """The pacer of ``loop`` (created on first use, gone with the loop)."""
    pacer = _pacers.get(loop)
    if pacer is None:
        pacer = _pacers[loop] = Pacer(loop)
    return pacer
