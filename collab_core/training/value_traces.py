"""Value traces as training rows, and what a router would gain on them (``routed_gain``).

A trace (``values.py``) holds, per position of the local model's answer, the router's inputs and the value of
letting the cloud write there. Rows come in two kinds:

* **trajectory rows** -- every position of the local answer; the label is the value of a ``span``-token cloud
  span there (0 where the two models agree, NaN where the disagreement was not rolled out);
* **after rows** (one-token spans only) -- the position right after the cloud's first token at a rolled-out
  position, as a router meets it when it is asked again there. Its label is what routing *that* position adds:
  the 2-token span's value minus the 1-token span's (0 where the local model would write the cloud's next token
  itself). ``parent`` links it to the trajectory row it follows. That trajectory row is then labelled with the
  value of routing it *and acting well next*: the better of its 1- and 2-token values (``alone`` keeps the
  1-token value, which is what ``routed_gain`` counts when the router does not route the next position).

With after rows a router trained on one-token spans can learn to chain them (an opening parenthesis, then the
letter) without any rule about the task's text: the labels say where a second token pays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TraceError


@dataclass
class ValueTraces:
    hidden: np.ndarray  # (n, H) float16
    top: np.ndarray  # (n, k) top-k log-probabilities
    conf: np.ndarray  # (n, 3) max_prob, entropy, margin
    token: np.ndarray
    value: np.ndarray  # NaN where unknown
    weight: np.ndarray  # inverse sampling rate of the rolled-out position (1 elsewhere)
    disagree: np.ndarray
    position: np.ndarray  # index in the answer
    length: np.ndarray  # the answer's length, per position
    local_ok: np.ndarray  # per position
    group: np.ndarray
    ids: list[str]
    texts: list[str]
    model: str
    parent: np.ndarray | None = None  # after rows: the trajectory row they follow; -1 on trajectory rows
    alone: np.ndarray | None = None  # the value of the row's one cloud token with nothing routed after it

    @property
    def own_value(self) -> np.ndarray:
        """Each row's value with only its own cloud token routed (``alone`` where a chained label replaced it)."""
        return self.value if self.alone is None else self.alone

    @property
    def after(self) -> np.ndarray:
        return np.zeros(len(self.token), bool) if self.parent is None else self.parent >= 0


def _span_value(d, meta: dict, span: int | None, f: Path) -> np.ndarray:
    if span is None or span == meta.get("span", 1):
        return d["value"]
    if "value_by_span" not in d or not 1 <= span <= d["value_by_span"].shape[1]:
        raise TraceError(f"{f} holds no value for {span}-token spans (collected with span {meta.get('span', 1)})")
    return d["value_by_span"][:, span - 1]


def _after_rows(d, weight: np.ndarray, offset: int) -> dict:
    """The after rows of one trace (empty where it was collected without them)."""
    if "after_pos" not in d or d["value_by_span"].shape[1] < 2 or not len(d["after_pos"]):
        return {}
    k = d["after_pos"]
    cloud2, local2 = d["cloud_span"][k, 1], d["local_next"][k, 0]
    dis = (cloud2 >= 0) & (cloud2 != local2)
    by = d["value_by_span"][k]
    value = np.where(dis, by[:, 1] - by[:, 0], 0.0)  # nothing chains after an after row: its own value is its label
    return {"hidden": d["after_hidden"], "top": d["after_top"], "conf": d["after_conf"],
            "token": np.where(local2 >= 0, local2, d["token"][k]), "value": value, "alone": value,
            "weight": weight[k], "disagree": dis, "position": k + 1, "parent": offset + k}


def load_value_traces(folder: str | Path, span: int | None = None, *, after: bool = True) -> ValueTraces:
    """Every value trace in ``folder``. ``span`` picks the label: the value of a ``span``-token cloud span
    (version 3 traces hold one per span length up to the collector's ``span``); by default the collector's own.
    For one-token spans, ``after`` adds the after rows where the traces have them."""
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise TraceError(f"no value traces in {folder}: run `collab router collect --values` first")
    cols: dict[str, list] = {k: [] for k in ("hidden", "top", "conf", "token", "value", "weight", "disagree",
                                             "position", "length", "local_ok", "group", "parent", "alone")}
    ids, texts, models, offset = [], [], set(), 0
    for g, f in enumerate(files):
        d = np.load(f)
        meta = json.loads(str(d["meta"]))
        if meta.get("version") not in (2, 3):
            raise TraceError(f"{f} is not a value trace (version {meta.get('version')})")
        value = _span_value(d, meta, span, f)
        models.add(meta["model"])
        n = len(d["token"])
        rolled, dis = d["rolled"], d["disagree"] == 1
        weight = np.ones(n, np.float32)
        rest = dis & (np.arange(n) < n - meta["near"])  # the sampled stretch
        sampled = rest & rolled
        if sampled.any():
            weight[sampled] = rest.sum() / sampled.sum()
        rows = [{"hidden": d["hidden"], "top": d["top_logprobs"], "conf": d["conf"], "token": d["token"],
                 "value": value, "weight": weight, "disagree": dis, "position": np.arange(n),
                 "parent": np.full(n, -1), "alone": value}]
        if after and (span or meta.get("span", 1)) == 1:
            rows.append(_after_rows(d, weight, offset))
            if rows[-1]:
                k = d["after_pos"]
                chained = value.copy()
                chained[k] = np.maximum(d["value_by_span"][k, 0], d["value_by_span"][k, 1])
                rows[0]["value"] = chained
        for r in filter(None, rows):
            m = len(r["token"])
            r.update(length=np.full(m, n), local_ok=np.full(m, float(d["local_ok"]), np.float32),
                     group=np.full(m, g))
            for k, v in r.items():
                cols[k].append(np.asarray(v))
            offset += m
        ids.append(meta["id"])
        texts.append(meta["local_text"])
    if len(models) > 1:
        raise TraceError(f"traces in {folder} come from several local models: {sorted(models)}")
    return ValueTraces(**{k: np.concatenate(v) for k, v in cols.items()}, ids=ids, texts=texts, model=models.pop())


def routed_gain(score: np.ndarray, t: ValueTraces, share: float) -> dict:
    """What routing by ``score`` would do. One global threshold routes the top ``share`` of the answers'
    positions (trajectory rows); per question the first routed position decides: its value, or, where its after
    row scores above the threshold too (the router asked again, right after the cloud's token), the value of the
    two tokens together. Returns net answers gained (+1 / -1 / 0) per 100 questions, the cloud tokens this spent
    per answer token (``tokens_share``), and how many questions' first routed position had no label."""
    traj = ~t.after
    alone = t.own_value
    k = max(1, int(round(share * traj.sum())))
    cut = np.sort(score[traj])[::-1][k - 1]
    routed = traj & (score >= cut)
    follow = {}
    if t.parent is not None:
        for i in np.flatnonzero(t.after & (score >= cut)):
            follow[int(t.parent[i])] = i
    up = down = unknown = tokens = 0
    for g in np.unique(t.group):
        idx = np.flatnonzero((t.group == g) & routed)
        if not len(idx):
            continue
        first = idx[0]
        v, tokens = alone[first], tokens + 1
        if first in follow and t.disagree[follow[first]]:
            v, tokens = v + t.value[follow[first]], tokens + 1
        if np.isnan(v):
            unknown += 1
        up, down = up + (v > 0), down + (v < 0)
    n = len(np.unique(t.group))
    return {"share": share, "up": int(up), "down": int(down), "unknown_first": unknown,
            "tokens_share": round(tokens / max(1, traj.sum()), 4), "net_per_100": round(100.0 * (up - down) / n, 2)}
