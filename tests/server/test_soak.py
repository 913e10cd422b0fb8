"""The soak run (``benchmarks/soak.py``) at 40 requests against ``collab serve`` on the tiny model: streams and
plain requests, clients leaving, a cloud failing (5xx, hangs, garbage) as a hash of each call decides. No request
may be stuck, and every completed answer must equal its solo run. No timing is asserted."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("soak", Path(__file__).parent.parent.parent / "benchmarks" / "soak.py")
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)


def test_forty_requests_none_stuck_every_answer_its_solo_run(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    out = soak.soak(requests=40, concurrency=8, tokens=12, local_model=str(tiny_dir), warmup=2, stuck_s=120)
    assert out["completed"] + out["cancelled"] + out["failed"] == 40
    assert out["stuck"] == [] and out["failed"] == 0, out["failures"]
    assert out["completed"] > 0 and out["cancelled"] > 0 and out["cloud_calls"] > 0
    assert out["identical"], out["mismatched"]
