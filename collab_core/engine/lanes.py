"""An engine's lanes: at most ``max_batch`` generations at once, idle lanes kept with their KV caches.

A lane is taken by a reader (a thread reading ``stream``, or an async reader) and given back once both the
generation has ended on the loop and its reader is done with it, so a slot stays taken while its stream is open.
Idle lanes are matched to a new prompt by the longest shared prefix, so that a next turn reuses its KV cache.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from ..local.batch import LaneDecoder
from ..text import common_prefix_len


class LanePool:
    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self.idle: list[LaneDecoder] = []  # least recently used first
        self.busy: dict[LaneDecoder, object] = {}  # lane -> its reader (a thread id, or a token of its own)
        self.cond = threading.Condition()

    def take(self, make: Callable[[], LaneDecoder], ids: Callable[[], Sequence[int]], hidden: bool, owner: object,
             *, block: bool = True) -> LaneDecoder | None:
        """A lane for one generation: the idle one whose sequence shares the longest prefix with the prompt's
        ``ids``, or a new one (``make``); waits while ``max_batch`` are busy (None at once if not ``block``)."""
        with self.cond:
            if len(self.busy) >= self.max_batch:
                if all(o == owner for o in self.busy.values()):
                    raise ConfigError(f"{len(self.busy)} streams of this engine are open in this thread, its "
                                      "max_batch: finish one first, or raise max_batch")
                if not block:
                    return None
                self.cond.wait_for(lambda: len(self.busy) < self.max_batch)
            lane = None
            if len(self.idle) > 1:
                want = ids()
                lane = max(reversed(self.idle), key=lambda d: common_prefix_len(d.tokens, want))
            elif self.idle:
                lane = self.idle[0]
            if lane is not None:
                self.idle.remove(lane)
            if lane is None or lane.want_hidden != hidden:
                lane = make()
            self.busy[lane] = owner
            return lane

    def releaser(self, lane: LaneDecoder) -> Callable[[], None]:
        """A function to call twice, once when the generation ends and once when its reader is done: the second
        call gives the lane back."""
        calls = [0]

        def release() -> None:
            with self.cond:
                calls[0] += 1
                if calls[0] == 2:
                    self.busy.pop(lane, None)
                    self.idle.append(lane)
                    del self.idle[: max(0, len(self.idle) - self.max_batch)]
                    self.cond.notify_all()
        return release
