"""What a generation streams: one ``TokenEvent`` per token, then one ``FinalEvent``; and ``Generation``,
the collected result."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..scoring import Confidence
from ..stats import GenerationStats
from ..tools import Structured, ToolCall


@dataclass
class TokenEvent:
    """One generated token (like mlx-lm's ``GenerationResponse``, one per step)."""

    token: int
    text: str  # text released to the caller with this token ("" while held back for a stop string)
    source: str = "local"  # "local" or "cloud"
    confidence: Confidence | None = None
    score: float | None = None  # routing score (higher = more in need of the cloud)

    def as_dict(self) -> dict:
        d = {"token": self.token, "text": self.text, "source": self.source}
        if self.confidence is not None:
            d["confidence"] = round(self.confidence.max_prob, 6)
            d["entropy"] = round(self.confidence.entropy, 6)
            d["margin"] = round(self.confidence.margin, 6)
        if self.score is not None:
            d["score"] = round(self.score, 6)
        return d


@dataclass
class FinalEvent:
    """The closing event of every stream: no token, any held-back text, why it ended and the stats."""

    text: str
    finish_reason: str  # "stop" or "length"
    stats: GenerationStats
    structured: Structured | None = None  # with tools or a JSON schema: the parsed calls / value


#: What ``Engine.stream`` yields.
Event = TokenEvent | FinalEvent


@dataclass
class Generation:
    text: str
    events: list[TokenEvent]  # one per generated token
    finish_reason: str
    stats: GenerationStats
    model_name: str = ""
    extra: dict = field(default_factory=dict)
    structured: Structured | None = None  # with tools or a JSON schema: the parsed calls / value

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.structured.tool_calls if self.structured is not None else []

    @classmethod
    def from_events(cls, events: list[Event], model_name: str) -> Generation:
        final = events[-1]
        if not isinstance(final, FinalEvent):
            raise ValueError("a stream ends with its FinalEvent")  # pragma: no cover - the engine guarantees it
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        return cls(text="".join(e.text for e in events), events=tokens, finish_reason=final.finish_reason,
                   stats=final.stats, model_name=model_name, structured=final.structured)

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "model": self.model_name,
            "tokens": [e.as_dict() for e in self.events],
            "stats": self.stats.as_dict(),
            **({"structured": self.structured.as_dict()} if self.structured is not None else {}),
        }
