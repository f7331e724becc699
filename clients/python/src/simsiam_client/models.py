"""Typed answers of the server's routes."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Type, TypeVar

T = TypeVar("T")


def of(cls: Type[T], d: Dict[str, Any]) -> T:
    """`cls` from an answer's fields, ignoring those it does not know: a newer server may
    add fields without breaking older clients."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Embeddings:
    """`POST /v1/embed`: one unit-length vector per image."""

    model: str
    dim: int
    embeddings: List[List[float]]


@dataclass
class Prediction:
    breed: str
    probability: float


@dataclass
class Classification:
    """`POST /v1/classify`: per image, breeds ranked by probability."""

    model: str
    results: List[List[Prediction]]


@dataclass
class Neighbor:
    id: str
    score: float
    breed: Optional[str] = None
    source: Optional[str] = None
    metadata: Any = None


@dataclass
class Search:
    """`POST /v1/search`: per query, its nearest gallery entries (cosine, best first)."""

    model: str
    results: List[List[Neighbor]]


@dataclass
class Added:
    """`POST /v1/gallery`."""

    added: int
    ids: List[str]
    total: int


@dataclass
class Deleted:
    """`DELETE /v1/gallery/{id}`."""

    deleted: str
    total: int


@dataclass
class GalleryCounts:
    """`GET /v1/gallery`."""

    total: int
    dim: int
    by_breed: Dict[str, int] = field(default_factory=dict)


@dataclass
class Model:
    """One entry of `GET /v1/models`."""

    id: str
    provider: str
    breeds: List[str]
    manifest: Dict[str, Any]
    dim: int = 0


@dataclass
class Limits:
    """What a request may hold (`GET /v1/models`), to size requests by."""

    max_images: int
    max_body_bytes: int
    max_pixels: int
    max_k: int
    request_timeout_s: int
    fetch_urls: bool = False


@dataclass
class Info:
    """`GET /v1/models` whole: the models, the limits, the batching settings."""

    models: List[Model]
    limits: Limits
    batching: Dict[str, int] = field(default_factory=dict)


def embeddings(d: Dict[str, Any]) -> Embeddings:
    return Embeddings(model=d["model"], dim=d["dim"], embeddings=d["embeddings"])


def classification(d: Dict[str, Any]) -> Classification:
    return Classification(
        model=d["model"],
        results=[[of(Prediction, p) for p in r["predictions"]] for r in d["results"]],
    )


def search(d: Dict[str, Any]) -> Search:
    return Search(
        model=d["model"],
        results=[[of(Neighbor, n) for n in r["neighbors"]] for r in d["results"]],
    )


def models(d: Dict[str, Any]) -> List[Model]:
    return [of(Model, m) for m in d["models"]]


def info(d: Dict[str, Any]) -> Info:
    return Info(models=models(d), limits=of(Limits, d["limits"]), batching=d.get("batching", {}))
