"""Shared pieces of the scenario models: the frozen base class and unit-bearing field types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..units import parse_batch_tokens, parse_count, parse_duration_s, parse_gbit_s


class Spec(BaseModel):
    """Base of every scenario model: immutable, unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


#: Seconds, from a number or a string such as "30min", "6h", "54d".
DurationS = Annotated[float, BeforeValidator(parse_duration_s)]
#: A count such as tokens, from a number or a string such as "16M", "2.0e12".
Count = Annotated[float, BeforeValidator(parse_count)]
#: A network rate in Gb/s, from a number or a string such as "400Gb/s".
#: Tokens per optimizer step: '16M' means 2**24 (binary suffixes, as batch sizes are quoted).
BatchTokens = Annotated[float, BeforeValidator(parse_batch_tokens)]
GbitS = Annotated[float, BeforeValidator(parse_gbit_s)]

PositiveDurationS = Annotated[DurationS, Field(gt=0)]
NonNegativeDurationS = Annotated[DurationS, Field(ge=0)]


def located(path: str, message: str) -> ValueError:
    """A ValueError whose message leads with the field path (pydantic keeps the text; the loader
    reports it at that path rather than at the model that raised it)."""
    return ValueError(f"[{path}] {message}")
