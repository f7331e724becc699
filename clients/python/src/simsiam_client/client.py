"""`Client` and `AsyncClient`: every route of the server, with retries.

Both build the same requests (`_Requests`) and read the same answers; they differ only
in how they wait. A 503 (the server's queue is full, or it is shutting down) is retried
after the server's `Retry-After`, or an exponential backoff when it gives none; a
connection that fails is retried for requests without side effects. Other errors raise
`SimsiamError` at once.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import httpx

from . import models
from ._images import ImageLike, to_bytes
from .errors import ConnectionFailed, InsufficientStorage, SimsiamError

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class Call:
    """One request, as both clients send it."""

    method: str
    path: str
    files: Optional[List[Any]] = None
    data: Optional[Dict[str, Any]] = None
    json: Optional[Dict[str, Any]] = None
    params: Optional[Dict[str, Any]] = None
    #: Safe to send again after a failed connection (no side effect, or an idempotent one).
    replayable: bool = True


def _images(images: Iterable[ImageLike]) -> List[Any]:
    out = [("images", (f"image{i}", to_bytes(img), "application/octet-stream")) for i, img in enumerate(images)]
    if not out:
        raise ValueError("no images")
    return out


class _Requests:
    """The requests of every route."""

    @staticmethod
    def embed(images: Iterable[ImageLike]) -> Call:
        return Call("POST", "/v1/embed", files=_images(images))

    @staticmethod
    def classify(images: Iterable[ImageLike], top_k: int) -> Call:
        return Call("POST", "/v1/classify", files=_images(images), data={"top_k": str(top_k)})

    @staticmethod
    def search(
        images: Optional[Iterable[ImageLike]],
        vectors: Optional[Sequence[Sequence[float]]],
        k: int,
        breed: Optional[str],
    ) -> Call:
        if (images is None) == (vectors is None):
            raise ValueError("give images or vectors, not both")
        if vectors is not None:
            body: Dict[str, Any] = {"vectors": [list(v) for v in vectors], "k": k}
            if breed is not None:
                body["breed"] = breed
            return Call("POST", "/v1/search", json=body)
        data = {"k": str(k)}
        if breed is not None:
            data["breed"] = breed
        return Call("POST", "/v1/search", files=_images(images or []), data=data)

    @staticmethod
    def add(
        images: Sequence[ImageLike],
        ids: Sequence[str],
        breeds: Optional[Sequence[str]],
        sources: Optional[Sequence[str]],
        metadata: Any,
    ) -> Call:
        files = _images(images)
        files += [("ids", (None, i)) for i in ids]
        files += [("breeds", (None, b)) for b in breeds or []]
        files += [("sources", (None, s)) for s in sources or []]
        if metadata is not None:
            files.append(("metadata", (None, json.dumps(metadata))))
        # Replacing entries by id is idempotent: a replayed add changes nothing more.
        return Call("POST", "/v1/gallery", files=files)

    @staticmethod
    def delete(id: str) -> Call:
        return Call("DELETE", "/v1/gallery/" + id, replayable=False)

    @staticmethod
    def embeddings(input: Any, model: str, encoding_format: str) -> Call:
        return Call(
            "POST",
            "/v1/embeddings",
            json={"model": model, "input": input, "encoding_format": encoding_format},
        )


def _error(response: httpx.Response) -> SimsiamError:
    kind = InsufficientStorage if response.status_code == 507 else SimsiamError
    try:
        e = response.json()["error"]
        return kind(response.status_code, e["code"], e["message"], e.get("type"), e.get("param"))
    except (ValueError, KeyError, TypeError):
        return kind(response.status_code, "http_error", response.reason_phrase)


class _Policy:
    """When to try again, and how long to wait before."""

    def __init__(self, retries: int, backoff: float) -> None:
        self.retries, self.backoff = retries, backoff
        #: Requests sent again so far (for logs and tests).
        self.retried = 0

    def wait(self, attempt: int, response: Optional[httpx.Response]) -> Optional[float]:
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if attempt >= self.retries:
            return None
        self.retried += 1
        after = response.headers.get("retry-after") if response is not None else None
        if after is not None:
            try:
                return max(0.0, float(after))
            except ValueError:
                pass
        return self.backoff * (2**attempt) * (0.5 + random.random() / 2)


class _Base:
    def __init__(
        self,
        url: str,
        api_key: Optional[str],
        timeout: float,
        retries: int,
        backoff: float,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.policy = _Policy(retries, backoff)

    @property
    def retried(self) -> int:
        """How many requests were sent again after a 503 or a failed connection."""
        return self.policy.retried

    def _decide(self, call: Call, attempt: int, response: Optional[httpx.Response], failure: Optional[Exception]):
        """(result, None) when done, or (None, seconds) to wait and retry."""
        if failure is not None:
            wait = self.policy.wait(attempt, None) if call.replayable else None
            if wait is None:
                raise ConnectionFailed(f"{call.method} {self.url}{call.path}: {failure}") from failure
            return None, wait
        assert response is not None
        if response.status_code == 503:
            wait = self.policy.wait(attempt, response)
            if wait is not None:
                return None, wait
        if response.is_error:
            raise _error(response)
        return response.json(), None


class Client(_Base):
    """A blocking client.

    >>> c = Client("http://127.0.0.1:8080")
    >>> c.classify(["dog.jpg"], top_k=3).results[0][0].breed   # doctest: +SKIP
    'Pug'
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            response, failure = None, None
            try:
                response = self._http.request(
                    call.method, call.path, files=call.files, data=call.data, json=call.json, params=call.params
                )
            except httpx.TransportError as e:
                failure = e
            result, wait = self._decide(call, attempt, response, failure)
            if wait is None:
                return result
            time.sleep(wait)
            attempt += 1

    def embed(self, images: Iterable[ImageLike]) -> models.Embeddings:
        return models.embeddings(self._send(_Requests.embed(images)))

    def classify(self, images: Iterable[ImageLike], top_k: int = 5) -> models.Classification:
        return models.classification(self._send(_Requests.classify(images, top_k)))

    def search(
        self,
        images: Optional[Iterable[ImageLike]] = None,
        vectors: Optional[Sequence[Sequence[float]]] = None,
        k: int = 10,
        breed: Optional[str] = None,
    ) -> models.Search:
        return models.search(self._send(_Requests.search(images, vectors, k, breed)))

    def add(
        self,
        images: Sequence[ImageLike],
        ids: Sequence[str],
        breeds: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        metadata: Any = None,
    ) -> models.Added:
        return models.of(models.Added, self._send(_Requests.add(images, ids, breeds, sources, metadata)))

    def delete(self, id: str) -> models.Deleted:
        return models.of(models.Deleted, self._send(_Requests.delete(id)))

    def gallery(self) -> models.GalleryCounts:
        return models.of(models.GalleryCounts, self._send(Call("GET", "/v1/gallery")))

    def models(self) -> List[models.Model]:
        return models.models(self._send(Call("GET", "/v1/models")))

    def info(self) -> models.Info:
        """The models and the limits a request must stay within."""
        return models.info(self._send(Call("GET", "/v1/models")))

    def embeddings(self, input: Any, model: str = "default", encoding_format: str = "float") -> Dict[str, Any]:
        """The OpenAI-compatible route, as its raw JSON answer."""
        return self._send(_Requests.embeddings(input, model, encoding_format))


class AsyncClient(_Base):
    """The same methods as `Client`, as coroutines.

    >>> async with AsyncClient("http://127.0.0.1:8080") as c:   # doctest: +SKIP
    ...     await c.embed(["dog.jpg"])
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            response, failure = None, None
            try:
                response = await self._http.request(
                    call.method, call.path, files=call.files, data=call.data, json=call.json, params=call.params
                )
            except httpx.TransportError as e:
                failure = e
            result, wait = self._decide(call, attempt, response, failure)
            if wait is None:
                return result
            await asyncio.sleep(wait)
            attempt += 1

    async def embed(self, images: Iterable[ImageLike]) -> models.Embeddings:
        return models.embeddings(await self._send(_Requests.embed(images)))

    async def classify(self, images: Iterable[ImageLike], top_k: int = 5) -> models.Classification:
        return models.classification(await self._send(_Requests.classify(images, top_k)))

    async def search(
        self,
        images: Optional[Iterable[ImageLike]] = None,
        vectors: Optional[Sequence[Sequence[float]]] = None,
        k: int = 10,
        breed: Optional[str] = None,
    ) -> models.Search:
        return models.search(await self._send(_Requests.search(images, vectors, k, breed)))

    async def add(
        self,
        images: Sequence[ImageLike],
        ids: Sequence[str],
        breeds: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        metadata: Any = None,
    ) -> models.Added:
        return models.of(models.Added, await self._send(_Requests.add(images, ids, breeds, sources, metadata)))

    async def delete(self, id: str) -> models.Deleted:
        return models.of(models.Deleted, await self._send(_Requests.delete(id)))

    async def gallery(self) -> models.GalleryCounts:
        return models.of(models.GalleryCounts, await self._send(Call("GET", "/v1/gallery")))

    async def models(self) -> List[models.Model]:
        return models.models(await self._send(Call("GET", "/v1/models")))

    async def info(self) -> models.Info:
        """The models and the limits a request must stay within."""
        return models.info(await self._send(Call("GET", "/v1/models")))

    async def embeddings(self, input: Any, model: str = "default", encoding_format: str = "float") -> Dict[str, Any]:
        return await self._send(_Requests.embeddings(input, model, encoding_format))
