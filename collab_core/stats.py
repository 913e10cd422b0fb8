"""Per-generation statistics: token counts by source, cloud usage and cost, and the time split."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    total_tokens: int = 0  # generated tokens, local + cloud
    cloud_tokens: int = 0  # generated tokens that came from the cloud model
    cloud_calls: int = 0
    cloud_failures: int = 0  # calls that failed or missed the deadline (the local token was used)
    cloud_cache_hits: int = 0
    cloud_spare_tokens: int = 0  # cloud tokens a call sent beyond its span and the router then routed (no call)
    cloud_input_tokens: int = 0  # as billed by the provider
    cloud_output_tokens: int = 0
    cloud_cached_input_tokens: int = 0  # input tokens the provider read from its prompt cache (billed cheaper)
    cloud_cache_write_tokens: int = 0  # input tokens written to the provider's prompt cache (Anthropic)
    cost_usd: float = 0.0  # LiteLLM's cost of the calls, cache pricing included
    cloud_rerouted: int = 0  # retries and fallbacks a LiteLLM Router or proxy made (deployment failures it absorbed)
    cloud_deployments: dict[str, int] = field(default_factory=dict)  # spans per deployment (Router or proxy)
    rollbacks: int = 0  # drafted local tokens discarded because the cloud disagreed
    drafts_kept: int = 0  # spans (async pipeline) whose draft went on after them: decoded while the cloud worked
    branches_adopted: int = 0  # of those, drafted from another local candidate than the routed token (``branches``)
    local_passes: int = 0  # forward passes over the answer's sequence (a feed, a batched round: one); beyond one per
    # token, those drafting threw away and those that fed cloud tokens
    draft_holds: int = 0  # draft passes held back for a reply about to land (``engine/pacing.py``)
    # per span: where the cloud's first token stood among the local model's top-k candidates at the routed
    # position (0 = the local model's own pick, -1 = not among them); None where the span re-spelled a fragment
    cloud_token_ranks: list[int | None] = field(default_factory=list)
    time_total_s: float = 0.0
    time_prefill_s: float = 0.0
    time_local_s: float = 0.0  # local decoding
    time_cloud_wait_s: float = 0.0  # time spent blocked on the cloud
    time_cloud_hidden_s: float = 0.0  # cloud time overlapped with local drafting
    time_spans_s: float = 0.0  # wall time from each routing decision until its span's text is ready
    time_to_first_token_s: float | None = None
    cloud_errors: list[str] = field(default_factory=list)  # one line per failed call (no secrets)
    cloud_disabled_reason: str | None = None  # why the cloud was not used for the rest of the request

    @property
    def local_tokens(self) -> int:
        return self.total_tokens - self.cloud_tokens

    @property
    def routed_share(self) -> float:
        return self.cloud_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def span_wall_s(self) -> float:
        """Mean wall time per routed span (routing decision -> the span's text ready to stream)."""
        n = self.cloud_calls + self.cloud_cache_hits
        return self.time_spans_s / n if n else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        t = self.time_total_s - self.time_prefill_s
        return self.total_tokens / t if t > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(local_tokens=self.local_tokens, routed_share=round(self.routed_share, 6),
                 span_wall_s=round(self.span_wall_s, 6),
                 decode_tokens_per_s=round(self.decode_tokens_per_s, 3))
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6)
        return d

    def summary_line(self) -> str:
        line = (f"{self.total_tokens} tokens, {self.cloud_tokens} from cloud ({self.routed_share:.1%}) "
                f"in {self.cloud_calls} calls")
        if self.cloud_failures:
            line += f", {self.cloud_failures} failed"
        if self.cloud_rerouted:
            line += f", {self.cloud_rerouted} rerouted by LiteLLM"
        if self.cloud_cached_input_tokens:
            line += f", {self.cloud_cached_input_tokens} input tokens from the prompt cache"
        if self.cost_usd:
            line += f", ${self.cost_usd:.6f}"
        ttft = f"{self.time_to_first_token_s:.2f}s" if self.time_to_first_token_s is not None else "-"
        line += (f" | {self.time_total_s:.2f}s total, first token {ttft}, "
                 f"{self.decode_tokens_per_s:.1f} tok/s")
        if self.cloud_calls:
            line += f", cloud wait {self.time_cloud_wait_s:.2f}s"
        if self.cloud_disabled_reason:
            line += f" | cloud off: {self.cloud_disabled_reason}"
        return line
