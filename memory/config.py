"""The δ-mem configuration: one frozen dataclass, validated at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeltaMemConfig", "DEFAULT_STORES", "WRITE_STRATEGIES"]

DEFAULT_STORES = ("conventions", "debug", "edits")
WRITE_STRATEGIES = ("token", "segment")


@dataclass(frozen=True)
class DeltaMemConfig:
    """How δ-mem is attached to a model and how it writes.

    TSW is ``write="token"`` with one state head; SSW is ``write="segment"``; MSW is
    ``state_heads > 1``. The paper's released adapter is rank 8, α 16, TSW.
    """

    rank: int = 8
    """r: the state of every head and layer is r×r."""
    alpha: float = 16.0
    """Corrections are scaled by α / r."""
    state_heads: int = 1
    """h: independent r×r states per layer, each with its own gates (MSW when > 1)."""
    write: str = "token"
    """"token": every written token updates the state; "segment": each segment is written
    once, as the mean of its tokens' inputs."""
    stores: tuple[str, ...] = field(default=DEFAULT_STORES)
    """Named states that share the adapter weights. A write updates one; a read sums all."""
    chunk_size: int = 8
    """Tokens per chunk in the fast path (a speed setting; results do not depend on it)."""
    beta_bias_init: float = -1.5
    """Initial bβ: β = sigmoid(-1.5) ≈ 0.18 before training."""
    delta_init_scale: float = 0.05
    """W_dq and W_do start as the base projections' first r input columns, unit-normalised, times this."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"DeltaMemConfig.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.rank, int) or self.rank < 1:
            raise bad("rank", "must be a positive integer")
        if not self.alpha > 0:
            raise bad("alpha", "must be positive")
        if not isinstance(self.state_heads, int) or self.state_heads < 1:
            raise bad("state_heads", "must be a positive integer")
        if self.write not in WRITE_STRATEGIES:
            raise bad("write", f"must be one of {', '.join(WRITE_STRATEGIES)}")
        object.__setattr__(self, "stores", tuple(self.stores))
        if not self.stores or len(set(self.stores)) != len(self.stores):
            raise bad("stores", "must name at least one store, each once")
        if not all(isinstance(s, str) and s.isidentifier() for s in self.stores):
            raise bad("stores", "names must be identifiers (letters, digits, underscores)")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise bad("chunk_size", "must be a positive integer")

    @property
    def scaling(self) -> float:
        """s = α / r, the scale of both corrections."""
        return self.alpha / self.rank

    @property
    def width(self) -> int:
        """h·r: the width of the memory projections and of the concatenated reads."""
        return self.state_heads * self.rank

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stores"] = list(self.stores)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeltaMemConfig:
        """Build from a saved dict; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown δ-mem config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> DeltaMemConfig:
        return dataclasses.replace(self, **changes)
