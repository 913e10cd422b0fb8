// The page: one prompt, streamed twice from this server's /v1/chat/completions -- routed, and local only
// (collab.local_only) -- into the token view. Plain JS, no build step. body[data-state] is "idle",
// "streaming" or "done" (browser tests wait on it).
(function () {
  "use strict";
  var TV = window.CollabTokenView;
  var $ = function (id) { return document.getElementById(id); };

  // Read an SSE body chunk by chunk; call onEvent(obj) for every `data:` JSON payload.
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buf = "";
    for (;;) {
      var r = await reader.read();
      if (r.done) break;
      buf += decoder.decode(r.value, { stream: true });
      var cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        var block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        block.split("\n").forEach(function (line) {
          if (line.indexOf("data: ") !== 0) return;
          var data = line.slice(6);
          if (data !== "[DONE]") onEvent(JSON.parse(data));
        });
      }
    }
  }

  async function streamInto(answerEl, statsEl, body) {
    answerEl.textContent = "";
    statsEl.textContent = "…";
    statsEl.classList.remove("error");
    try {
      var res = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!res.ok) {
        var err = await res.json().catch(function () { return {}; });
        throw new Error((err.error && err.error.message) || ("HTTP " + res.status));
      }
      await readEvents(res, function (chunk) {
        var collab = chunk.collab || {};
        (collab.tokens || []).forEach(function (t) { TV.append(answerEl, t); });
        var choice = (chunk.choices || [])[0];
        if (choice && choice.finish_reason && choice.delta && choice.delta.content) {
          TV.appendText(answerEl, choice.delta.content);  // text held back until the end
        }
        if (collab.stats) statsEl.textContent = TV.statsLine(collab.stats);
      });
    } catch (e) {
      statsEl.textContent = "error: " + e.message;
      statsEl.classList.add("error");
    }
  }

  function request(prompt, extra) {
    var body = { model: "collab", messages: [{ role: "user", content: prompt }], stream: true, collab: extra };
    var maxTokens = $("max-tokens").value;
    if (maxTokens) body.max_tokens = parseInt(maxTokens, 10);
    return body;
  }

  async function ask(ev) {
    ev.preventDefault();
    var prompt = $("prompt").value;
    if (!prompt.trim()) return;
    var routed = {};
    var budget = $("budget").value;
    if (budget !== "") routed.budget = parseFloat(budget);
    $("send").disabled = true;
    document.body.dataset.state = "streaming";
    // Both go to the same server; it answers them one after the other, each with its own router.
    await Promise.all([
      streamInto($("routed"), $("routed-stats"), request(prompt, routed)),
      streamInto($("local"), $("local-stats"), request(prompt, { local_only: true })),
    ]);
    $("send").disabled = false;
    document.body.dataset.state = "done";
  }

  async function init() {
    document.body.dataset.state = "idle";
    $("ask").addEventListener("submit", ask);
    try {
      var cfg = await (await fetch("/collab/config")).json();
      $("models").textContent = "local: " + cfg.local_model + " · cloud: " + (cfg.cloud_model || "none") +
        " · router: " + cfg.router;
      if (cfg.budget !== null) $("budget").value = cfg.budget;
      $("budget").placeholder = "server's";
      $("max-tokens").value = cfg.max_tokens;
    } catch (e) {
      $("models").textContent = "";
    }
  }

  init();
})();
