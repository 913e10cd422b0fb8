"""The page in a real browser: headless Chromium (the system's, driven by Playwright) against the server on
loopback, the tiny model routed to the fake cloud. Each test keeps a screenshot (its path is printed).

Skips only where no Chromium is installed (Debian: ``apt-get install chromium``; or set ``COLLAB_CHROMIUM``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from serverkit import CLOUD_MODEL as CLOUD_MODEL_TEXT
from serverkit import cloud_reply, make_engine

from collab_core.devtools.fakecloud import FakeCloud
from collab_core.server.tokenview import write_html

pytestmark = pytest.mark.browser
CLOUD_BG = "rgb(247, 201, 239)"  # tokenview.css --cloud
STATS = re.compile(r"routed \d+\.\d% of (\d+) tokens · (\d+) cloud calls · \$\d+\.\d{6} · \d+\.\d\d s")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("COLLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (apt-get install chromium, or set COLLAB_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    p = browser.new_page(viewport={"width": 1200, "height": 720})
    yield p
    p.close()


@pytest.fixture()
def slow_cloud():
    """Every span takes a while, so the first tokens reach the page well before the last."""
    with FakeCloud(reply=cloud_reply, latency_s=0.2) as fc:
        yield fc


def keep(page, tmp_path_factory, name: str) -> Path:
    shot = tmp_path_factory.getbasetemp() / "screenshots" / f"{name}.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    return shot


def ask(page, prompt: str, *, budget: str | None = None, max_tokens: int = 24) -> None:
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(max_tokens))
    if budget is not None:
        page.fill("#budget", budget)
    page.click("#send")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)


def test_the_page_streams_the_routed_answer_beside_the_local_one(page, tiny_lm, slow_cloud, serve_engine,
                                                                 tmp_path_factory):
    url = serve_engine(make_engine(tiny_lm, slow_cloud))
    page.goto(url + "/")
    assert page.title() == "collab-decoding"
    page.wait_for_function("document.getElementById('models').textContent.includes('fake')")
    assert "router: scheduled" in page.inner_text("#models")
    assert page.get_attribute("body", "data-state") == "idle"
    # count the routed column's tokens every time it changes: streamed means seen growing, not all at once
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelectorAll('#routed .tok').length))
          .observe(document.getElementById('routed'), {childList: true}); }""")
    ask(page, "What is the capital of France?")
    seen = page.evaluate("window.seen")
    assert 0 < min(n for n in seen if n) < max(seen)

    cloud = page.locator("#routed .tok.cloud")
    assert cloud.count() >= 2
    assert "Paris" in cloud.all_inner_texts()[0]
    assert cloud.first.evaluate("e => getComputedStyle(e).backgroundColor") == CLOUD_BG
    local_tok = page.locator("#routed .tok:not(.cloud)").first
    assert local_tok.evaluate("e => getComputedStyle(e).backgroundColor") != CLOUD_BG

    routed_stats = STATS.fullmatch(page.inner_text("#routed-stats"))
    assert routed_stats and routed_stats.group(1) == "24" and int(routed_stats.group(2)) >= 2

    assert page.locator("#local .tok").count() > 0  # the local-only column filled, with no cloud token
    assert page.locator("#local .tok.cloud").count() == 0
    local_stats = STATS.fullmatch(page.inner_text("#local-stats"))
    assert local_stats and local_stats.groups() == ("24", "0") and "routed 0.0%" in local_stats.group(0)

    local_tok.hover()
    tip = page.locator("#tv-tip")
    assert tip.is_visible() and re.fullmatch(r"local token · confidence \d\.\d{3} · score \d\.\d{3}", tip.inner_text())
    cloud.first.hover()
    assert tip.inner_text().startswith("cloud token")
    shot = keep(page, tmp_path_factory, "page-routed")
    assert shot.stat().st_size > 10_000


def test_the_budget_control_routes_less(page, tiny_lm, fake, serve_engine, tmp_path_factory):
    page.goto(serve_engine(make_engine(tiny_lm, fake)) + "/")
    page.wait_for_function("document.getElementById('models').textContent.includes('fake')")
    ask(page, "What is the capital of France?", budget="0")
    assert page.locator("#routed .tok").count() > 0 and page.locator("#routed .tok.cloud").count() == 0
    assert "· 0 cloud calls ·" in page.inner_text("#routed-stats")
    assert page.inner_text("#routed") == page.inner_text("#local")  # nothing routed: the same answer
    keep(page, tmp_path_factory, "page-budget-0")


def test_an_error_is_shown_not_swallowed(page, tiny_lm, fake, serve_engine):
    page.goto(serve_engine(make_engine(tiny_lm, fake)) + "/")
    ask(page, "What is the capital of France?", max_tokens=10 ** 6)
    assert page.inner_text("#routed-stats").startswith("error: max_tokens must be at most")
    assert page.locator("#routed-stats.error").count() == 1


def test_collab_run_html_draws_the_same_token_view(page, url, tmp_path, tmp_path_factory):
    got = httpx.post(url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}).json()
    record = {"text": got["choices"][0]["message"]["content"], "model": got["model"],
              "tokens": got["collab"]["tokens"], "stats": got["collab"]["stats"]}
    html = write_html(tmp_path / "view.html", record, prompt="What is the capital of France?")
    page.goto(html.as_uri())
    cloud = page.locator("#answer .tok.cloud")
    assert cloud.count() == sum(t["source"] == "cloud" for t in record["tokens"] if t["text"]) > 0
    assert cloud.first.evaluate("e => getComputedStyle(e).backgroundColor") == CLOUD_BG
    assert page.inner_text("#answer") == record["text"]
    assert STATS.fullmatch(page.inner_text("#stats"))
    keep(page, tmp_path_factory, "run-html")


SKY = ("The sky looks blue because of a process called Rayleigh scattering, where sunlight is scattered by the "
       "molecules of the air, and blue light is scattered the most.").split()


def sky_reply(body: dict) -> str:
    """A scripted cloud for the real model: the two words that follow the answer's last words in a reference
    answer (its longest ending found there), or the words at the same count."""
    words = body.get("prompt", "").rsplit("assistant\n", 1)[-1].split()
    at = len(words)
    for k in (3, 2, 1):
        found = [i + k for i in range(len(SKY) - k + 1) if words[-k:] and SKY[i:i + k] == words[-k:]]
        if found:
            at = found[0]
            break
    return " " + " ".join(SKY[at:at + 2]) if at < len(SKY) else "."


@pytest.mark.smollm
def test_the_page_with_the_default_model(page, smollm, serve_engine, tmp_path_factory):
    """The README's screenshot: SmolLM2 answering, a scripted cloud on loopback, a 10% budget from the page's
    control. ``COLLAB_DOCS_SCREENSHOT=docs/serve_page.png`` writes it there as well."""
    from collab_core import Engine

    with FakeCloud(reply=sky_reply, latency_s=0.05) as cloud:
        engine = Engine(smollm, cloud=CLOUD_MODEL_TEXT, api_base=cloud.url, pipeline="sync")
        page.goto(serve_engine(engine) + "/")
        page.wait_for_function("document.getElementById('models').textContent.includes('fake')")
        ask(page, "Explain in one sentence why the sky looks blue.", budget="0.15", max_tokens=64)
    assert page.locator("#routed .tok.cloud").count() > 0 and page.locator("#local .tok").count() > 0
    assert page.locator("#local .tok.cloud").count() == 0
    page.locator("#routed .tok:not(.cloud)").nth(6).hover()
    assert "confidence" in page.inner_text("#tv-tip")
    shot = keep(page, tmp_path_factory, "page-smollm")
    if os.environ.get("COLLAB_DOCS_SCREENSHOT"):
        shutil.copy(shot, os.environ["COLLAB_DOCS_SCREENSHOT"])
