#!/usr/bin/env python3
"""A dependency-free client for the simsiam server (Python 3.8+ standard library only).

Library use:

    from simsiam_client import Client
    c = Client("http://127.0.0.1:8080", api_key=None)
    c.classify(["dog.jpg"], top_k=3)      # {"model": ..., "results": [{"predictions": [...]}]}
    c.embed(["dog.jpg"])                  # {"model", "dim", "embeddings": [[...]]}
    c.search(["dog.jpg"], k=5, breed="Pug")
    c.add(["rex.jpg"], ids=["rex"], breeds=["Pug"], metadata={"owner": "ann"})
    c.delete("rex"); c.gallery()

Command line (prints the JSON answer; exits 1 with the server's error message on failure):

    python3 simsiam_client.py [--url URL] [--api-key KEY] classify dog.jpg [--top-k 3]
    python3 simsiam_client.py search dog.jpg --k 5 [--breed Pug]
    python3 simsiam_client.py embed dog.jpg cat.jpg
    python3 simsiam_client.py add rex.jpg --id rex --breed Pug
    python3 simsiam_client.py delete rex
    python3 simsiam_client.py gallery
"""
import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid


class ServerError(Exception):
    """The server answered with an error: `status`, `code` and `message` from its JSON body."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, url="http://127.0.0.1:8080", api_key=None, timeout=60):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def _call(self, method, path, body=None, content_type=None):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.api_key:
            req.add_header("Authorization", "Bearer " + self.api_key)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())["error"]
            except (ValueError, KeyError):
                err = {"code": "http_error", "message": e.reason}
            raise ServerError(e.code, err["code"], err["message"]) from None

    def _form(self, path, images, fields=()):
        """POST a multipart form: image files under `images`, then text fields."""
        boundary = uuid.uuid4().hex
        parts = []
        for image in images:
            with open(image, "rb") as f:
                data = f.read()
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                f'filename="{image}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                + data + b"\r\n")
        for name, value in fields:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                .encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self._call("POST", path, body, "multipart/form-data; boundary=" + boundary)

    def embed(self, images):
        return self._form("/v1/embed", images)

    def classify(self, images, top_k=5):
        return self._form("/v1/classify?" + urllib.parse.urlencode({"top_k": top_k}), images)

    def search(self, images, k=10, breed=None):
        query = {"k": k, **({"breed": breed} if breed else {})}
        return self._form("/v1/search?" + urllib.parse.urlencode(query), images)

    def add(self, images, ids, breeds=(), metadata=None):
        fields = [("ids", i) for i in ids] + [("breeds", b) for b in breeds]
        if metadata is not None:
            fields.append(("metadata", json.dumps(metadata)))
        return self._form("/v1/gallery", images, fields)

    def delete(self, id_):
        return self._call("DELETE", "/v1/gallery/" + urllib.parse.quote(id_, safe="/"))

    def gallery(self):
        return self._call("GET", "/v1/gallery")


def main(argv=None):
    p = argparse.ArgumentParser(description="Call the simsiam server.")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--api-key")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("embed"); s.add_argument("images", nargs="+")
    s = sub.add_parser("classify"); s.add_argument("images", nargs="+"); s.add_argument("--top-k", type=int, default=5)
    s = sub.add_parser("search"); s.add_argument("images", nargs="+"); s.add_argument("--k", type=int, default=10); s.add_argument("--breed")
    s = sub.add_parser("add"); s.add_argument("images", nargs="+"); s.add_argument("--id", action="append", required=True); s.add_argument("--breed", action="append", default=[])
    s = sub.add_parser("delete"); s.add_argument("id")
    sub.add_parser("gallery")
    a = p.parse_args(argv)
    c = Client(a.url, a.api_key)
    try:
        if a.cmd == "embed":
            out = c.embed(a.images)
        elif a.cmd == "classify":
            out = c.classify(a.images, a.top_k)
        elif a.cmd == "search":
            out = c.search(a.images, a.k, a.breed)
        elif a.cmd == "add":
            out = c.add(a.images, a.id, a.breed)
        elif a.cmd == "delete":
            out = c.delete(a.id)
        else:
            out = c.gallery()
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot reach {a.url}: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
