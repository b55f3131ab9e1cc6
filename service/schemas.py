"""Pydantic models for every request and response: the service's contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

MAX_K = 1000
MAX_BATCH = 10_000
MAX_ID_LENGTH = 256


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


class RecommendQuery(_Strict):
    user_id: RawId
    k: int = Field(10, ge=1, le=MAX_K, description="number of items; clamped to the catalogue")
    exclude_seen: bool = Field(True, description="drop items the user rated in training")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popular"] | None = Field(description="'popular' when the user is unknown")


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
