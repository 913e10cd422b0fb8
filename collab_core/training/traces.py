"""Router traces: where the local model's next token differs from the cloud model's, and whether it matters.

``collect`` runs the local model greedily over prompts and records, at every position it writes:

* the router features (hidden state + confidence signals, ``scoring.features``) and the raw signals;
* ``disagree``: would the cloud model have written something else here? The cloud is asked, through the same
  ``CloudLeg`` as the engine (with a span cache on disk), to continue the prompt + the local answer so far; its text is
  compared with the local tokens' text (tokenizers differ), so one call labels every position up to the
  first disagreement, and the next call starts there;
* where a gold check is known (CommonsenseQA training questions): ``local_ok`` (is the local answer right?)
  and, at each disagreement, ``alt_ok`` -- is the answer right when the cloud writes this one token and the
  local model goes on? That is CITER's preference label: a disagreement only "needs the cloud" when taking
  the cloud's token turns a wrong answer into a right one.

``TeacherForcedCollector`` is the token-exact path, for a pair that shares a tokenizer (checked by vocabulary
fingerprint) when the cloud model's weights are at hand (the stand-in): one forward pass of the cloud model over
prompt + local answer gives its greedy next token at every position, so ``disagree`` is exact and costs one
prefill per answer instead of one call per disagreement. Outcome labels need a local continuation per
disagreement, which is most of the cost on long answers, so they are computed at up to ``continuations``
disagreements per wrong answer, drawn at random (seeded by the prompt id); the others are left unknown (NaN) and
``Traces.known`` leaves them out of training. (A right local answer needs none: its outcome labels are all 0.)

One ``.npz`` per prompt in the output folder, written only once every position is labelled; an interrupted run
resumes (prompts with a file are skipped, cloud answers already received come from a SQLite span cache in the same
folder), and a prompt whose cloud call failed is retried by the next run.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cloud.cache import SpanCache
from ..cloud.client import CloudClient, CloudSpan, SpanRequest
from ..cloud.leg import CloudLeg
from ..errors import CloudError, TraceError
from ..local.decoder import StepDecoder
from ..local.loop import drive, lane_greedy_answer
from ..scoring import ConfidenceScorer, TokenSignal, features, log_vocab
from ..stats import GenerationStats
from ..text import splice

TRACE_VERSION = 1


@dataclass
class TraceTask:
    id: str
    prompt: str  # rendered prompt (chat template applied, any prefill included)
    check: Callable[[str], bool] | None = None  # is this answer right? (enables the outcome label)


def _norm(s: str) -> str:
    return s.lstrip()


class TraceCollector:
    """Collects traces for one (local model, cloud model) pair into ``out``."""

    def __init__(self, lm, client: CloudClient | None, out: str | Path, *, max_tokens: int = 6, stop: str = "\n",
                 on_cloud_error: Callable[[CloudError], bool] | None = None):
        self.lm, self.client, self.out = lm, client, Path(out)
        self.max_tokens, self.stop = max_tokens, stop
        self.out.mkdir(parents=True, exist_ok=True)
        self.leg = CloudLeg(client, SpanCache(path=self.out / "spans.sqlite"), GenerationStats()) if client else None
        self.on_cloud_error = on_cloud_error  # return True to retry the call once (e.g. after a restart)
        self.log_vocab = log_vocab(lm)
        self.dec = StepDecoder(lm, want_hidden=True)
        self.confidence = ConfidenceScorer()
        self.confidence.bind(lm)

    # -- local side ------------------------------------------------------------------------------------
    def _text(self, ids) -> str:
        return self.lm.tokenizer.decode(list(ids))

    def _greedy(self, prompt_ids: list[int], answer: list[int], record: bool = False):
        """Continue ``answer`` greedily to EOS / stop / max_tokens; returns (answer, signals per new position)."""
        answer, sigs = list(answer), []
        for tid, step in drive(lane_greedy_answer(self.dec, prompt_ids, answer, max_tokens=self.max_tokens,
                                                      stop=self.stop)):
            if record:
                sigs.append(TokenSignal(step.confidence, len(answer), tid, np.array(step.hidden, dtype=np.float32)))
            answer.append(tid)
        return answer, sigs

    def _answer_text(self, answer) -> str:
        text = self._text(answer)
        return text.split(self.stop)[0] if self.stop else text

    # -- cloud side ------------------------------------------------------------------------------------
    def _cloud(self, prompt: str, partial: str) -> CloudSpan | None:
        req = SpanRequest(messages=[{"role": "user", "content": prompt}], prompt_text=prompt, partial=partial)
        return self.leg.call(req, on_error=self.on_cloud_error)

    @property
    def calls(self) -> int:
        """Cloud calls made (cached answers not counted)."""
        return self.leg.stats.cloud_calls

    # -- one prompt ------------------------------------------------------------------------------------
    def collect_one(self, task: TraceTask) -> dict | None:
        tok = self.lm.tokenizer
        prompt_ids = list(tok.encode(task.prompt, add_special_tokens=False))
        answer, sigs = self._greedy(prompt_ids, [], record=True)
        n = len(answer)
        if n == 0:
            return None
        local_text = self._answer_text(answer)
        local_ok = task.check(local_text) if task.check else None
        disagree = np.full(n, np.nan, np.float32)
        alt_ok = np.full(n, np.nan, np.float32)
        cloud_next = [""] * n
        j = 0
        while j < n:
            partial = self._text(answer[:j])
            span = self._cloud(task.prompt, partial)
            if span is None:
                return None  # cloud unreachable: no file, so a later run retries (labelled spans are cached)
            c = _norm(span.text)
            finished = span.ends_answer
            if self.stop and self.stop in c:
                c, finished = c.split(self.stop)[0], True
            k = j
            while k < n:
                piece = _norm(self._text(answer[: k + 1])[len(partial):])
                ended = bool(self.stop) and self.stop in piece  # the local answer stops at this token
                piece = piece.split(self.stop)[0] if ended else piece
                if c.startswith(piece) and (not ended or (finished and piece == c)):
                    disagree[k] = 0.0
                    k += 1
                    continue
                if piece.startswith(c) and not finished and k > j:
                    break  # the cloud's text ran out before this token: ask again from here
                disagree[k] = 1.0
                before = _norm(self._text(answer[:k])[len(partial):])
                rest = c[len(before):]
                if k == j and self._text(answer[: k + 1])[len(partial):][:1].isspace() and rest[:1] != " ":
                    rest = " " + rest  # mlx_lm.server and Anthropic trim a leading space
                cloud_next[k] = rest
                if task.check is not None:
                    alt_ok[k] = float(self._alt_outcome(prompt_ids, answer[:k], rest, task.check))
                k += 1
                break
            j = k
        return self._save(task, sigs, disagree, alt_ok, local_ok, local_text, cloud_next, self.client.model)

    def _alt_outcome(self, prompt_ids, head: list[int], cloud_text: str, check) -> bool:
        """Is the answer right if the cloud writes its next token here and the local model goes on?"""
        n_back, new_ids = splice(self.lm.tokenizer, head, cloud_text)
        if not new_ids:
            return check(self._answer_text(head))
        alt = list(head[: len(head) - n_back]) + list(new_ids[: n_back + 1])
        alt, _ = self._greedy(prompt_ids, alt)
        return check(self._answer_text(alt))

    def _save(self, task: TraceTask, sigs, disagree, alt_ok, local_ok, local_text: str, cloud_next: list[str],
              cloud: str) -> dict:
        rec = {
            "x": np.stack([features(s, self.log_vocab) for s in sigs]),
            "conf": np.array([[s.confidence.max_prob, s.confidence.entropy, s.confidence.margin] for s in sigs],
                             np.float32),
            "conf_score": np.array([self.confidence(s) for s in sigs], np.float32),  # for comparison
            "token": np.array([s.token_id for s in sigs], np.int64),
            "disagree": disagree,
            "alt_ok": alt_ok,
            "local_ok": np.float32(np.nan if local_ok is None else float(local_ok)),
            "meta": json.dumps({"version": TRACE_VERSION, "id": task.id, "model": self.lm.fingerprint,
                                "cloud": cloud, "local_text": local_text, "cloud_next": cloud_next}),
        }
        np.savez(self.out / f"{_safe(task.id)}.npz", **rec)
        return rec

    def run(self, tasks: Iterable[TraceTask], progress: bool = True) -> int:
        """Collect every task without a trace file yet; returns how many were written."""
        todo = [t for t in tasks if not (self.out / f"{_safe(t.id)}.npz").exists()]
        it = todo
        if progress:
            from tqdm import tqdm

            it = tqdm(todo, desc="collect", file=sys.stderr)
        written = 0
        for task in it:
            written += self.collect_one(task) is not None
        return written


class TeacherForcedCollector(TraceCollector):
    """Token-exact traces from the cloud model's own weights (see the module docstring): ``teacher`` is a
    ``LocalModel`` of the cloud model, which must share the local model's vocabulary."""

    def __init__(self, lm, teacher, out: str | Path, *, max_tokens: int = 100, stop: str = "",
                 continuations: int = 3):
        if teacher.vocab_fingerprint != lm.vocab_fingerprint:
            raise TraceError(f"teacher-forced traces need one tokenizer: {teacher.name} and {lm.name} have "
                             "different vocabularies (collect through the cloud API instead)")
        super().__init__(lm, None, out, max_tokens=max_tokens, stop=stop)
        self.teacher, self.continuations = teacher, continuations
        self.passes = 0

    @property
    def calls(self) -> int:
        """Teacher forward passes made (one per answer)."""
        return self.passes

    def teacher_next(self, prompt_ids: list[int], answer: list[int]) -> list[int]:
        """The cloud model's greedy next token at each answer position, from one forward pass."""
        import mlx.core as mx

        logits = self.teacher.model(mx.array(list(prompt_ids) + list(answer))[None])
        self.passes += 1
        return mx.argmax(logits[0, len(prompt_ids) - 1: len(prompt_ids) + len(answer) - 1], axis=-1).tolist()

    def collect_one(self, task: TraceTask) -> dict | None:
        tok = self.lm.tokenizer
        prompt_ids = list(tok.encode(task.prompt, add_special_tokens=False))
        answer, sigs = self._greedy(prompt_ids, [], record=True)
        if not answer:
            return None
        local_text = self._answer_text(answer)
        local_ok = task.check(local_text) if task.check else None
        nxt = self.teacher_next(prompt_ids, answer)
        disagree = (np.array(nxt) != np.array(answer)).astype(np.float32)
        alt_ok = np.full(len(answer), np.nan, np.float32)
        if task.check is not None and not local_ok:
            where = np.flatnonzero(disagree == 1)
            rng = np.random.default_rng(zlib.crc32(task.id.encode()))
            for k in sorted(rng.choice(where, size=min(self.continuations, len(where)), replace=False).tolist()):
                if nxt[k] in self.lm.eos_token_ids:  # the cloud would end the answer here
                    alt = answer[:k]
                else:
                    alt, _ = self._greedy(prompt_ids, answer[:k] + [nxt[k]])
                alt_ok[k] = float(task.check(self._answer_text(alt)))
        cloud_next = [tok.decode([c]) if d else "" for c, d in zip(nxt, disagree)]
        return self._save(task, sigs, disagree, alt_ok, local_ok, local_text, cloud_next,
                          f"teacher:{Path(self.teacher.name).name}")  # a folder's name, not a local path


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:120]


@dataclass
class Traces:
    """Every trace file of a folder, concatenated; ``group`` is the prompt index of each position."""

    x: np.ndarray
    conf: np.ndarray
    conf_score: np.ndarray
    token: np.ndarray
    disagree: np.ndarray
    alt_ok: np.ndarray
    local_ok: np.ndarray  # per position (the prompt's value repeated)
    group: np.ndarray
    ids: list[str]
    model: str
    clouds: list[str]  # the cloud model(s) that labelled them

    def labels(self, kind: str = "outcome") -> np.ndarray:
        """``disagree``: the cloud would write something else; ``outcome`` (CITER): it disagrees and its token
        turns a wrong local answer into a right one."""
        if kind == "disagree":
            return self.disagree.astype(np.float32)
        if kind == "outcome":
            if np.isnan(self.local_ok).any():
                raise TraceError("outcome labels need a gold check (CommonsenseQA-style traces); use --label disagree")
            return ((self.disagree == 1) & (self.local_ok == 0) & (self.alt_ok == 1)).astype(np.float32)
        raise TraceError(f"unknown label kind {kind!r}: disagree or outcome")


def _subset(t: Traces, keep: np.ndarray) -> Traces:
    return Traces(x=t.x[keep], conf=t.conf[keep], conf_score=t.conf_score[keep], token=t.token[keep],
                  disagree=t.disagree[keep], alt_ok=t.alt_ok[keep], local_ok=t.local_ok[keep], group=t.group[keep],
                  ids=t.ids, model=t.model, clouds=t.clouds)


def known_only(t: Traces, kind: str = "outcome") -> Traces:
    """The positions whose ``kind`` label is known: for outcome labels, a disagreement in a wrong answer whose
    continuation was not run (``TeacherForcedCollector`` samples them) is unknown."""
    if kind != "outcome":
        return t
    unknown = (t.disagree == 1) & (t.local_ok == 0) & np.isnan(t.alt_ok)
    return t if not unknown.any() else _subset(t, ~unknown)


def load_traces(folder: str | Path) -> Traces:
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise TraceError(f"no traces in {folder}: run `collab router collect` first")
    parts, ids, models, clouds = [], [], set(), set()
    for f in files:
        d = np.load(f)
        meta = json.loads(str(d["meta"]))
        models.add(meta["model"])
        clouds.add(meta.get("cloud", "?"))
        ids.append(meta["id"])
        parts.append(d)
    if len(models) > 1:
        raise TraceError(f"traces in {folder} come from several local models: {sorted(models)}")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "conf", "conf_score", "token", "disagree", "alt_ok")}
    sizes = [len(p["disagree"]) for p in parts]
    return Traces(**cat, local_ok=np.repeat([float(p["local_ok"]) for p in parts], sizes).astype(np.float32),
                  group=np.repeat(np.arange(len(parts)), sizes), ids=ids, model=models.pop(), clouds=sorted(clouds))
