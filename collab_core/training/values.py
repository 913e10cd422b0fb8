"""Value labels: what one cloud token is worth at each position of the local model's answer.

CITER labels a position by what routing it would *change*, not by whether the two models differ. For a pair that
shares a tokenizer and whose cloud weights are at hand (the stand-in), ``ValueCollector`` does, per question:

1. **Answer** -- the local model's greedy answer, recording at each position the router inputs: the hidden state,
   the sampled token, the top-k log-probabilities and the confidence summary.
2. **Teacher pass** -- one forward pass of the cloud model over prompt + answer gives its greedy next token at every
   position (token-exact): ``disagree`` where it differs from the local token.
3. **Rollouts** -- at a disagreement, the cloud's token replaces the local one (with ``span`` > 1, the cloud's
   next tokens follow it, from the teacher's own KV cache: the engine's ``span_tokens``) and the local model
   finishes the answer greedily; the answer check says whether the answer went wrong -> right (``value = +1``), right -> wrong
   (``-1``) or neither (``0``). Where the two agree, a cloud token changes nothing: ``value = 0`` with no rollout.

Rollouts are the batched decoder's natural work: each question's rollouts are one job on a lane
(``run_lanes``), run from the answer's end backwards (short ones first; each reuses the lane's KV cache for the
prefix it shares with the previous one), up to ``max_batch`` questions at once. Rolling out every disagreement
costs too much on a CPU, so they are **sampled**: every disagreement among the answer's last ``near`` tokens (where
rollouts are short and the answer is decided), plus up to ``sample`` others drawn uniformly with a seed from the
question id. The others stay unknown (NaN) and are left out of training; ``rolled`` marks which were run.

One ``.npz`` per question (``TRACE_VERSION`` 3: ``value_by_span`` holds the value of each span length up to
``span``), written once it is complete, so an interrupted run resumes where it stopped. Questions are handled in
chunks of ``chunk``: answers for the chunk (batched), teacher passes, then rollouts (batched).
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import TraceError
from ..local.loop import lane_greedy_answer, run_lanes
from .traces import TraceTask, _safe

TRACE_VERSION = 3


def pick_rollouts(disagree: np.ndarray, task_id: str, *, near: int, sample: int) -> list[int]:
    """The disagreement positions to roll out: all in the last ``near`` positions, ``sample`` more at random
    (seeded by ``task_id``); sorted from the end of the answer backwards."""
    where = np.flatnonzero(disagree == 1)
    n = len(disagree)
    tail = [int(k) for k in where if k >= n - near]
    rest = np.array([k for k in where if k < n - near], dtype=np.int64)
    if sample and len(rest):
        rng = np.random.default_rng(zlib.crc32(task_id.encode()))
        tail += [int(k) for k in rng.choice(rest, size=min(sample, len(rest)), replace=False)]
    return sorted(set(tail), reverse=True)


class ValueCollector:
    """Collects value-labelled traces for one (local model, cloud model) pair into ``out``.

    ``teacher`` is a ``LocalModel`` of the cloud model (it must share the local model's vocabulary)."""

    def __init__(self, lm, teacher, out: str | Path, *, max_tokens: int = 100, stop: str = "", near: int = 12,
                 sample: int = 3, max_batch: int = 8, chunk: int = 8, top_k: int = 5, span: int = 1):
        if teacher.vocab_fingerprint != lm.vocab_fingerprint:
            raise TraceError(f"token-exact value labels need one tokenizer: {teacher.name} and {lm.name} have "
                             "different vocabularies")
        self.lm, self.teacher, self.out = lm, teacher, Path(out)
        self.max_tokens, self.stop = max_tokens, stop
        self.near, self.sample, self.max_batch, self.chunk, self.top_k = near, sample, max_batch, chunk, top_k
        if span < 1:
            raise TraceError(f"span must be >= 1 cloud token, not {span!r}")
        self.span = span  # cloud tokens written at a routed position (the engine's span_tokens)
        self._tdec = None
        self.out.mkdir(parents=True, exist_ok=True)
        self.rollouts = 0
        self.teacher_passes = 0

    # -- phase 1: the local answers, batched ----------------------------------------------------------------
    def _features(self, step) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """The router's inputs at one position: hidden state, top-k log-probabilities, confidence summary."""
        c = step.confidence
        lp = np.array(c.top_logprobs, np.float64)[: self.top_k]
        return (np.array(step.hidden, dtype=np.float32), np.pad(lp, (0, self.top_k - len(lp)), constant_values=-30.0),
                [c.max_prob, c.entropy, c.margin])

    def _answer_job(self, prompt_ids: list[int]):
        def job(dec):
            toks, hid, top, conf = [], [], [], []
            steps = yield from lane_greedy_answer(dec, prompt_ids, max_tokens=self.max_tokens, stop=self.stop)
            for tid, step in steps:
                h, lp, c = self._features(step)
                toks.append(tid)
                hid.append(h)
                top.append(lp)
                conf.append(c)
            return toks, hid, top, conf
        return job

    # -- phase 2: the teacher's next token at every position -----------------------------------------------
    def teacher_next(self, prompt_ids: list[int], answer: list[int]) -> list[int]:
        """The teacher's greedy token at every position of the answer, from one teacher-forced pass through its
        own decoder: the pass leaves the answer in the decoder's cache, so the spans after it only trim it."""
        self.teacher_passes += 1
        return self._teacher().greedy_along(list(prompt_ids) + list(answer), len(prompt_ids))

    # -- phase 3: rollouts, batched --------------------------------------------------------------------------
    def _text(self, ids) -> str:
        text = self.lm.tokenizer.decode(list(ids))
        return text.split(self.stop)[0] if self.stop else text

    def cloud_spans(self, prompt_ids: list[int], answer: list[int], nxt: list[int], where: list[int]) -> dict:
        """The span the cloud writes at each position of ``where``: its token there, then (``span`` > 1) its next
        tokens after it, from the teacher's own KV cache (``where`` runs backwards, so each position only trims the
        cache and feeds the new tokens); a span stops at the end of the answer."""
        eos = set(self.lm.eos_token_ids)
        spans = {}
        for k in where:
            span = [nxt[k]]
            while len(span) < self.span and span[-1] not in eos:
                span.append(self.teacher_step(list(prompt_ids) + answer[:k] + span))
            spans[k] = span
        return spans

    def teacher_step(self, ids: list[int]) -> int:
        """The teacher's greedy next token after ``ids`` (a decoder of its own, on this thread)."""
        return self._teacher().prefill(ids).token_id

    def _teacher(self):
        if self._tdec is None:
            from ..local.decoder import StepDecoder

            self._tdec = StepDecoder(self.teacher)
        return self._tdec

    def _rollout_job(self, prompt_ids: list[int], answer: list[int], spans: dict[int, list[int]]):
        """At each position, one answer per span length s = 1..len(span): the cloud's first s tokens, then the
        local model to the end. A longer span needs no rollout of its own where the local model, after the
        shorter one, would write the cloud's next token itself (the answer is the same)."""
        eos = set(self.lm.eos_token_ids)

        def job(dec):
            out = {}
            for k, span in spans.items():  # from the end backwards: short first, the shared prefix stays cached
                texts, nexts, cont, after = [], [], None, None
                for s in range(1, len(span) + 1):
                    part = span[:s]
                    if cont and cont[0] == part[-1]:  # the local model would write this cloud token itself
                        cont = cont[1:]
                        texts.append(texts[-1])
                    elif part[-1] in eos:  # the cloud would end the answer inside its span
                        cont = []
                        texts.append(self._text(answer[:k] + part[:-1]))
                    else:
                        cont = []
                        steps = yield from lane_greedy_answer(dec, prompt_ids, answer[:k] + part,
                                                              max_tokens=self.max_tokens, stop=self.stop)
                        for t, step in steps:
                            if s == 1 and not cont:  # the position a router sees right after a cloud token
                                after = self._features(step)
                            cont.append(t)
                        texts.append(self._text(answer[:k] + part + cont))
                    nexts.append(cont[0] if cont else -1)
                out[k] = (texts, nexts, span, after)
            return out
        return job

    # -- a chunk of questions ---------------------------------------------------------------------------------
    def collect_chunk(self, tasks: list[TraceTask]) -> int:
        tok = self.lm.tokenizer
        prompts = [list(tok.encode(t.prompt, add_special_tokens=False)) for t in tasks]
        answers = run_lanes(self.lm, [self._answer_job(p) for p in prompts], max_batch=self.max_batch,
                            want_hidden=True)
        plans = []
        for task, p, (toks, hid, top, conf) in zip(tasks, prompts, answers):
            if not toks:
                continue
            nxt = self.teacher_next(p, toks)
            disagree = (np.array(nxt) != np.array(toks)).astype(np.float32)
            where = pick_rollouts(disagree, task.id, near=self.near, sample=self.sample) if task.check else []
            plans.append((task, p, toks, hid, top, conf, nxt, disagree, where))
        jobs = [self._rollout_job(p, toks, self.cloud_spans(p, toks, nxt, where))
                for (_, p, toks, _, _, _, nxt, _, where) in plans]
        order = sorted(range(len(jobs)), key=lambda i: len(plans[i][8]))  # fewest rollouts first
        done = run_lanes(self.lm, [jobs[i] for i in order], max_batch=self.max_batch, want_hidden=True)
        alts = [None] * len(jobs)
        for i, res in zip(order, done):
            alts[i] = res
        for plan, rolled_out in zip(plans, alts):
            self._save(*plan, rolled_out)
            self.rollouts += sum(len(set(r[0])) for r in rolled_out.values())
        return len(plans)

    def _save(self, task, prompt_ids, toks, hid, top, conf, nxt, disagree, where, rolled_out) -> None:
        n = len(toks)
        local_text = self._text(toks)
        local_ok = task.check(local_text) if task.check else None
        by_span = np.full((n, self.span), np.nan, np.float32)  # the value of an s-token span, s = 1..span
        local_next = np.full((n, self.span), -1, np.int64)  # the local token after the cloud's first s tokens
        cloud_span = np.full((n, self.span), -1, np.int64)  # the cloud's span there
        # where the two agree the cloud's first token changes nothing: 0 for every span length (for s > 1 an
        # approximation -- the rest of the span would be the next position's own question)
        by_span[disagree == 0] = 0.0
        after = {k: a for k, (_, _, _, a) in rolled_out.items() if a is not None}
        for k, (texts, nexts, span, _) in rolled_out.items():
            vals = [float(task.check(t)) - float(local_ok) for t in texts]
            by_span[k] = vals + vals[-1:] * (self.span - len(vals))  # a span the cloud ended stays ended
            local_next[k, :len(nexts)] = nexts
            cloud_span[k, :len(span)] = span
        alt_ok = np.full(n, np.nan, np.float32)
        alt_ok[list(rolled_out)] = by_span[list(rolled_out), -1] + float(local_ok or 0)
        value = by_span[:, -1].copy()
        rolled = np.zeros(n, bool)
        rolled[list(rolled_out)] = True
        rec = {
            "hidden": np.stack(hid).astype(np.float16),
            "top_logprobs": np.array(top, np.float32),
            "conf": np.array(conf, np.float32),
            "token": np.array(toks, np.int64),
            "cloud_token": np.array(nxt, np.int64),
            "disagree": disagree,
            "alt_ok": alt_ok,
            "value": value,
            "value_by_span": by_span,
            "local_next": local_next,
            "cloud_span": cloud_span,
            "rolled": rolled,
            # the position right after the cloud's first token, at each rolled-out k (a routed position's next
            # step, as the router meets it when it is asked again there); its value is span 2's over span 1's
            "after_pos": np.array(sorted(after), np.int64),
            "after_hidden": np.array([after[k][0] for k in sorted(after)], np.float16).reshape(len(after),
                                                                                               len(hid[0])),
            "after_top": np.array([after[k][1] for k in sorted(after)], np.float32).reshape(len(after), self.top_k),
            "after_conf": np.array([after[k][2] for k in sorted(after)], np.float32).reshape(len(after), 3),
            "local_ok": np.float32(np.nan if local_ok is None else float(local_ok)),
            "meta": json.dumps({"version": TRACE_VERSION, "id": task.id, "model": self.lm.fingerprint,
                                "cloud": f"teacher:{Path(self.teacher.name).name}", "local_text": local_text,
                                "prompt_tokens": len(prompt_ids), "near": self.near, "sample": self.sample,
                                "span": self.span}),
        }
        tmp = self.out / f".{_safe(task.id)}.tmp.npz"
        np.savez(tmp, **rec)
        tmp.replace(self.out / f"{_safe(task.id)}.npz")

    def run(self, tasks: Iterable[TraceTask], progress: bool = True,
            on_chunk: Callable[[int, int], None] | None = None) -> int:
        """Collect every task without a trace file yet, a chunk at a time; returns how many were written."""
        todo = [t for t in tasks if not (self.out / f"{_safe(t.id)}.npz").exists()]
        written, t0 = 0, time.monotonic()
        for i in range(0, len(todo), self.chunk):
            written += self.collect_chunk(todo[i: i + self.chunk])
            if progress:
                rate = written / max(1e-9, time.monotonic() - t0) * 3600
                print(f"values: {written}/{len(todo)} written ({rate:.0f}/h, {self.rollouts} rollouts, "
                      f"{self.teacher_passes} teacher passes)", file=sys.stderr, flush=True)
            if on_chunk:
                on_chunk(written, len(todo))
        return written
