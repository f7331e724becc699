"""hnswlib and FAISS on the vectors `gallery-bench --vectors-out DIR` wrote, with the same
M, ef_construction and ef_search: the anchors the embedded gallery's figures are read against.

    python bench/anchors/anchors.py DIR

Recall@10 is measured against an exact scan (inner products of unit vectors, i.e. cosine);
queries per second on one thread, one query per call, as the gallery answers them; the build
on every core. Prints a Markdown table.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def load(d: Path):
    meta = json.loads((d / "meta.json").read_text())
    base = np.fromfile(d / "base.f32", dtype="<f4").reshape(meta["n"], meta["dim"])
    queries = np.fromfile(d / "queries.f32", dtype="<f4").reshape(meta["queries"], meta["dim"])
    return meta, base, queries


def exact(base, queries, k):
    scores = queries @ base.T
    return np.argsort(-scores, axis=1)[:, :k]


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def per_query_rate(search, queries, seconds=3.0):
    """Single queries, one at a time, for about `seconds`: queries per second."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        search(queries[done % len(queries)])
        done += 1
    return done / (time.perf_counter() - start)


def run_hnswlib(meta, base, queries, truth, threads):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=meta["dim"])
    index.init_index(max_elements=len(base), M=meta["m"], ef_construction=meta["ef_construction"], random_seed=1)
    index.set_num_threads(threads)
    t = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - t
    index.set_ef(meta["ef_search"])
    index.set_num_threads(1)
    found = [index.knn_query(q[None, :], k=meta["k"])[0][0] for q in queries]
    qps = per_query_rate(lambda q: index.knn_query(q[None, :], k=meta["k"]), queries)
    return f"hnswlib {hnswlib.__version__ if hasattr(hnswlib, '__version__') else ''}".strip(), recall(found, truth), qps, build


def run_faiss(meta, base, queries, truth, threads):
    import faiss

    index = faiss.IndexHNSWFlat(meta["dim"], meta["m"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = meta["ef_construction"]
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index.add(base)
    build = time.perf_counter() - t
    index.hnsw.efSearch = meta["ef_search"]
    faiss.omp_set_num_threads(1)
    found = [index.search(q[None, :], meta["k"])[1][0] for q in queries]
    qps = per_query_rate(lambda q: index.search(q[None, :], meta["k"]), queries)
    return f"faiss-cpu {faiss.__version__} IndexHNSWFlat", recall(found, truth), qps, build


def main():
    d = Path(sys.argv[1])
    meta, base, queries = load(d)
    threads = os.cpu_count() or 1
    truth = exact(base, queries, meta["k"])
    print(
        f"\n{meta['n']} vectors of {meta['dim']} dimensions, {len(queries)} queries, k = {meta['k']}, "
        f"M = {meta['m']}, ef_construction = {meta['ef_construction']}, ef_search = {meta['ef_search']}\n"
    )
    print("| library | recall@10 | q/s, one thread | build, all cores |")
    print("|---|---:|---:|---:|")
    for run in (run_hnswlib, run_faiss):
        print(f"  {run.__name__} ...", file=sys.stderr, flush=True)
        name, r, qps, build = run(meta, base, queries, truth, threads)
        print(f"| {name} | {r:.3f} | {qps:,.0f} | {build:.0f} s on {threads} |", flush=True)


if __name__ == "__main__":
    main()
