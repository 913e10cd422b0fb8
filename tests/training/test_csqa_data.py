"""CommonsenseQA comes from ``--data`` (a file, or the Hugging Face hub), never from outside the repository; without
it, the benchmark and ``collab router collect`` say how to get it. No test reaches the hub: the download is
replaced by a parquet file written here, or by the error an offline machine gets."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from collab_core.cli import main
from collab_core.errors import ConfigError
from collab_core.training import csqa_data
from collab_core.training.csqa import load_questions
from collab_core.training.csqa_data import HUB_REPO, data_path

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"id": "q1", "question": "Where do you keep plates?", "question_concept": "plates",
         "choices": {"label": ["A", "B", "C", "D", "E"],
                     "text": ["cupboard", "table", "restaurant", "dishwasher", "market"]}, "answerKey": "A"},
        {"id": "q2", "question": "What do you wear on your feet?", "question_concept": "feet",
         "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["hat", "shoes", "gloves", "scarf", "belt"]},
         "answerKey": "B"}]


@pytest.fixture()
def no_datasets(monkeypatch):
    """As here: the datasets library is not installed, so the hub is reached through huggingface_hub."""
    monkeypatch.setitem(sys.modules, "datasets", None)


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_data_says_how_to_get_it(tmp_path):
    for spec in (None, ""):
        with pytest.raises(ConfigError, match="hf:validation") as err:
            data_path(spec)
        assert "README" in str(err.value) and "FILE.jsonl" in str(err.value)
    with pytest.raises(ConfigError, match="no such file"):
        data_path(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="split 'test'"):  # no answers there
        data_path("hf:test")
    f = tmp_path / "q.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert data_path(str(f)) == f


def test_the_hub_split_is_downloaded_and_converted_once(tmp_path, monkeypatch, no_datasets):
    import huggingface_hub
    import polars as pl

    parquet = tmp_path / "validation.parquet"
    pl.DataFrame(ROWS).write_parquet(parquet)
    calls = []

    def download(repo_id, filename, *, repo_type=None, **kw):
        calls.append((repo_id, filename, repo_type))
        return str(parquet)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # polars reads it when pyarrow is absent
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = data_path("hf:validation")
    assert calls == [(HUB_REPO, "data/validation-00000-of-00001.parquet", "dataset")]
    assert path == tmp_path / "cache" / "data" / "commonsense_qa-validation.jsonl"
    assert sorted(load_questions(path), key=lambda q: q["id"]) == ROWS
    assert data_path("hf:validation") == path and len(calls) == 1  # converted once, then read from the cache


def test_an_unreachable_hub_is_a_config_error_that_says_how(tmp_path, monkeypatch, no_datasets):
    import huggingface_hub

    def offline(*a, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="could not download tau/commonsense_qa .train.") as err:
        data_path("hf:train")
    assert "--data FILE.jsonl" in str(err.value) and not (tmp_path / "data").exists()


def test_the_datasets_library_is_used_when_installed(tmp_path, monkeypatch):
    class Datasets:
        @staticmethod
        def load_dataset(repo, split):
            assert (repo, split) == (HUB_REPO, "train")
            return iter(ROWS)

    monkeypatch.setitem(sys.modules, "datasets", Datasets)
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    assert load_questions(data_path("hf:train"), seed=0) == load_questions(data_path("hf:train"), seed=0)
    assert {q["id"] for q in load_questions(data_path("hf:train"))} == {"q1", "q2"}


def test_router_collect_without_data_says_how_before_loading_a_model(capsys):
    assert main(["router", "collect", "--local-model", "/no/such/model"]) == 2  # the data is checked first
    err = capsys.readouterr().err
    assert "no training prompts given" in err and "hf:train" in err


@pytest.mark.parametrize("name", ["csqa", "chat_protocols"])
def test_the_benchmarks_want_their_data(name, monkeypatch):
    bench = _benchmark(name)
    monkeypatch.setattr(sys, "argv", [name])
    with pytest.raises(ConfigError, match="--data"):
        bench.main()
    assert '"shared"' not in (ROOT / "benchmarks" / f"{name}.py").read_text()  # no path outside the clone


def test_csqa_calibrates_on_the_training_split_of_the_hub(tmp_path):
    import argparse

    bench = _benchmark("csqa_modes")  # where csqa.py chooses its calibration data
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(ROWS[0]) + "\n")
    assert bench.train_data(argparse.Namespace(train_data=str(f), data_spec="dev.jsonl")) == f
    with pytest.raises(ConfigError, match="calibration questions"):
        bench.train_data(argparse.Namespace(train_data=None, data_spec="dev.jsonl"))
    with pytest.raises(ConfigError, match="split 'bogus'"):  # hf:train is what it would have asked for
        csqa_data.hub_jsonl("bogus")
