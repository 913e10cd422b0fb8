"""The cloud leg: a short continuation span from any LiteLLM model string, Router or proxy.

* ``client`` -- ``CloudClient``: strategies per provider, request shaping (the stable prefix first, Anthropic
  ``cache_control`` markers), retries (tenacity), parsing, usage and cost (cached tokens, cache pricing);
* ``deployments`` -- a LiteLLM Router (object or router config file) or proxy as the cloud: who retries, which
  deployment answered;
* ``redact`` -- the redaction hook over everything sent, placeholders restored in the spans;
* ``cache`` -- ``SpanCache``: identical span requests answered without a call (memory LRU, optional SQLite);
* ``leg`` -- ``CloudLeg``: one generation's use of the cloud: cache lookup and store, submission, deadline
  waiting, failure counting, the breaker and the money limits (the engine and the trace collector both go
  through it);
* ``protocols`` -- continuing an answer on a chat-only model: how it is asked, and aligning the reply;
* ``lite`` -- LiteLLM, imported offline and quiet.
"""
