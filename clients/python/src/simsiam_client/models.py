"""Typed answers of the server's routes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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


def embeddings(d: Dict[str, Any]) -> Embeddings:
    return Embeddings(model=d["model"], dim=d["dim"], embeddings=d["embeddings"])


def classification(d: Dict[str, Any]) -> Classification:
    return Classification(
        model=d["model"],
        results=[[Prediction(**p) for p in r["predictions"]] for r in d["results"]],
    )


def search(d: Dict[str, Any]) -> Search:
    return Search(
        model=d["model"],
        results=[[Neighbor(**n) for n in r["neighbors"]] for r in d["results"]],
    )


def models(d: Dict[str, Any]) -> List[Model]:
    return [Model(**m) for m in d["models"]]
