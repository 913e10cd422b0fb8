"""The cloud leg: a short continuation span from any LiteLLM model string.

* ``client`` -- ``CloudClient``: strategies per provider, request shaping, retries (tenacity), parsing;
* ``cache`` -- ``SpanCache``: identical span requests answered without a call (memory LRU, optional SQLite);
* ``leg`` -- ``CloudLeg``: one generation's use of the cloud: cache lookup and store, submission, deadline
  waiting, failure counting and the breaker (the engine and the trace collector both go through it);
* ``protocols`` -- continuing an answer on a chat-only model: how it is asked, and aligning the reply.
"""
