"""The decode rounds' batch: the batched KV cache they run on, kept from one round to the next, and the pass.

A layer cache's ``merge`` (mlx-lm: ``KVCache.merge`` gives a ``BatchKVCache``, ``RotatingKVCache.merge`` a
``BatchRotatingKVCache``, ``CacheList`` merges its parts) makes one batched cache of several sequences, one row
each, left-padded to a common end. ``BatchRows`` keeps one such cache per layer across rounds, with the lanes whose
rows it holds, in row order:

- a round whose lanes are the last round's runs on it as it stands: no copy, no merge, no extract;
- lanes that **leave** (no step in this round) get their row back (``extract``) and are ``filter``ed out;
- lanes that **join** are ``merge``d into a batch of their own, which the kept one is ``extend``ed with; lanes
  whose prompts a prefill round has just read join with their rows of its batch, as they are (``add``).

While the batch holds a lane's row, the lane's own cache is empty; anything else that needs it (a prompt read, a
span fed in, a rollback, a fork, a lone forward pass) reads it back first (``LaneDecoder.cache``), so every
per-lane operation runs on the lane's own cache as it did before -- rollback above all: a batched cache trims
every row at once. The lane joins again at its next round. This is how mlx-lm's ``BatchGenerator`` keeps its
generation batch (``extend`` for new prompts, ``filter`` for finished ones); here the rows also leave and come back
for the lanes' own operations.

What a batched cache can do is asked of it: one that cannot ``filter`` and ``extend`` lasts one round (merged,
run, every row extracted: the per-round merge this replaces). ``forward_rows`` is the round's forward pass: one
token per row, each row's ``Step`` (the summaries of all rows in one graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..scoring import summary_graph
from .decoder import Step, greedy


def _lasting(kv: Sequence[Any]) -> bool:
    """Whether batched caches can be kept across rounds: rows filtered out and batches added, asked of them."""
    return all(callable(getattr(c, m, None)) for c in kv for m in ("extract", "filter", "extend"))


class BatchRows:
    """One batched KV cache kept across rounds, and the lanes whose rows it holds (see the module)."""

    def __init__(self) -> None:
        self.lanes: list[Any] = []  # in row order
        self.kv: list[Any] | None = None  # a batched cache per layer (None: no lane's row is held)
        self.kept = 0  # rounds that ran on the batch as the round before left it
        self.rebuilt = 0  # rounds whose lanes had joined or left since the round before

    def holds(self, lane: Any) -> bool:
        return any(x is lane for x in self.lanes)

    def arrange(self, lanes: Sequence[Any]) -> list[Any]:
        """The batched cache holding the rows of exactly ``lanes`` (``self.lanes`` gives their order): the kept
        one, less the rows of the lanes not in ``lanes``, extended with those that are not in it yet."""
        want = {id(lane) for lane in lanes}
        leaving = [i for i, lane in enumerate(self.lanes) if id(lane) not in want]
        if leaving:
            self._take_out(leaving)
        held = {id(lane) for lane in self.lanes}
        joining = [lane for lane in lanes if id(lane) not in held]
        if joining:
            own = [lane._own for lane in joining]
            new = [type(own[0][i]).merge([c[i] for c in own]) for i in range(len(own[0]))]
            if self.kv is None:
                self.kv = new
            else:
                for kept, added in zip(self.kv, new):
                    kept.extend(added)
            self.lanes += joining
            for lane in joining:
                lane._own = None  # the row is the lane's cache now
        if leaving or joining:
            self.rebuilt += 1
        else:
            self.kept += 1
        return self.kv

    def add(self, lanes: Sequence[Any], kv: list[Any], rows: Sequence[int]) -> None:
        """A prefill round's batched cache ``kv`` (evaluated; a row per lane of ``lanes``): the lanes at ``rows``
        (their prompts read, their next step a decode round's) join the kept batch with their rows as they are,
        with no extract and merge; the others get their rows back (their prompts' next chunks come first)."""
        import mlx.core as mx

        rows = list(rows) if _lasting(kv) else []
        for i, lane in enumerate(lanes):
            if i not in rows:
                lane.cache = [c.extract(i) for c in kv]
        mx.eval([c.state for i, lane in enumerate(lanes) if i not in rows for c in lane.cache])
        if not rows:
            return
        try:
            if len(rows) < len(lanes):
                for c in kv:
                    c.filter(rows)
            if self.kv is None:
                self.kv = kv
            else:
                for kept, added in zip(self.kv, kv):
                    kept.extend(added)
        except BaseException:
            self.lost()
            raise
        for i in rows:
            lanes[i]._own = None
            self.lanes.append(lanes[i])

    def after_round(self) -> None:
        """Keep the batch for the next round if its caches allow it, else give every row back."""
        if self.kv is not None and not _lasting(self.kv):
            self.release_all()

    def release_all(self) -> None:
        """Give every lane its row back (the loop has no generation left: a lane may be read off its thread)."""
        if self.lanes:
            self._take_out(list(range(len(self.lanes))))

    def release(self, lane: Any) -> None:
        """Give ``lane`` its row back as its own cache (evaluated) and drop the row from the batch."""
        for i, x in enumerate(self.lanes):
            if x is lane:
                self._take_out([i])
                return

    def drop(self, lane: Any) -> None:
        """Drop ``lane``'s row, if held, without reading it back (the lane's cache is being replaced)."""
        for i, x in enumerate(self.lanes):
            if x is lane:
                self._take_out([i], extract=False)
                return

    def lost(self) -> None:
        """A round failed with the rows in the batch: what they hold is unknown. Each lane starts afresh (an
        empty cache, no tokens), the batch is dropped."""
        for lane in self.lanes:
            lane._own = lane._make_cache()
            lane._tokens = []
            lane._lazy = False
            lane._steps.clear()
        self.lanes, self.kv = [], None

    def _take_out(self, rows: list[int], *, extract: bool = True) -> None:
        import mlx.core as mx

        kv = self.kv
        if extract:
            for i in rows:
                own = [c.extract(i) for c in kv]
                mx.eval([c.state for c in own])  # a copy of its own now: the batch's arrays are not kept alive
                self.lanes[i]._own = own
        out = set(rows)
        keep = [i for i in range(len(self.lanes)) if i not in out]
        if keep:
            for c in kv:
                c.filter(keep)
        else:
            self.kv = None
        self.lanes = [self.lanes[i] for i in keep]


def forward_rows(lanes: list[Any], tids: list[int], kv: list) -> tuple[list[Step], list]:
    """The forward pass of one token per row over the batched cache ``kv``: each row's ``Step``, and every
    array a generation reads (to evaluate in the round)."""
    import mlx.core as mx

    first = lanes[0]
    ids = mx.array([[tid] for tid in tids], dtype=mx.uint32)
    hidden = None
    if any(lane.want_hidden for lane in lanes):
        h = first.model.model(ids, cache=kv)[:, -1, :]
        logits = first._head()(h)
        hidden = h
    else:
        logits = first.model(ids, cache=kv)[:, -1, :]
    logprobs = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).astype(mx.float32)
    k = max(lane.top_k for lane in lanes)
    packed, top = summary_graph(logprobs, k)  # one graph for every row
    greedy_rows = mx.argmax(logprobs, axis=-1) if any(lane.sampler is greedy for lane in lanes) else None
    steps, outs = [], [logprobs]
    for row, lane in enumerate(lanes):
        lp = logprobs[row]
        token = greedy_rows[row] if lane.sampler is greedy else lane.sampler(lp[None]).squeeze()
        n = lane.top_k
        if n == k:
            p_row, t_row = packed[row], top[row]
        else:  # a lane that keeps fewer candidates: its own top-n (the k best are not ordered)
            t_row = mx.argpartition(-lp, kth=n - 1)[:n]
            p_row = mx.concatenate([packed[row, :1], lp[t_row]])
        hid = hidden[row] if hidden is not None and lane.want_hidden else None
        steps.append(Step(lp, token, p_row, t_row, hid))
        outs += [lp, token, p_row, t_row] + ([hid] if hid is not None else [])
    return steps, outs
