"""Pydantic models for every request and response: the service's contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

MAX_K = 1000
MAX_BATCH = 10_000
MAX_ID_LENGTH = 256
MAX_LIST = 10_000


def _id_to_str(value: Any) -> Any:
    """Ids may arrive as JSON strings or integers; inside they are strings."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a string or an integer")
    return str(value)


RawId = Annotated[
    str,
    BeforeValidator(_id_to_str),
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


K = Annotated[int, Field(ge=1, le=MAX_K, description="number of items; clamped to what can be returned")]
IdList = Annotated[list[RawId], Field(max_length=MAX_LIST)]


class RecommendQuery(_Strict):
    user_id: RawId
    k: K = 10
    exclude_seen: bool = Field(True, description="drop items the user rated in training")
    exclude: IdList = Field([], description="item ids never to return (repeat the parameter or comma-separate)")
    items: IdList | None = Field(None, description="return only these item ids (repeat or comma-separate)")


class HistoryItem(_Strict):
    item_id: RawId
    rating: float | None = Field(None, allow_inf_nan=False, description="the user's rating, if known")


def _history_entry(value: Any) -> Any:
    """A bare id stands for ``{"item_id": id}``."""
    return {"item_id": value} if isinstance(value, (str, int)) and not isinstance(value, bool) else value


class RecommendHistoryRequest(_Strict):
    """A user the model has not seen, described by the items they interacted with.

    Entries are item ids or ``{"item_id", "rating"}``; either every entry has a rating or none has.
    """

    history: list[Annotated[HistoryItem, BeforeValidator(_history_entry)]] = Field(min_length=1, max_length=MAX_LIST)
    k: K = 10
    exclude: IdList = []
    items: IdList | None = None

    @field_validator("history")
    @classmethod
    def _all_or_no_ratings(cls, history: list[HistoryItem]) -> list[HistoryItem]:
        if len({h.rating is None for h in history}) > 1:
            raise ValueError("give a rating for every item or for none")
        return history


class SimilarQuery(_Strict):
    item_id: RawId
    k: K = 10


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str | None = Field(description="null for a history (fold-in) request")
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popular"] | None = Field(description="'popular' when the user (or history) is unknown")


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class PredictPair(_Strict):
    user_id: RawId
    item_id: RawId


class PredictBatchRequest(_Strict):
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
    rating_scale: tuple[float, float]
    metrics: dict[str, float]
    created_at: str
    data_fingerprint: str
    config: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    reason: str | None = None


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
