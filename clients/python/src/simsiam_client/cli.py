"""`simsiam-client`: the server's routes from the shell; prints the JSON answer.

    simsiam-client [--url URL] [--api-key KEY] classify dog.jpg [--top-k 3]
    simsiam-client search dog.jpg --k 5 [--breed Pug]
    simsiam-client embed dog.jpg cat.jpg
    simsiam-client add rex.jpg --id rex [--breed Pug] [--metadata '{"owner": "ann"}']
    simsiam-client delete rex
    simsiam-client gallery
    simsiam-client models

The key may also come from SIMSIAM_API_KEY, the URL from SIMSIAM_URL. A server error
prints `<status> <code>: <message>` and exits 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, List, Optional

from .client import DEFAULT_URL, Client
from .errors import SimsiamError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simsiam-client", description="Call the simsiam server.")
    p.add_argument("--url", default=os.environ.get("SIMSIAM_URL", DEFAULT_URL))
    p.add_argument("--api-key", default=os.environ.get("SIMSIAM_API_KEY"))
    p.add_argument("--timeout", type=float, default=60.0)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("classify", help="breeds of images")
    s.add_argument("images", nargs="+")
    s.add_argument("--top-k", type=int, default=5)
    s = sub.add_parser("search", help="gallery entries nearest to images")
    s.add_argument("images", nargs="+")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--breed")
    s = sub.add_parser("embed", help="embeddings of images")
    s.add_argument("images", nargs="+")
    s = sub.add_parser("add", help="add an image to the gallery")
    s.add_argument("image")
    s.add_argument("--id", required=True)
    s.add_argument("--breed")
    s.add_argument("--metadata", help="a JSON object")
    s = sub.add_parser("delete", help="remove a gallery entry")
    s.add_argument("id")
    sub.add_parser("gallery", help="gallery counts")
    sub.add_parser("models", help="the served model")
    return p


def _run(c: Client, a: argparse.Namespace) -> Any:
    if a.command == "classify":
        return c.classify(a.images, top_k=a.top_k)
    if a.command == "search":
        return c.search(a.images, k=a.k, breed=a.breed)
    if a.command == "embed":
        return c.embed(a.images)
    if a.command == "add":
        metadata = json.loads(a.metadata) if a.metadata else None
        return c.add([a.image], ids=[a.id], breeds=[a.breed] if a.breed else None, metadata=metadata)
    if a.command == "delete":
        return c.delete(a.id)
    if a.command == "gallery":
        return c.gallery()
    return c.models()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def main(argv: Optional[List[str]] = None) -> int:
    a = _parser().parse_args(argv)
    try:
        with Client(a.url, api_key=a.api_key, timeout=a.timeout) as c:
            print(json.dumps(_plain(_run(c, a))))
    except SimsiamError as e:
        print(f"{e.status} {e.code}: {e.message}", file=sys.stderr)
        return 1
    return 0
