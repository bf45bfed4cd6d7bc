"""Transformer embedder against its static (model2vec) distillation, in one run on the same queries: embedding time per
query (single and batched), in-process route p50/p99, HTTP p50, and routing quality. Writes bench/results/distill.json.

    nice -n 10 python bench/distill_bench.py [--variants 256,384,256+words] [--n_queries 300]

Quality: the embedded default dataset (grouped split: index = train, accuracy on test) and, where ../shared is present,
LLMRouter (index = its train split with graded outcomes; on its test split: mean quality = score of the chosen model, and
mean cost, at the argmax policy, plus a λ sweep of the utility policy). Latency: the LLMRouter router (5,608 points) when
present, else the default one; transformer and static timed query by query, interleaved, so both see the same machine load.
Static models are distilled from the bundled all-MiniLM-L6-v2 into runs/distill_bench/ (reused when already there).

The bar: static in-process route p50 < 1 ms, >= 30x faster than the transformer route, LLMRouter mean quality within 2%.
"""
import argparse, json, os, platform, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = { # name: distill_static options; 'words' vocabularies come from the training queries of both datasets
    '256': dict(pca_dims=256),
    '384': dict(pca_dims=384), # PCA without reduction: centred and rotated
    '128': dict(pca_dims=128),
    '256+words': dict(pca_dims=256, add_words=10000),
    '256+corpus': dict(pca_dims=256, add_words=10000, prune=True), # only the training queries' pieces, plus their words
}
LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)

def pct(xs, q): return float(np.percentile(np.asarray(xs) * 1000, q))

def static_model(name, texts):
    from query_router.distill import distill_static
    out = ROOT/'runs'/'distill_bench'/name
    if (out/'distill.json').exists(): print(f'static {name}: reusing {out}'); return out
    opts = VARIANTS[name]
    print(f'static {name}: distilling {opts}', flush=True)
    return distill_static(out, texts=texts if opts.get('add_words') or opts.get('prune') else None, **opts)

def quality(router, te):
    "Mean quality and cost on outcome data `te`, at argmax and along the utility λ sweep."
    from query_router.router import decide
    s, c, sc = te.scores(), te.costs(), router.score_batch(te.queries)
    at = lambda ch: {'quality': float(s[np.arange(len(te)), ch].mean()), 'cost': float(c[ch].mean())}
    return {'argmax': at(decide(sc)), 'utility': {str(l): at(decide(sc, 'utility', l, c)) for l in LAMBDAS}}, s[np.arange(len(te)), decide(sc)]

def paired_ci(a, b, n=2000, seed=0):
    "Mean of b - a per query, and its 95% paired-bootstrap interval."
    d = np.asarray(b) - np.asarray(a); rng = np.random.default_rng(seed)
    m = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return {'mean': float(d.mean()), 'ci95': [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]}

def latency(routers, queries, n_batch):
    "Per-query times for each router's embedder and full route, interleaved query by query."
    from query_router.router import respond
    for q in queries[:20]:
        for r in routers.values(): r.embedder.encode(q); respond(r, [q])
    t = {k: {'embed': [], 'search': [], 'route': [], 'route_only': []} for k in routers}
    for q in queries:
        for k, r in routers.items():
            t0 = time.perf_counter(); v = r.embedder.encode(q); t1 = time.perf_counter(); r.search(v[None]); t2 = time.perf_counter()
            respond(r, [q]); t3 = time.perf_counter(); r.route(q); t4 = time.perf_counter()
            t[k]['embed'].append(t1 - t0); t[k]['search'].append(t2 - t1); t[k]['route'].append(t3 - t2); t[k]['route_only'].append(t4 - t3)
    out = {}
    for k, r in routers.items():
        qs = queries[:n_batch]
        t0 = time.perf_counter(); r.embedder.encode(qs); batched = (time.perf_counter() - t0) / len(qs)
        out[k] = {'embed_single_p50': pct(t[k]['embed'], 50), 'embed_single_p99': pct(t[k]['embed'], 99), 'embed_batched_per_query': batched * 1000,
                  'annoy_search_p50': pct(t[k]['search'], 50), 'route_p50': pct(t[k]['route'], 50), 'route_p99': pct(t[k]['route'], 99),
                  'route_method_p50': pct(t[k]['route_only'], 50), 'route_overhead_p50': pct(t[k]['route'], 50) - pct(t[k]['embed'], 50)}
    return out

def http_p50(router, queries):
    import httpx
    from query_router.serve import make_app, ServerThread
    with ServerThread(make_app(router)) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        for q in queries[:10]: c.post('/', json={'query': q})
        ts = []
        for q in queries:
            t0 = time.perf_counter(); r = c.post('/', json={'query': q}); ts.append(time.perf_counter() - t0); assert r.status_code == 200
    return {'http_p50': pct(ts, 50), 'http_p99': pct(ts, 99)}

def plot(res, path):
    "Route latency per embedder, and LLMRouter's cost-quality points along the λ sweep: bench/results/distill.png."
    try:
        import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    except ImportError: print('matplotlib not installed: no plot'); return
    names = [k for k in res['embedders']]
    fig, ax = plt.subplots(1, 2 if 'llmrouter' in res else 1, figsize=(11, 4), squeeze=False); ax = ax[0]
    lat = [res['latency_ms'][k]['route_p50'] for k in names]
    ax[0].barh(names, lat, color=['tab:red' if k == 'transformer' else 'tab:blue' for k in names]); ax[0].set_xscale('log')
    for i, v in enumerate(lat): ax[0].text(v, i, f' {v:.3g} ms', va='center')
    ax[0].axvline(1.0, ls='--', c='grey'); ax[0].set_xlabel('in-process route p50 (ms, log scale)'); ax[0].set_title(f"one query, {res['latency_ms']['index_points']} indexed points")
    if 'llmrouter' in res:
        for k in names:
            pts = sorted((v['cost'], v['quality']) for v in res['llmrouter'][k]['utility'].values())
            ax[1].plot(*zip(*pts), 'o-', label=k)
        ax[1].axhline(res['llmrouter']['reference']['best_single_model_quality'], ls=':', c='grey', label='best single model')
        ax[1].set_xlabel('mean cost (USD / Mtok, blended)'); ax[1].set_ylabel('mean quality'); ax[1].set_title('LLMRouter test: utility policy, λ sweep'); ax[1].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=110); print('wrote', path)

CACHE_MIN = 400 # lists this long (builds and quality runs, never the timed calls) have their transformer embeddings cached

def cached(emb):
    "`emb`, with its embeddings of long lists kept in runs/distill_bench/cache, so reruns skip the slow transformer passes."
    import hashlib
    from query_router.embed import Embedder
    d = ROOT/'runs'/'distill_bench'/'cache'; d.mkdir(parents=True, exist_ok=True)
    c = Embedder.__new__(Embedder); c.__dict__.update(emb.__dict__)
    def encode(texts, progress=None):
        if isinstance(texts, str) or len(texts) < CACHE_MIN: return Embedder.encode(c, texts, progress)
        texts = list(texts)
        f = d/(hashlib.sha1(json.dumps([emb.name, emb.fingerprint, texts]).encode()).hexdigest() + '.npy')
        if f.exists(): return np.load(f)
        e = Embedder.encode(c, texts, progress); np.save(f, e); return e
    c.encode = encode
    return c

def training_texts():
    "The training queries of both datasets: the corpus for the vocabulary variants (never the test queries)."
    from query_router.core import has_shared_data
    from query_router.data import load_default_dataset, load_llmrouter, split_data
    return split_data(load_default_dataset(), 'grouped')[0].queries + (load_llmrouter('train').queries if has_shared_data() else [])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--variants', default='256', help=f'static variants to compare, comma-separated, from {list(VARIANTS)}')
    ap.add_argument('--n_queries', type=int, default=300, help='queries for the latency measurements')
    ap.add_argument('--n_http', type=int, default=200, help='queries for the HTTP measurement')
    ap.add_argument('--plot_only', action='store_true', help='redraw the PNG from an existing JSON')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'distill.json')); a = ap.parse_args()
    if a.plot_only: return plot(json.loads(Path(a.out).read_text()), Path(a.out).with_suffix('.png'))
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from query_router.core import has_shared_data
    from query_router.data import load_default_dataset, load_llmrouter, split_data
    from query_router.embed import Embedder
    from query_router.knn import build_artifacts, KNNRouter
    variants = a.variants.split(',')
    if unknown := [v for v in variants if v not in VARIANTS]: raise SystemExit(f'unknown variants {unknown}; choose from {list(VARIANTS)}')
    tmp = Path(tempfile.mkdtemp())
    dtr, _, dte = split_data(load_default_dataset(), 'grouped')
    shared = has_shared_data()
    ltr, lte = (load_llmrouter('train'), load_llmrouter('test')) if shared else (None, None)
    train_texts = training_texts()
    if a.n_queries >= CACHE_MIN: raise SystemExit(f'--n_queries must be under {CACHE_MIN} (longer lists are cached, and the timed batch must not be)')
    embs = {'transformer': cached(Embedder())}
    for v in variants: embs[f'static-{v}'] = Embedder(static_model(v, train_texts))
    res = {'command': 'python bench/distill_bench.py --variants ' + a.variants, 'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
           'load_avg_at_start': os.getloadavg()}, 'embedders': {k: e.describe() for k, e in embs.items()},
           'distill': {v: json.loads((Path(embs[f'static-{v}'].name)/'distill.json').read_text()) for v in variants}}

    # quality
    res['default'] = {'index_points': len(dtr), 'test_queries': len(dte)}
    routers_d, routers_l = {}, {}
    for k, e in embs.items():
        t0 = time.perf_counter(); routers_d[k] = r = KNNRouter(build_artifacts(tmp/f'd-{k}', dtr, e), e)
        acc = float(np.mean(np.array(r.route_batch(dte.queries)) == np.array(dte.labels)))
        res['default'][k] = {'accuracy': acc, 'build_s': time.perf_counter() - t0}
        print(f'default {k}: accuracy {acc:.3f}', flush=True)
    if shared:
        s = lte.scores(); c = lte.costs(); chosen = {}
        res['llmrouter'] = {'index_points': len(ltr), 'test_queries': len(lte), 'targets': lte.targets, 'costs': c.tolist(),
                            'reference': {'oracle_quality': float(s.max(1).mean()), 'best_single_model_quality': float(s.mean(0).max()),
                                          'best_single_model': lte.targets[int(s.mean(0).argmax())], 'random_pick_quality': float(s.mean())}}
        for k, e in embs.items():
            t0 = time.perf_counter(); routers_l[k] = r = KNNRouter(build_artifacts(tmp/f'l-{k}', ltr, e), e)
            q, chosen[k] = quality(r, lte)
            res['llmrouter'][k] = {**q, 'build_s': time.perf_counter() - t0}
            print(f"llmrouter {k}: {res['llmrouter'][k]['argmax']}", flush=True)
        tq = res['llmrouter']['transformer']['argmax']['quality']
        for k in embs:
            if k == 'transformer': continue
            res['llmrouter'][k]['quality_vs_transformer'] = res['llmrouter'][k]['argmax']['quality'] / tq - 1
            res['llmrouter'][k]['quality_minus_transformer'] = paired_ci(chosen['transformer'], chosen[k])

    # speed, on the largest index
    routers, queries = (routers_l, lte.queries) if shared else (routers_d, dte.queries)
    queries = queries[:a.n_queries]
    res['latency_ms'] = latency(routers, queries, len(queries))
    res['latency_ms']['index_points'] = len(routers['transformer'].meta)
    for k, r in routers.items():
        res['latency_ms'][k].update(http_p50(r, queries[:a.n_http]))
        print(f"latency {k}: {res['latency_ms'][k]}", flush=True)
    res['machine']['load_avg_at_end'] = os.getloadavg()

    # the bar, for the first static variant (and each one)
    T = res['latency_ms']['transformer']['route_p50']
    res['bar'] = {}
    for v in variants:
        k = f'static-{v}'; L = res['latency_ms'][k]
        b = {'route_p50_ms': L['route_p50'], 'under_1ms': L['route_p50'] < 1.0, 'speedup_vs_transformer': T / L['route_p50']}
        b['speedup_at_least_30x'] = b['speedup_vs_transformer'] >= 30
        if shared:
            b['llmrouter_quality_vs_transformer'] = res['llmrouter'][k]['quality_vs_transformer']
            b['quality_within_2pct'] = b['llmrouter_quality_vs_transformer'] >= -0.02
        b['met'] = all(x for n, x in b.items() if isinstance(x, bool))
        res['bar'][k] = b
    print('bar', json.dumps(res['bar'], indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmpf = Path(a.out).with_suffix('.json.tmp'); tmpf.write_text(json.dumps(res, indent=1)); os.replace(tmpf, a.out)
    print('wrote', a.out)
    plot(res, Path(a.out).with_suffix('.png'))

if __name__ == '__main__': main()
