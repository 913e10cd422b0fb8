"""The cloud leg: a short continuation span from any LiteLLM model string, Router or proxy.

* ``client`` -- ``CloudConfig`` and ``CloudClient``: request building around the strategy (the stable prefix
  first, Anthropic ``cache_control`` markers), retries (tenacity), parsing, usage and cost (cached tokens,
  cache pricing);
* ``strategy`` -- the ``Strategy`` interface (how a request is built, how the reply is read, what goes into the
  cache key, when a span ends the answer), ``SpanRequest``, and the check that a chat reply continues the answer;
* ``strategies`` -- the built-in strategies and the registry by name (``register`` adds your own), ``CloudSpan``;
* ``protocols`` -- continuing an answer on a chat-only model: how it is asked, and aligning the reply;
* ``providers`` -- what LiteLLM knows of a model string: provider, the strategy ``auto`` picks, key variable;
* ``prompt_cache`` -- the providers' prompt caches: the stable-prefix marker, cached tokens in the usage;
* ``deployments`` -- a LiteLLM Router (object or router config file) or proxy as the cloud: who retries, which
  deployment answered;
* ``redact`` -- the redaction hook over everything sent, placeholders restored in the spans;
* ``cache`` -- ``SpanCache``: identical span requests answered without a call (memory LRU, optional SQLite);
* ``leg`` -- ``CloudLeg``: one generation's use of the cloud: cache lookup and store, submission, deadline
  waiting, failure counting, the breaker and the money limits (the engine and the trace collector both go
  through it);
* ``lite`` -- LiteLLM, imported offline and quiet.
"""
