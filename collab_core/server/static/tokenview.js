// The token view: one <span> per token, the cloud's highlighted; hovering one shows its source, confidence and
// routing score. The one renderer of the page (streaming into it) and of `collab run --html` (rendering a whole
// answer at once): both pass it the token records of the API's `collab.tokens` / `collab run --json`.
(function () {
  "use strict";

  function fmt(x, digits) { return typeof x === "number" ? x.toFixed(digits) : "–"; }

  // Local tokens carry the local model's confidence and the routing score; the cloud's carry neither.
  function tipText(tok) {
    if (tok.source === "cloud" && typeof tok.confidence !== "number") return "cloud token · written by the cloud model";
    var who = tok.source === "cloud" ? "cloud" : "local";
    return who + " token · confidence " + fmt(tok.confidence, 3) + " · score " + fmt(tok.score, 3);
  }

  function tip() {
    var el = document.getElementById("tv-tip");
    if (!el) {
      el = document.createElement("div");
      el.id = "tv-tip";
      document.body.appendChild(el);
    }
    return el;
  }

  function onOver(ev) {
    var span = ev.target.closest ? ev.target.closest(".tok") : null;
    var el = tip();
    if (!span || !span.__tok) { el.style.display = "none"; return; }
    el.textContent = tipText(span.__tok);
    var r = span.getBoundingClientRect();
    el.style.left = Math.max(4, r.left) + "px";
    el.style.top = (r.bottom + 6) + "px";
    el.style.display = "block";
  }

  function watch(container) {
    if (container.__tvWatched) return;
    container.__tvWatched = true;
    container.addEventListener("mouseover", onOver);
    container.addEventListener("mouseleave", function () { tip().style.display = "none"; });
  }

  // Append one token record ({text, source, confidence, score, ...}); text held back for a stop string is "".
  function append(container, tok) {
    watch(container);
    if (!tok.text) return null;
    var span = document.createElement("span");
    span.className = tok.source === "cloud" ? "tok cloud" : "tok";
    span.textContent = tok.text;
    span.__tok = tok;
    span.dataset.source = tok.source;
    if (typeof tok.confidence === "number") span.dataset.confidence = String(tok.confidence);
    if (typeof tok.score === "number") span.dataset.score = String(tok.score);
    container.appendChild(span);
    return span;
  }

  // Text with no token of its own (the held-back tail a FinalEvent releases).
  function appendText(container, text) {
    if (text) container.appendChild(document.createTextNode(text));
  }

  // The stats line: routed share, calls, cost, time (GenerationStats.as_dict()).
  function statsLine(s) {
    var share = (100 * (s.routed_share || 0)).toFixed(1);
    var line = "routed " + share + "% of " + s.total_tokens + " tokens · " + s.cloud_calls + " cloud calls";
    if (s.cloud_failures) line += " (" + s.cloud_failures + " failed)";
    return line + " · $" + (s.cost_usd || 0).toFixed(6) + " · " + (s.time_total_s || 0).toFixed(2) + " s";
  }

  // A whole answer at once (`collab run --html`): {tokens: [...], text, stats}.
  function render(container, statsEl, gen) {
    container.textContent = "";
    var shown = "";
    (gen.tokens || []).forEach(function (t) { append(container, t); shown += t.text || ""; });
    if (gen.text && gen.text.length > shown.length && gen.text.indexOf(shown) === 0) {
      appendText(container, gen.text.slice(shown.length));
    }
    if (statsEl && gen.stats) statsEl.textContent = statsLine(gen.stats);
  }

  window.CollabTokenView = { append: append, appendText: appendText, statsLine: statsLine, render: render,
                             tipText: tipText };
})();
