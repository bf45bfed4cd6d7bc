"""Load benchmark for the server (issue 12): the old server (one routing call at a time behind a lock, torch) against the
new default (dynamic batcher, ONNX Runtime engine), with the transformer and a static embedder, over loopback, bounded
in count and time. The transformer also runs as lock + ONNX and batcher + torch, so the engine's gain and the
batcher's gain are each visible; `engines` measures each engine's compute per text outside any server.

    python bench/load.py [--seconds 3] [--points 300] [--rss_requests 10000]   # writes bench/results/load.json

Each server runs in its own process (`query-router serve`), so the load generator does not share its interpreter."""
import argparse, asyncio, json, os, random, socket, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def rss_mb(pid:int)->float:
    "Resident memory of `pid` and its children (workers), MiB."
    total = 0
    for p in [pid] + [int(c) for c in Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]:
        try:
            for line in Path(f'/proc/{p}/status').read_text().splitlines():
                if line.startswith('VmRSS:'): total += int(line.split()[1])
        except FileNotFoundError: pass
    return round(total / 1024, 1)

def cpu_s(pid:int)->float:
    "CPU seconds (user + system) used so far by `pid` and its children (workers)."
    tick, total = os.sysconf('SC_CLK_TCK'), 0
    for p in [pid] + [int(c) for c in Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]:
        try: f = Path(f'/proc/{p}/stat').read_text().rsplit(')', 1)[1].split(); total += int(f[11]) + int(f[12])
        except FileNotFoundError: pass
    return total / tick

class Server:
    "`query-router serve` in a subprocess on a free loopback port."
    def __init__(self, artifacts, *args):
        self.port = free_port(); self.url = f'http://127.0.0.1:{self.port}'
        env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}
        cmd = [sys.executable, '-c', 'import sys; from query_router.cli import main; sys.exit(main(sys.argv[1:]))',
               'serve', '--artifacts', str(artifacts), '--port', str(self.port), *map(str, args)]
        self.log = tempfile.NamedTemporaryFile(prefix='qr-serve-', suffix='.log', delete=False)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
    def __enter__(self):
        import httpx
        t = time.time() + 300
        while time.time() < t:
            if self.proc.poll() is not None: raise RuntimeError(Path(self.log.name).read_text()[-2000:])
            try:
                if httpx.get(self.url + '/health', timeout=2).status_code == 200: return self
            except httpx.HTTPError: pass
            time.sleep(0.5)
        raise RuntimeError('server did not start')
    def __exit__(self, *a):
        import signal
        os.killpg(self.proc.pid, signal.SIGTERM) # the server and its workers (a session of their own)
        try: self.proc.wait(5)
        except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait()

PROBE = '''
import sys, time, json, httpx
url, secs = sys.argv[1], float(sys.argv[2]); out = []
with httpx.Client(base_url=url, timeout=30) as c:
    c.get('/health'); stop = time.perf_counter() + secs
    while time.perf_counter() < stop:
        t = time.perf_counter(); c.get('/health'); out.append(time.perf_counter() - t); time.sleep(0.05)
print(json.dumps(out))
'''

def pct(xs, q): return round(float(np.percentile(xs, q)) * 1000, 1) if xs else None

async def load(url, queries, clients:int, seconds:float, health:bool=False, pid:int|None=None)->dict:
    "`clients` concurrent callers of POST / for `seconds`; then wait for the ones in flight. CPU seconds of the server (`pid`) and of this client are counted."
    import httpx
    cpu0, mine0 = (cpu_s(pid) if pid else None), time.process_time()
    lat, codes, hl = [], {}, []
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)) as c:
        async def caller(i):
            rnd = random.Random(i)
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try: s = (await c.post('/', json={'query': rnd.choice(queries)})).status_code
                except httpx.HTTPError as e: s = type(e).__name__
                lat.append(time.perf_counter() - t); codes[s] = codes.get(s, 0) + 1
        # /health is probed from a process of its own, so that the load generator's busy event loop does not delay the probes
        probe = subprocess.Popen([sys.executable, '-c', PROBE, url, str(seconds)], stdout=subprocess.PIPE) if health else None
        t0 = time.perf_counter()
        await asyncio.gather(*[caller(i) for i in range(clients)])
        wall = time.perf_counter() - t0
        if probe is not None: hl = json.loads(probe.communicate(timeout=120)[0] or b'[]')
    return {'clients': clients, 'lat': lat, 'codes': codes, 'hl': hl, 'wall': wall, 'health': health,
            'server_cpu': cpu_s(pid) - cpu0 if pid else None, 'client_cpu': time.process_time() - mine0}

def summary(runs:list)->dict:
    "One level's figures from its interleaved repetitions: throughput over their total time, percentiles over all their requests."
    lat = [x for r in runs for x in r['lat']]; hl = [x for r in runs for x in r['hl']]; wall = sum(r['wall'] for r in runs)
    codes = {}
    for r in runs:
        for k, v in r['codes'].items(): codes[k] = codes.get(k, 0) + v
    n, clients, health = len(lat), runs[0]['clients'], runs[0]['health']
    out = {'clients': clients, 'requests': n, 'seconds': round(wall, 2), 'throughput_rps': round(codes.get(200, 0) / wall, 1),
           'p50_ms': pct(lat, 50), 'p99_ms': pct(lat, 99), 'share_503': round(codes.get(503, 0) / max(n, 1), 3),
           'share_504': round(codes.get(504, 0) / max(n, 1), 3), 'statuses': {str(k): v for k, v in codes.items()}}
    ok = max(codes.get(200, 0), 1)
    if runs[0].get('server_cpu') is not None:
        sc, cc = sum(r['server_cpu'] for r in runs), sum(r['client_cpu'] for r in runs)
        out['server_cpu_ms_per_request'], out['client_cpu_ms_per_request'] = round(sc / ok * 1000, 2), round(cc / ok * 1000, 2)
        out['cpu_bound_rps_on_all_cores'] = round((os.cpu_count() or 1) / ((sc + cc) / ok), 1) # what these CPU costs allow when the machine does nothing else
    if health: out['health'] = {'probes': len(hl), 'p50_ms': pct(hl, 50), 'p99_ms': pct(hl, 99), 'max_ms': pct(hl, 100)}
    return out

async def during_big_batch(url, big:list[str], small:str, timeout:float)->dict:
    "The latency of a one-word POST / sent half a second after a maximal /batch."
    import httpx
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        t_big = time.perf_counter()
        bt = asyncio.ensure_future(c.post('/batch', json={'queries': big}))
        await asyncio.sleep(0.5)
        t = time.perf_counter()
        try: r = await c.post('/', json={'query': small}); s = r.status_code
        except httpx.TimeoutException: s = 'timeout'
        small_s = time.perf_counter() - t
        try: b = await asyncio.wait_for(bt, 5); big_status = b.status_code; big_s = round(time.perf_counter() - t_big, 2)
        except (asyncio.TimeoutError, httpx.HTTPError): bt.cancel(); big_status, big_s = 'still running (not waited for)', None
    return {'small_status': s, 'small_latency_s': round(small_s, 3), 'small_timeout_s': timeout, 'big_status': big_status, 'big_seconds': big_s}

async def rss_run(url, pid, queries, n:int, clients:int=32)->dict:
    import httpx
    samples, done, finished, codes = [], 0, 0, {}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients + 4)) as c:
        async def caller(i):
            nonlocal done, finished
            rnd = random.Random(1000 + i)
            while done < n:
                done += 1
                s = (await c.post('/', json={'query': rnd.choice(queries)})).status_code
                codes[s] = codes.get(s, 0) + 1; finished += 1
                if finished % max(n // 10, 1) == 0: samples.append((finished, rss_mb(pid)))
        t = time.perf_counter()
        await asyncio.gather(*[caller(i) for i in range(clients)])
    return {'requests': n, 'clients': clients, 'seconds': round(time.perf_counter() - t, 1), 'statuses': {str(k): v for k, v in codes.items()},
            'rss_mb': samples, 'rss_growth_mb_after_first_tenth': round(samples[-1][1] - samples[0][1], 1) if samples else None}

def build(work:Path, points:int):
    from query_router.data import load_default_dataset
    from query_router.embed import Embedder
    from query_router.knn import build_artifacts
    from query_router.distill import distill_static
    data = load_default_dataset()
    sub = data.subset(range(points))
    arts = {}
    if not (work/'transformer'/'manifest.json').exists(): build_artifacts(work/'transformer', sub, Embedder(), n_trees=10)
    arts['transformer'] = work/'transformer'
    if not (work/'static-model'/'config.json').exists(): distill_static(work/'static-model', texts=data.queries, prune=True, pca_dims=64)
    if not (work/'static'/'manifest.json').exists(): build_artifacts(work/'static', sub, Embedder(str(work/'static-model')), n_trees=10)
    arts['static'] = work/'static'
    return arts, data.queries[points:]

def int8_engine(work:Path, onnx_dir:Path):
    "An int8 copy of the exported model (dynamic quantisation, per-channel weights), for comparison only: not an option of the package (it changes routes)."
    import shutil, onnx
    from onnxruntime.quantization import quantize_dynamic, QuantType
    from query_router.embed import OnnxEncoder
    out = work/'onnx-int8-per-channel'
    if not (out/'model.onnx').exists():
        out.mkdir(parents=True, exist_ok=True)
        for f in ('tokenizer.json', 'onnx.json'): shutil.copy(onnx_dir/f, out/f)
        quantize_dynamic(str(onnx_dir/'model.onnx'), str(out/'model.onnx'), weight_type=QuantType.QInt8, per_channel=True, extra_options={'DefaultTensorType': onnx.TensorProto.FLOAT})
    return OnnxEncoder(out)

def engines(queries, art:Path, work:Path, reps:int=3, n:int=16)->dict:
    """Each engine's compute per text on this machine now, outside any server: `n` texts one call each, and the same `n` in
    one call (forward passes of 8, as the server runs them), interleaved, best of `reps`; and how alike the engines embed and route."""
    from query_router.embed import Embedder
    from query_router.serve import set_threads, load_router
    from query_router.router import respond
    es = {'torch': Embedder(backend='torch'), 'onnx': Embedder(backend='onnx')}
    threads = set_threads(); es['onnx'].set_threads(threads)
    res = {'texts': n, 'threads': threads, 'engines': {}}
    try:
        q8 = Embedder(backend='onnx'); q8.onnx = int8_engine(work, es['onnx'].onnx.folder); q8.set_threads(threads); es['onnx_int8'] = q8
    except Exception as e: res['int8_error'] = f'{type(e).__name__}: {e}'
    qs = queries[:n]; t1, tb = {k: [] for k in es}, {k: [] for k in es}
    for e in es.values(): e.batch_size = 8; e.encode(qs[:2])
    for _ in range(reps):
        for k, e in es.items():
            t = time.perf_counter(); [e.encode([q]) for q in qs]; t1[k].append(time.perf_counter() - t)
            t = time.perf_counter(); e.encode(qs); tb[k].append(time.perf_counter() - t)
    for k in es:
        one, many = min(t1[k]) / n * 1000, min(tb[k]) / n * 1000
        res['engines'][k] = {'ms_per_text_one_call_each': round(one, 1), 'ms_per_text_in_one_call': round(many, 1),
                             'ceiling_rps_single': round(1000 / one, 1), 'ceiling_rps_batched': round(1000 / many, 1)}
    tt, to = res['engines']['torch'], res['engines']['onnx']
    res['best_possible_ratio_batched_onnx_vs_single_torch'] = round(tt['ms_per_text_one_call_each'] / to['ms_per_text_in_one_call'], 2)
    res['engine_gain_single'] = round(tt['ms_per_text_one_call_each'] / to['ms_per_text_one_call_each'], 2)
    res['batching_gain_torch'] = round(tt['ms_per_text_one_call_each'] / tt['ms_per_text_in_one_call'], 2)
    res['batching_gain_onnx'] = round(to['ms_per_text_one_call_each'] / to['ms_per_text_in_one_call'], 2)
    sample = queries[:300]
    ref = es['torch'].encode(sample)
    router = load_router(art, embedder=es['torch']); want = [r['route'] for r in respond(router, sample)]
    for k in [k for k in es if k != 'torch']:
        v = es[k].encode(sample); router.embedder = es[k]
        got = [r['route'] for r in respond(router, sample)]
        res['engines'][k]['vs_torch'] = {'texts': len(sample), 'max_abs_difference': float(np.abs(v - ref).max()), 'min_cosine': round(float((v * ref).sum(1).min()), 6),
                                         'route_agreement': round(float(np.mean([a == b for a, b in zip(want, got)])), 4)}
    return res

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--seconds', type=float, default=3.0, help='seconds of load per level and repetition')
    ap.add_argument('--reps', type=int, default=2, help='interleaved repetitions of each level')
    ap.add_argument('--levels', default='1,8,32,128')
    ap.add_argument('--points', type=int, default=300, help='queries of the default dataset in each artifact')
    ap.add_argument('--rss_requests', type=int, default=10000)
    ap.add_argument('--embedders', default='transformer,static')
    ap.add_argument('--modes', default='lock,lock_onnx,batch_torch,batch_1_runner,batch,batch_2_workers', help='transformer modes; the static embedder runs those without an engine switch')
    ap.add_argument('--work', default=str(Path(tempfile.gettempdir())/'qr-load-bench'))
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'load.json'))
    a = ap.parse_args()
    t_start = time.time(); load0 = os.getloadavg()
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    arts, queries = build(work, a.points)
    levels = [int(x) for x in a.levels.split(',')]
    eng = engines(queries, arts['transformer'], work); print('engines', json.dumps(eng), flush=True) # also exports the ONNX model, once, before the servers start
    modes = {'lock': ['--lock', '--backend', 'torch'], 'lock_onnx': ['--lock', '--backend', 'onnx'], 'batch_torch': ['--backend', 'torch'],
             'batch_1_runner': ['--runners', '1'], 'batch': [], 'batch_2_workers': ['--workers', '2']}
    res = {'bench': 'load', 'host': socket.gethostname(), 'cpus': os.cpu_count(), 'loadavg_start': [round(x, 2) for x in load0],
           'seconds_per_level': a.seconds, 'reps': a.reps, 'points': a.points, 'levels': levels,
           'engines': eng,
           'note': ("old = --lock --backend torch (one routing call at a time with torch, the server before issue 12); new = the default "
                    "(dynamic batcher, --backend auto = ONNX Runtime, one embedding call in flight per core, each on one thread); lock_onnx = the old lock "
                    "with the new engine; batch_torch = the batcher with the old engine; batch_1_runner = the new default with one call at a time on all threads"),
           'runs': {}}
    rnd = random.Random(0)
    big = [' '.join(rnd.choice(queries).split()) for _ in range(256)]
    big = [(q + ' ') * (1 + 1100 // max(len(q), 1)) for q in big] # 256 queries of ~256 tokens (65 KB+: the body limit is raised for this test)
    import contextlib, httpx
    for emb in a.embedders.split(','):
        ms = [m for m in a.modes.split(',') if emb == 'transformer' or m in ('lock', 'batch', 'batch_2_workers')]
        with contextlib.ExitStack() as stack: # every mode's server up at once; the modes take turns, so drift in the machine's load hits them alike
            srvs = {m: stack.enter_context(Server(arts[emb], *modes[m])) for m in ms}
            for m in ms: asyncio.run(load(srvs[m].url, queries, 4, 1.5)) # warm up
            for m in ms: res['runs'][f'{emb}/{m}'] = {'levels': []}
            for n in levels:
                reps = {m: [] for m in ms}
                for rep in range(a.reps):
                    for m in ms: reps[m].append(asyncio.run(load(srvs[m].url, queries, n, a.seconds, health=(n == max(levels)), pid=srvs[m].proc.pid)))
                for m in ms:
                    r = summary(reps[m]); res['runs'][f'{emb}/{m}']['levels'].append(r)
                    print(f'{emb}/{m}', r['clients'], r['throughput_rps'], r['p50_ms'], r['p99_ms'], r.get('server_cpu_ms_per_request'), r.get('cpu_bound_rps_on_all_cores'), r.get('health', ''), flush=True)
            for m in ms:
                met = httpx.get(srvs[m].url + '/metrics').text
                got = {l.split()[0]: float(l.split()[1]) for l in met.splitlines() if l.startswith(('query_router_batch_size_sum', 'query_router_batch_size_count'))}
                if got.get('query_router_batch_size_count'): res['runs'][f'{emb}/{m}']['mean_texts_per_embedding_call'] = round(got['query_router_batch_size_sum'] / got['query_router_batch_size_count'], 2)
                res['runs'][f'{emb}/{m}']['rss_mb'] = rss_mb(srvs[m].proc.pid)
        for mode in ('lock', 'batch'):
            with Server(arts[emb], *modes[mode], '--max_body', 1 << 20, '--batch_tokens', 1 << 20, '--deadline', 300) as srv:
                r = asyncio.run(during_big_batch(srv.url, big, 'hi', 30.0))
                print(f'  {emb}/{mode} small request during a maximal batch:', r, flush=True)
                res['runs'][f'{emb}/{mode}']['small_during_max_batch'] = r
    with Server(arts['static']) as srv:
        asyncio.run(load(srv.url, queries, 8, 1.0))
        res['rss'] = {'embedder': 'static', 'mode': 'batch', **asyncio.run(rss_run(srv.url, srv.proc.pid, queries, a.rss_requests))}
        print('rss', res['rss'], flush=True)
    def at(key, n): return next((r for r in res['runs'].get(key, {}).get('levels', []) if r['clients'] == n), None)
    tl, tb = at('transformer/lock', 32), at('transformer/batch', 32)
    tlo, tbt = at('transformer/lock_onnx', 32), at('transformer/batch_torch', 32)
    ratio = lambda x, y: round(x['throughput_rps'] / max(y['throughput_rps'], 1e-9), 2) if x and y else None
    s1 = at('static/lock', 1)
    hb = (at('transformer/batch', 128) or {}).get('health', {})
    sd = res['runs'].get('transformer/batch', {}).get('small_during_max_batch', {})
    rs = res.get('rss', {})
    res['bars'] = {
        'throughput_ratio_32_clients_transformer': round(tb['throughput_rps'] / max(tl['throughput_rps'], 1e-9), 2) if tl and tb else None,
        'throughput_ratio_bar': 3.0,
        'engine_gain_32_clients_lock': ratio(tlo, tl), 'engine_gain_32_clients_batch': ratio(tb, tbt),
        'batching_gain_32_clients_torch': ratio(tbt, tl), 'batching_gain_32_clients_onnx': ratio(tb, tlo),
        'best_possible_ratio_from_compute': eng.get('best_possible_ratio_batched_onnx_vs_single_torch'),
        'cpu_bound_ratio_32_clients_transformer': round(tb['cpu_bound_rps_on_all_cores'] / tl['cpu_bound_rps_on_all_cores'], 2) if tl and tb and tl.get('cpu_bound_rps_on_all_cores') else None,
        'non_model_ms_per_request_static_lock_1_client': round(1000 / s1['throughput_rps'], 2) if s1 else None,
        'health_p99_ms_128_clients_transformer': hb.get('p99_ms'), 'health_p99_bar_ms': 50,
        'small_during_max_batch_s': sd.get('small_latency_s'), 'small_during_max_batch_status': sd.get('small_status'), 'small_bar_s': 1.0,
        'rss_growth_mb_over_requests': rs.get('rss_growth_mb_after_first_tenth'),
    }
    res['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]; res['wall_s'] = round(time.time() - t_start, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix('.tmp'); tmp.write_text(json.dumps(res, indent=1)); os.replace(tmp, a.out)
    print(json.dumps(res['bars'], indent=1))

if __name__ == '__main__': main()
