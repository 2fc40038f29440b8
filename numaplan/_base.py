"""The pydantic base model shared by every data model that crosses a layer boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """Immutable, strict-shaped pydantic model: unknown fields are rejected, instances hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")
