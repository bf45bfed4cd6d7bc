"""KNN router benchmark: Annoy recall@10 against exact search, in-process routing latency next to the bare
embedding call, and HTTP latency / throughput from a concurrent client. Writes bench/results/knn.json.

    python bench/knn_bench.py [--n_queries 300] [--concurrency 8]

Index: the train split (grouped) of the embedded default dataset; queries: its test split, so no query finds itself.
Times are wall-clock on whatever machine runs this; compare ratios within one run.
"""
import argparse, asyncio, json, os, platform, tempfile, time
from pathlib import Path
import numpy as np

def pct(xs, q): return float(np.percentile(np.asarray(xs) * 1000, q))

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--n_queries', type=int, default=300); ap.add_argument('--concurrency', type=int, default=8)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'knn.json')); a = ap.parse_args()
    import httpx
    from query_router.data import load_default_dataset, split_data
    from query_router.embed import Embedder
    from query_router.knn import build_artifacts, KNNRouter
    from query_router.router import respond
    from query_router.serve import make_app, ServerThread
    tr, va, te = split_data(load_default_dataset(), 'grouped')
    queries = te.queries[:a.n_queries]
    emb = Embedder(); tmp = Path(tempfile.mkdtemp())
    res = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform()}, 'index_points': len(tr), 'n_queries': len(queries)}

    # recall@10 of Annoy against exact search, by number of trees
    qv = emb.encode(queries)
    res['recall_at_10'] = {}
    for n_trees in (10, 50, 100):
        t0 = time.perf_counter(); art = build_artifacts(tmp/f'art{n_trees}', tr, emb, n_trees=n_trees)
        r = KNNRouter(art, emb); build_s = time.perf_counter() - t0
        ia, _ = r.search(qv); ie, _ = r.search(qv, exact=True)
        rec = float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(ia, ie)]))
        ia1, _ = KNNRouter(art, emb, search_k=-1).search(qv)
        rec_annoy_default = float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(ia1, ie)]))
        same_route = float(np.mean(np.array(r.route_batch(queries)) == np.array(KNNRouter(art, emb, exact=True).route_batch(queries))))
        res['recall_at_10'][n_trees] = {'recall': rec, 'recall_annoy_default_search_k': rec_annoy_default, 'same_route_as_exact': same_route, 'index_bytes': (art/'index.ann').stat().st_size, 'build_s': build_s}
        print(f'n_trees={n_trees}: recall@10 {rec:.3f} (Annoy default search_k: {rec_annoy_default:.3f}), same route as exact {same_route:.3f}')
    router = KNNRouter(tmp/'art50', emb)

    # in-process latency, one query at a time: bare embedding vs full route (embed + search + vote + answer)
    for q in queries[:20]: emb.encode(q); respond(router, [q]) # warm-up
    t_emb, t_route = [], []
    for q in queries:
        t0 = time.perf_counter(); emb.encode(q); t_emb.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); respond(router, [q]); t_route.append(time.perf_counter() - t0)
    res['in_process_ms'] = {'embed_p50': pct(t_emb, 50), 'embed_p99': pct(t_emb, 99), 'route_p50': pct(t_route, 50), 'route_p99': pct(t_route, 99),
                            'route_overhead_p50': pct(t_route, 50) - pct(t_emb, 50)}
    print('in-process ms', res['in_process_ms'])

    # HTTP: sequential latency, then a concurrent client for throughput
    with ServerThread(make_app(router)) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for q in queries[:10]: c.post('/', json={'query': q})
            t_http = []
            for q in queries:
                t0 = time.perf_counter(); r = c.post('/', json={'query': q}); t_http.append(time.perf_counter() - t0); assert r.status_code == 200
        async def load():
            lat, sem = [], asyncio.Semaphore(a.concurrency)
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as ac:
                async def one(q):
                    async with sem:
                        t0 = time.perf_counter(); r = await ac.post('/', json={'query': q}); lat.append(time.perf_counter() - t0); assert r.status_code == 200
                t0 = time.perf_counter(); await asyncio.gather(*[one(q) for q in queries]); return lat, time.perf_counter() - t0
        lat, wall = asyncio.run(load())
    res['http_ms'] = {'sequential_p50': pct(t_http, 50), 'sequential_p99': pct(t_http, 99),
                      f'concurrent{a.concurrency}_p50': pct(lat, 50), f'concurrent{a.concurrency}_p99': pct(lat, 99),
                      'requests_per_s': len(queries) / wall}
    print('http', res['http_ms'])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print('wrote', a.out)

if __name__ == '__main__': main()
