"""Artifacts at scale (issue 14): build, size, load and search a KNN artifact of 100k (and 1M) points, per index kind.
Writes bench/results/scale.json.

    python bench/scale.py --sizes 100000 1000000 --kinds ivf annoy hnsw [--emb_cache DIR] [--work DIR] [--timeout S]

(sizes and kinds: space- or comma-separated). Each (size, kind) run replaces its entry in the JSON; entries from
earlier runs that were not rerun stay, marked with the time they were measured (`measured_at`).

Synthetic recipe (256-d, deterministic, seed 0):
  - base: the 2,296 queries of the embedded default dataset, embedded with the bundled all-MiniLM-L6-v2 (384-d),
    projected to 256-d with a fixed random orthonormal matrix (QR of a seeded Gaussian 384x256), re-normalised;
  - point i: base[b_i] + N(0, sigma^2 I) with b_i uniform over the base and sigma = 0.04 per dimension (noise norm
    about 0.64 against a unit base vector), re-normalised; its scores: the base query's tier, one-hot; its id
    `syn-i`, its category the tier, its text `synthetic point i of query b_i`. Chunks of 16,384 points are drawn
    from `default_rng([seed, chunk])`, so any size is generated in bounded memory and is a prefix of a larger one.
  - held-out real queries: 200 prompts of ../shared/data/llmrouter/test.jsonl (another source than the points:
    out of distribution), embedded with the same model and projected the same way;
  - in-distribution queries: 200 points drawn by the same recipe with another seed.
Recall@10 is measured against exact search over the same artifact's embeddings. Builds and loads each run in a
fresh child process (peak RSS = the child's VmHWM); search times are single-vector `search` calls on a loaded router.
Embeddings of the real queries go through `CachedEmbedder` (`--emb_cache`), so repeated runs embed nothing.
"""
import argparse, json, os, platform, resource, subprocess, sys, time
from pathlib import Path
import numpy as np

DIM, SIGMA, CHUNK, SEED = 256, 0.04, 16384, 0

def rss_mb()->float:
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024
    return float('nan')

def peak_mb()->float:
    "This process's peak RSS (VmHWM): unlike ru_maxrss, it does not inherit the parent's RSS at fork."
    for l in open('/proc/self/status'):
        if l.startswith('VmHWM:'): return int(l.split()[1]) / 1024
    return float('nan')

def projection()->np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(SEED).normal(size=(384, DIM)))
    return q.astype(np.float32)

def project(x:np.ndarray)->np.ndarray:
    y = x.astype(np.float32) @ projection()
    return y / np.linalg.norm(y, axis=1, keepdims=True)

def fake_embedder():
    "An `Embedder` that only describes a 256-d model: the bench searches with vectors, never embeds."
    from query_router.embed import Embedder
    class Synthetic(Embedder):
        def __init__(self):
            self.name, self.kind, self.dim, self.max_seq_length, self.model, self.static = 'synthetic-256 (bench/scale.py)', 'transformer', DIM, None, None, None
            self._fp = [0.0] * 8
        def encode(self, texts, progress=None): raise RuntimeError('the scale bench searches with vectors')
    return Synthetic()

def base_vectors(emb_cache):
    "The default dataset's queries (projected embeddings), their tiers, and the held-out real queries."
    from query_router.data import load_default_dataset
    from query_router.evaluate import CachedEmbedder
    from query_router.embed import Embedder
    from query_router.core import shared_data_dir
    e = CachedEmbedder(Embedder(), emb_cache)
    d = load_default_dataset()
    base = project(e.encode(d.queries))
    from query_router.data import load_llmrouter
    if not (shared_data_dir()/'test.jsonl').exists(): raise SystemExit(f"held-out real queries not found at {shared_data_dir()} (../shared/data/llmrouter/test.jsonl)")
    qs = list(dict.fromkeys(load_llmrouter('test').queries))
    pick = np.random.default_rng(SEED).choice(len(qs), 200, replace=False)
    real = project(e.encode([qs[i] for i in sorted(pick)]))
    return base, d.labels, real

def synth_chunks(base, labels, n, seed=SEED):
    tiers = ['3B', '7B', '30B', '70B']; lab = np.array([tiers.index(l) for l in labels])
    for c, s in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - s); rng = np.random.default_rng([seed, c])
        b = rng.integers(0, len(base), m)
        x = base[b] + rng.normal(scale=SIGMA, size=(m, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        sc = np.zeros((m, 4), np.float32); sc[np.arange(m), lab[b]] = 1
        meta = {'point_uid': [f'syn-{i}' for i in range(s, s + m)], 'category': [tiers[lab[j]] for j in b],
                'utterance': [f'synthetic point {i} of query {j}' for i, j in zip(range(s, s + m), b)]}
        yield meta, x, sc

def child_build(a):
    from query_router.knn import write_knn
    z = np.load(a.vectors); base, labels = z['base'], z['labels'].tolist()
    targets = [{'name': t, 'cost': c} for t, c in (('3B', 0.1), ('7B', 0.2), ('30B', 0.8), ('70B', 0.9))]
    t0 = time.perf_counter()
    p = write_knn(a.dir, synth_chunks(base, labels, a.n), a.n, DIM, targets, fake_embedder(), {'k': 10}, index=a.index, n_trees=a.n_trees,
                  dtype=a.dtype, progress=False, index_params={'ef_construction': a.ef_construction} if a.ef_construction else None)
    wall = time.perf_counter() - t0
    m = json.loads((Path(p)/'manifest.json').read_text())
    sizes = {f: e['bytes'] for f, e in m['files'].items()}
    return {'build_s': round(wall, 1), 'peak_rss_mb': round(peak_mb(), 1), 'files_mb': {f: round(b / 2**20, 2) for f, b in sizes.items()},
            'total_mb': round(sum(sizes.values()) / 2**20, 1), 'settings_index': m['settings']['index']}

def child_load(a):
    from query_router.knn import KNNRouter
    from query_router.index import exact_search, recall_at_k
    import annoy, hnswlib # imported before measuring: the libraries are not the artifact
    z = np.load(a.vectors); real, ind = z['real'], z['in_dist']
    before = rss_mb(); t0 = time.perf_counter()
    r = KNNRouter(a.dir, embedder=fake_embedder())
    load_s = time.perf_counter() - t0; after = rss_mb()
    res = {'load_s': round(load_s, 3), 'rss_before_load_mb': round(before, 1), 'rss_after_load_mb': round(after, 1), 'rss_load_delta_mb': round(after - before, 1)}
    te = []
    for v in real[:20]:
        t = time.perf_counter(); exact_search(v, r.embeddings, 10); te.append(time.perf_counter() - t)
    res['exact_p50_ms'] = round(float(np.median(te)) * 1e3, 2) # one query, the whole memory-mapped matrix in blocks
    truth = {name: exact_search(q, r.embeddings, 10)[0] for name, q in (('held_out_real', real), ('in_distribution', ind))} # all queries in one pass
    kind = r.manifest['settings']['index']['kind']
    sweep = {'annoy': ('search_k', [None, 5000, 10000, 20000, 50000]), 'hnsw': ('ef', [None, 50, 100, 400]), 'ivf': ('nprobe', [None, 8, 16, 32, 64]), 'exact': (None, [None])}[kind]
    if a.sweep: sweep = (sweep[0], [int(v) for v in a.sweep.split(',')])
    res['search'] = []
    for val in sweep[1]:
        if val is not None and kind == 'annoy': r.index.search_k = val
        if val is not None and kind == 'hnsw': r.index.ef = val
        if val is not None and kind == 'ivf': r.index.nprobe = val
        eff = val if val is not None else r.manifest['settings']['index'].get(sweep[0]) if sweep[0] else None
        row = {sweep[0] or 'setting': eff, 'default': val is None}
        for name, q in (('held_out_real', real), ('in_distribution', ind)):
            for v in q[:5]: r.search(v[None]) # warm
            ts, found = [], []
            for v in q:
                t = time.perf_counter(); ii, _ = r.search(v[None]); ts.append(time.perf_counter() - t); found.append(ii[0])
            row[name] = {'recall_at_10': round(recall_at_k(np.array(found), truth[name]), 4), 'p50_ms': round(float(np.percentile(ts, 50)) * 1e3, 3),
                         'p99_ms': round(float(np.percentile(ts, 99)) * 1e3, 3)}
        res['search'].append(row)
    res['rss_end_mb'] = round(rss_mb(), 1)
    return res

RECOMMENDED = {'large': 'ivf'} # the README's recommendation from 100,000 points up

def bars(runs:dict)->dict:
    "Issue 14's bars at 1M points for the recommended kind (its default search setting), from the runs measured."
    r = runs.get(f"1000000:{RECOMMENDED['large']}")
    if not r: return {'measured': False}
    d = next(s for s in r['search'] if s['default'])
    got = {'build_s < 1200': r['build_s'] < 1200, 'peak_rss_mb < 2048': r['peak_rss_mb'] < 2048, 'load_s < 3': r['load_s'] < 3,
           'rss_after_load_mb < 1024': r['rss_after_load_mb'] < 1024, 'held_out_real p50_ms < 1': d['held_out_real']['p50_ms'] < 1,
           'held_out_real recall_at_10 >= 0.95': d['held_out_real']['recall_at_10'] >= 0.95}
    return {'index': RECOMMENDED['large'], 'measured_at': r.get('measured_at'), **got, 'all': all(got.values())}

def run_child(args, timeout):
    cmd = [sys.executable, __file__, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode: raise RuntimeError(f"{' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--child', default=None); ap.add_argument('--dir'); ap.add_argument('--n', type=int); ap.add_argument('--index', default='annoy')
    ap.add_argument('--n_trees', type=int, default=50); ap.add_argument('--dtype', default='float32'); ap.add_argument('--vectors')
    ap.add_argument('--ef_construction', type=int, default=None) # hnsw build effort (default: the index's, 200)
    ap.add_argument('--sweep', default=None) # child load: search_k / ef values to measure instead of the default sweep
    ap.add_argument('--sizes', nargs='+', default=['100000']); ap.add_argument('--kinds', nargs='+', default=['ivf', 'annoy', 'hnsw'])
    ap.add_argument('--emb_cache', default=str(Path.home()/'.cache'/'query_router'/'embeddings'))
    ap.add_argument('--work', default='/tmp/qr-scale'); ap.add_argument('--timeout', type=int, default=7200)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'scale.json'))
    a = ap.parse_args()
    split = lambda v: [p for x in v for p in str(x).split(',') if p]
    if a.child == 'build': print(json.dumps(child_build(a))); return
    if a.child == 'load': print(json.dumps(child_load(a))); return
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    vec = work/'vectors.npz'
    base, labels, real = base_vectors(a.emb_cache)
    ind = next(synth_chunks(base, labels, 200, seed=SEED + 1))[1]
    np.savez(vec, base=base, labels=np.array(labels), real=real, in_dist=ind)
    import annoy, hnswlib
    t_all = time.perf_counter()
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res.update({'recipe': __doc__.split('Synthetic recipe')[1].split('Recall@10')[0].strip(), 'dim': DIM, 'sigma': SIGMA,
                'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'python': platform.python_version(), 'numpy': np.__version__},
                'loadavg_start': os.getloadavg(), 'command': 'python bench/scale.py ' + ' '.join(sys.argv[1:]), 'started_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})
    res.setdefault('runs', {})
    for v in res['runs'].values(): v.setdefault('measured_at', 'an earlier run (before the ivf index), not rerun since')
    for n in map(int, split(a.sizes)):
        for kind in split(a.kinds):
            d = work/f'{kind}-{n}'
            key = f'{n}:{kind}'
            print(f'[{time.strftime("%H:%M:%S")}] build {key} (load {os.getloadavg()[0]:.1f})', flush=True)
            b = run_child(['--child', 'build', '--dir', str(d), '--n', str(n), '--index', kind, '--n_trees', str(a.n_trees), '--dtype', a.dtype, '--vectors', str(vec)]
                          + (['--ef_construction', str(a.ef_construction)] if a.ef_construction and kind == 'hnsw' else []), a.timeout)
            print(f'  {b}', flush=True)
            subprocess.run(['sync']); 
            l = run_child(['--child', 'load', '--dir', str(d), '--vectors', str(vec)], a.timeout)
            print(f'  {json.dumps(l)}', flush=True)
            res['runs'][key] = {'n': n, 'index': kind, 'dtype': a.dtype, **b, **l, 'loadavg': os.getloadavg(), 'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
            res['loadavg_end'] = os.getloadavg(); res['wall_s'] = round(time.perf_counter() - t_all, 1)
            res['bars_1m'] = bars(res['runs'])
            out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(res, indent=1))
    print(f'wrote {out}')

if __name__ == '__main__': main()
