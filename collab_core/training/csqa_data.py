"""Where CommonsenseQA questions come from: a JSONL file given by path, or the Hugging Face hub.

The benchmark (``benchmarks/csqa.py --data``) and router-trace collection (``collab router collect --data``)
take a data argument, never a path outside the repository:

* ``FILE.jsonl`` -- one question a line in the Hugging Face ``commonsense_qa`` layout (``id``, ``question``,
  ``choices: {label, text}``, ``answerKey``), or ``{"id", "prompt"}`` rows for trace collection;
* ``hf:validation`` / ``hf:train`` -- that split of ``tau/commonsense_qa`` from the hub, converted once into a
  JSONL file in the cache (``$COLLAB_CACHE_DIR/data``): with the ``datasets`` library when it is installed, else
  ``huggingface_hub.hf_hub_download`` of the split's parquet file, read with pyarrow or polars.

A missing file, or a hub that cannot be reached, is a ``ConfigError`` that says how to get the data (``HOW``).
The evaluation questions are ``validation``; calibrate and collect traces on ``train`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..local.weights import cache_dir

HUB_REPO = "tau/commonsense_qa"
HUB_SPLITS = ("train", "validation")  # the test split has no answers
HOW = ("Get CommonsenseQA with --data hf:validation (evaluation) or --data hf:train (calibration, traces), which "
       f"download it from the Hugging Face hub ({HUB_REPO}; needs huggingface_hub and pyarrow or polars, or the "
       "datasets library), or pass --data FILE.jsonl: one question a line in the Hugging Face commonsense_qa "
       "layout (see the README, 'CommonsenseQA data').")


def data_path(spec: str | Path | None, *, what: str = "CommonsenseQA questions") -> Path:
    """The JSONL file ``spec`` names: a path, or ``hf:SPLIT`` (downloaded and converted on first use)."""
    if spec is None or str(spec).strip() == "":
        raise ConfigError(f"no {what} given. {HOW}")
    text = str(spec)
    if text.startswith("hf:"):
        return hub_jsonl(text[3:])
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}: no such file {path}. {HOW}")
    return path


def hub_jsonl(split: str, folder: Path | None = None) -> Path:
    """``split`` of CommonsenseQA from the hub as a JSONL file in ``folder`` (default: the cache), made once."""
    if split not in HUB_SPLITS:
        raise ConfigError(f"CommonsenseQA split {split!r}: use hf:{' or hf:'.join(HUB_SPLITS)}")
    folder = folder or cache_dir() / "data"
    out = folder / f"commonsense_qa-{split}.jsonl"
    if out.is_file():
        return out
    rows = [_question(r) for r in _hub_rows(split)]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(out)
    return out


def _hub_rows(split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        try:
            return list(datasets.load_dataset(HUB_REPO, split=split))
        except Exception as exc:  # noqa: BLE001 - offline, no such repo, ...: said with the way out
            raise ConfigError(f"could not load {HUB_REPO} ({split}) with datasets: {exc}. {HOW}") from exc
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ConfigError(f"--data hf:{split} needs huggingface_hub (or datasets). {HOW}") from exc
    try:
        path = hf_hub_download(HUB_REPO, f"data/{split}-00000-of-00001.parquet", repo_type="dataset")
    except Exception as exc:  # noqa: BLE001 - offline, no such file, ...: said with the way out
        raise ConfigError(f"could not download {HUB_REPO} ({split}) from the Hugging Face hub: "
                          f"{type(exc).__name__}: {exc}. {HOW}") from exc
    return read_parquet(path)


def read_parquet(path: str | Path) -> list[dict]:
    """The rows of a parquet file, with pyarrow or else polars."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        return pq.read_table(path).to_pylist()
    try:
        import polars as pl
    except ImportError as exc:
        raise ConfigError(f"reading {path} needs pyarrow or polars (pip install pyarrow). {HOW}") from exc
    return pl.read_parquet(path).to_dicts()


def _question(row: dict[str, Any]) -> dict:
    """A hub row in the JSONL layout the benchmark reads (the same fields; choices as two lists)."""
    choices = row["choices"]
    return {"id": row["id"], "question": row["question"], "question_concept": row.get("question_concept"),
            "choices": {"label": list(choices["label"]), "text": list(choices["text"])},
            "answerKey": row["answerKey"]}
