"""Python client of the simsiam dog-breed embedding server.

    from simsiam_client import Client
    with Client("http://127.0.0.1:8080", api_key=None) as c:
        c.classify(["dog.jpg"], top_k=3).results[0][0]   # Prediction(breed='Pug', probability=...)
        c.embed(["dog.jpg"]).embeddings[0]               # 512 floats, unit length
        c.search(["dog.jpg"], k=5, breed="Pug").results[0]
        c.add(["rex.jpg"], ids=["rex"], breeds=["Pug"], metadata={"owner": "ann"})
        c.delete("rex"); c.gallery(); c.models()

`AsyncClient` has the same methods as coroutines. Images may be paths, bytes, file
objects or PIL images. A 503 is retried after the server's `Retry-After`; other errors
raise `SimsiamError` with the status, code and message (`InsufficientStorage`, a
subclass, for a 507: the server's disk is full; not retried).
"""
from .client import AsyncClient, Client
from .errors import ConnectionFailed, InsufficientStorage, SimsiamError
from .models import (
    Added,
    Classification,
    Deleted,
    Embeddings,
    GalleryCounts,
    Model,
    Neighbor,
    Prediction,
    Search,
)

__all__ = [
    "Added",
    "AsyncClient",
    "Classification",
    "Client",
    "ConnectionFailed",
    "Deleted",
    "Embeddings",
    "GalleryCounts",
    "InsufficientStorage",
    "Model",
    "Neighbor",
    "Prediction",
    "Search",
    "SimsiamError",
]
