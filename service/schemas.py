"""Pydantic models for every request and response: the service's contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    field_serializer,
    field_validator,
)

from model.raw import MAX_ID_LENGTH  # one limit for the ids a model is trained on and the ids asked for

MAX_K = 1000
MAX_BATCH = 10_000
MAX_LIST = 10_000
# exclude=/items= in a GET query: the query string must stay within about 32 KiB (uWSGI carries it twice in its
# 64 KiB buffer, uwsgi.ini), so a query list cannot hold 10,000 ids; 1,000 short ones fit.
MAX_QUERY_LIST = 1_000


def _id_to_str(value: Any) -> Any:
    """Ids may arrive as JSON strings or integers; inside they are strings."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a string or an integer")
    return str(value)


# What the document says an id is: what _id_to_str accepts (pydantic would document only the string).
ID_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}, {"type": "integer"}]}

RawId = Annotated[
    str,
    BeforeValidator(_id_to_str),
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    WithJsonSchema(ID_SCHEMA, mode="validation"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Body(_Strict):
    """A JSON body: types as JSON has them, no coercion (``"5"`` or ``true`` is not a number).

    Query models stay lax: every query value arrives as a string."""

    model_config = ConfigDict(extra="forbid", strict=True)


K = Annotated[int, Field(ge=1, le=MAX_K, description="number of items; clamped to what can be returned")]


def _integral(value: Any) -> Any:
    """JSON Schema's integer includes 1.0; strings and booleans stay invalid (strict body models)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


BodyK = Annotated[K, BeforeValidator(_integral)]
IdList = Annotated[list[RawId], Field(max_length=MAX_LIST)]
QueryIdList = Annotated[list[RawId], Field(max_length=MAX_QUERY_LIST)]


MAX_FILTERS = 32
FILTER_DESCRIPTION = (
    "keep only items with this attribute value, as attribute:value (e.g. genres:Comedy); repeat it for more: "
    "all must hold, and a list attribute holds a value when any of its values equals it. Applied before the top-k"
)
QueryFilter = Annotated[str, StringConstraints(pattern=r"^[^:]+:", max_length=1100)]
QueryFilterList = Annotated[list[QueryFilter], Field(max_length=MAX_FILTERS, description=FILTER_DESCRIPTION)]
FilterValue = Annotated[str, BeforeValidator(_id_to_str), StringConstraints(max_length=1024)]


def _at_most_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """As many conditions as GET allows (``MAX_FILTERS`` in all): each value is one condition over the catalogue,
    and a body of 2,000,000 values cost 2.5 s at 500 items, minutes at a million (found by a security review)."""
    total = sum(len(v) if isinstance(v, list) else 1 for v in filters.values())
    if total > MAX_FILTERS:
        raise ValueError(f"should have at most {MAX_FILTERS} values in all, not {total}")
    return filters


BodyFilter = Annotated[
    dict[str, FilterValue | Annotated[list[FilterValue], Field(max_length=MAX_FILTERS)]],
    Field(
        max_length=MAX_FILTERS,
        description="{attribute: value or [values]}: every value must hold (see GET); "
        f"at most {MAX_FILTERS} values in all",
    ),
    AfterValidator(_at_most_filters),
]


def empty_list(description: str | None = None) -> Any:
    """A list field that defaults to ``[]``: built fresh per request (pydantic deep-copies a literal ``[]``
    default on every validation, which was most of a GET's validation time) and still documented as ``[]``."""
    described = {} if description is None else {"description": description}  # else the type's own, if any
    return Field(default_factory=list, json_schema_extra={"default": []}, **described)


EXPLAIN = "add to each item the user's history items that contributed most to its score, with their share"


def parse_filters(entries: list[str] | dict[str, Any] | None) -> dict[str, list[str]]:
    """``["genres:Comedy", "year:1995"]`` or ``{"genres": "Comedy", "year": [1995]}`` as {attribute: [values]}."""
    out: dict[str, list[str]] = {}
    if isinstance(entries, dict):
        for name, values in entries.items():
            out.setdefault(name, []).extend(values if isinstance(values, list) else [values])
    for entry in entries if isinstance(entries, list) else ():
        name, value = entry.split(":", 1)
        out.setdefault(name, []).append(value)
    return out


class RecommendQuery(_Strict):
    user_id: RawId
    k: K = 10
    exclude_seen: bool = Field(True, description="drop items the user rated in training")
    exclude: QueryIdList = empty_list("item ids never to return (repeat the parameter or comma-separate)")
    items: QueryIdList | None = Field(None, description="return only these item ids (repeat or comma-separate)")
    filter: QueryFilterList = empty_list()
    explain: bool = Field(False, description=EXPLAIN)

    def filters(self) -> dict[str, list[str]]:
        return parse_filters(self.filter)


class HistoryItem(_Body):
    item_id: RawId
    rating: float | None = Field(None, allow_inf_nan=False, description="the user's rating, if known")


def _history_entry(value: Any) -> Any:
    """A bare id stands for ``{"item_id": id}``."""
    return {"item_id": value} if isinstance(value, (str, int)) and not isinstance(value, bool) else value


def _bare_ids(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """The common history, a list of bare ids, as a list of id strings without a model per entry: a body with 50
    ids took 76 us to validate through ``HistoryItem`` objects, 14 us this way. The same rules as the general path
    (strings of 1 to ``MAX_ID_LENGTH`` characters or integers, 1 to ``MAX_LIST`` entries); anything else goes to
    ``handler``, which validates every entry and names the one that fails."""
    if type(value) is list and 0 < len(value) <= MAX_LIST:
        try:
            ids = [v if type(v) is str else str(v) if type(v) is int else "" for v in value]
        except ValueError:  # an integer past Python's digit limit: the general path names the entry
            return handler(value)
        if all(0 < len(i) <= MAX_ID_LENGTH for i in ids):
            return ids
    return handler(value)


# The history's entries as the general path validates them (each a HistoryItem); :func:`_bare_ids` takes the
# common case, a list of bare ids, past it.
HistoryEntries = Annotated[
    list[Annotated[HistoryItem, BeforeValidator(_history_entry)]], Field(min_length=1, max_length=MAX_LIST)
]


def _history_schema() -> dict[str, Any]:
    """The history's documented shape, all-or-none ratings included: a list of bare ids or of objects without
    a rating, or a list of objects that all have one (the validator below enforces the same)."""
    unrated = {
        "type": "object", "additionalProperties": False, "required": ["item_id"],
        "properties": {"item_id": ID_SCHEMA, "rating": {"type": "null"}},
    }  # fmt: skip
    rated = {
        "type": "object", "additionalProperties": False, "required": ["item_id", "rating"],
        "properties": {"item_id": ID_SCHEMA, "rating": {"type": "number"}},
    }  # fmt: skip
    sizes = {"type": "array", "minItems": 1, "maxItems": MAX_LIST}
    return {
        "anyOf": [{**sizes, "items": {"anyOf": [*ID_SCHEMA["anyOf"], unrated]}}, {**sizes, "items": rated}],
        "description": "item ids (or {item_id}), or {item_id, rating} objects: a rating for every item or none",
    }


class RecommendHistoryRequest(_Body):
    """A user the model has not seen, described by the items they interacted with.

    Entries are item ids or ``{"item_id", "rating"}``; either every entry has a rating or none has.
    """

    # Bare ids stay strings (see _bare_ids), objects are HistoryItems: read it through item_ids() and ratings().
    history: Annotated[HistoryEntries, WrapValidator(_bare_ids), WithJsonSchema(_history_schema(), mode="validation")]
    k: BodyK = 10
    exclude: IdList = empty_list()
    items: IdList | None = None
    filter: BodyFilter | None = None
    explain: bool = Field(False, description=EXPLAIN)

    def filters(self) -> dict[str, list[str]]:
        return parse_filters(self.filter)

    def item_ids(self) -> list[str]:
        """The history's item ids, oldest first (``history`` holds bare ids as strings, objects as ``HistoryItem``)."""
        return [h if type(h) is str else h.item_id for h in self.history]

    def ratings(self) -> list[float] | None:
        """The history's ratings in the same order, or None when it has none."""
        first = self.history[0]
        return None if type(first) is str or first.rating is None else [h.rating for h in self.history]

    @field_validator("history")
    @classmethod
    def _all_or_no_ratings(cls, history: list[HistoryItem | str]) -> list[HistoryItem | str]:
        if len({type(h) is str or h.rating is None for h in history}) > 1:
            raise ValueError("give a rating for every item or for none")
        return history

    @field_serializer("history")
    def _history_out(self, history: list[HistoryItem | str]) -> list[Any]:
        return [h if type(h) is str else h.model_dump() for h in history]


class SimilarQuery(_Strict):
    item_id: RawId
    k: K = 10
    filter: QueryFilterList = empty_list()

    def filters(self) -> dict[str, list[str]]:
        return parse_filters(self.filter)


ATTRIBUTES = "the item's metadata (scripts/train.py --items): {name: value or [values]}; {} without"


class Contribution(BaseModel):
    item_id: str = Field(description="a history item")
    share: float = Field(description="its contribution over the sum of the whole history's (see README)")
    attributes: dict[str, Any] = Field(description=ATTRIBUTES)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    attributes: dict[str, Any] = Field(description=ATTRIBUTES)
    explanation: list[Contribution] | None = Field(
        None, description="with explain=true: the history items that contributed most, largest first"
    )


class RecommendResponse(BaseModel):
    user_id: str | None = Field(description="null for a history (fold-in) request")
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popular"] | None = Field(description="'popular' when the user (or history) is unknown")


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class PredictPair(_Body):
    user_id: RawId
    item_id: RawId


class PredictBatchRequest(_Body):
    pairs: list[PredictPair] = Field(min_length=1, max_length=MAX_BATCH)


class Prediction(BaseModel):
    user_id: str
    item_id: str
    rating: float
    fallback: Literal["baseline"] | None = Field(description="'baseline' when the user or item is unknown")


class PredictResponse(Prediction):
    model_version: str


class PredictBatchResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str


class ModelInfo(BaseModel):
    model_version: str
    kind: str
    num_users: int
    num_items: int
    dim: int
    # A list of two, not tuple[float, float]: a tuple becomes ``prefixItems``, which some OpenAPI tools
    # (schemathesis among them) rewrite into the pre-3.1 array form of ``items`` and then reject.
    rating_scale: list[float] = Field(min_length=2, max_length=2, description="[lowest, highest] training rating")
    metrics: dict[str, float]
    created_at: str
    data_fingerprint: str
    config: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    reason: str | None = None  # why not ready
    # Ready, but the file now behind RECSYS_CHECKPOINT was refused (the model served is the one before it): why.
    reload_refused: str | None = None


class ErrorDetail(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
