#!/usr/bin/env bash
# Every route of the simsiam server with curl. Usage: clients/curl.sh dog.jpg [URL]
# Set API_KEY when the server has one. Stops at the first failing call.
set -euo pipefail
IMG=${1:?usage: clients/curl.sh <image.jpg> [url]}
URL=${2:-http://127.0.0.1:8080}
AUTH=()
[[ -n "${API_KEY:-}" ]] && AUTH=(-H "Authorization: Bearer $API_KEY")
c() { echo "+ curl $*" >&2; curl -sS --fail-with-body "${AUTH[@]}" "$@"; echo; }

c "$URL/healthz"
c "$URL/readyz"
c -F "images=@$IMG" "$URL/v1/classify?top_k=3"
c -H 'Content-Type: image/jpeg' --data-binary "@$IMG" "$URL/v1/search?k=3"
out=$(c -F "images=@$IMG" "$URL/v1/embed"); echo "${out:0:200}..."
c -H 'Content-Type: application/json' \
  -d "{\"images\": [\"$(base64 -w0 "$IMG")\"], \"top_k\": 2}" "$URL/v1/classify"
c -F "images=@$IMG" -F ids=curl-example -F breeds=Example -F 'metadata={"from":"curl.sh"}' "$URL/v1/gallery"
c "$URL/v1/gallery"
c -X DELETE "$URL/v1/gallery/curl-example"
out=$(c "$URL/v1/models"); echo "${out:0:300}..."
out=$(c "$URL/metrics"); grep -E '^simsiam_(batch_size_count|queue_depth|gallery_items)' <<<"$out"
