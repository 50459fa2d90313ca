"""The JSON of `bearrec serve`: its request and answer models (pydantic: they are also the OpenAPI spec's schemas),
and a validation error said in one line."""

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Error(BaseModel):
    detail: str = Field(description="what is wrong, in one line")


class Item(BaseModel):
    id: str
    title: str


class RecommendedItem(Item):
    rank: int = Field(description="1 = best")
    score: float = Field(description="log p of the title + EOS (beam, exact) or the latent similarity (latent)")


class Recommendations(BaseModel):
    items: list[RecommendedItem]
    k: int
    decoder: str
    score: str = Field(description="what the scores are")
    scoring: str = Field(description="step scoring of beam and exact: full or masked")
    exclude_history: bool
    history: list[str] = Field(description="the history's item ids, oldest first")
    history_used: int = Field(description="most recent history items the prompt holds")
    certified: Optional[bool] = Field(None, description="exact decoder: False if the node budget ran out before "
                                                        "the list was proven exact")
    warnings: list[str]


class SearchResult(BaseModel):
    items: list[Item]


class BatchingStats(BaseModel):
    enabled: bool
    wait_ms: float
    max_batch: int
    requests: int = Field(description="requests decoded since start-up")
    batches: int
    largest_batch: int
    batch_sizes: dict[str, int] = Field(description="requests per batch -> batches")
    decoder_calls: dict[str, int] = Field(description="requests per decoder call -> calls (a batch is split by "
                                                      "decoder and search width)")


class Health(BaseModel):
    status: Literal["ok"]
    run: str
    items: int
    decoders: list[str]
    beam_width: int
    scoring: str
    length_penalty: float
    exclude_history: bool
    max_history: int
    latent_memory: dict[str, float] = Field(description="latent decoder: memory_built, memory_seconds, "
                                                        "memory_examples, items_without_memory (ranked last)")
    batching: BatchingStats


def _integral(value):
    """JSON Schema counts 8.0 as an integer: accept it as 8 (other types stay strict: "8" or true are refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def recommend_request(decoders: tuple[str, ...], default_decoder: str, width: int, max_history: int,
                      default_exclude: bool, examples: list[str]) -> type[BaseModel]:
    """The body of ``POST /recommend`` on one server: its ``decoders``, beam ``width`` (the largest k), history
    length limit and default ``exclude_history`` (``default_exclude``); ``examples``: item ids for the spec."""

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True,
                                  json_schema_extra={"examples": [{"history": examples, "k": min(10, width)}]})

        history: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(
            min_length=1, max_length=max_history,
            description="item ids or exact titles the user interacted with, oldest first")
        k: Annotated[int, BeforeValidator(_integral)] = Field(min(10, width), ge=1, le=width,
                                                               description="how many items (at most the beam width)")
        decoder: Literal[decoders] = Field(default_decoder,
                                           description="beam: constrained beam search; exact: the k most probable "
                                                       "items; latent: L2D latent-space matching")
        exclude_history: bool = Field(default_exclude, description="never recommend an item of the history")

    return RecommendRequest


def explain(error: dict, beam_width: int, max_history: int) -> str:
    """One pydantic/FastAPI validation error as ``field: what is wrong``."""
    loc = [part for part in error.get("loc", ()) if part not in ("body", "query")]
    kind, message = error.get("type", ""), error.get("msg", "invalid")
    if kind == "json_invalid":
        return f"body: not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    if loc == ["k"]:
        return f"k: {message} (k is 1 to {beam_width}, the server's beam width), got {error.get('input')!r}"
    if loc == ["history"] and kind == "too_short":
        return "history: empty; give at least one item id or title, oldest first"
    if loc == ["history"] and kind == "too_long":
        return f"history: more than {max_history} items, the server's --max-history"
    name = ".".join(str(part) for part in loc) or "body"
    if len(loc) >= 2 and loc[0] == "history" and isinstance(loc[1], int):
        name = f"history item {loc[1] + 1}"
    return f"{name}: {message}"
