"""Ray Serve scaling benchmark: throughput and p50/p99 latency at 32 concurrent clients against (1) the single-process
server (`query-router serve`), (2) Ray Serve with 1 replica, (3) Ray Serve with 2 replicas, all in one run on loopback,
plus the server-side CPU time per request, from which a cluster's capacity can be estimated
(requests/s per node ~ cores / CPU-seconds per request). Writes bench/results/ray_scale.json.

    python bench/ray_scale.py [--clients 32] [--seconds 20] [--artifacts DIR] [--points 500]

CPU time comes from /proc (utime+stime) of the server processes: the uvicorn process; Ray's replica processes
(`ray::ServeReplica:*`) and, separately, Ray's HTTP proxy (`ray::ProxyActor`), which on a cluster runs on every node.
The load generator runs on the same cores, so on a small machine every figure is bounded by the cores: quote ratios
within one run, with the load average (recorded) in mind. Every wait is bounded.
"""
import argparse, asyncio, json, os, platform, socket, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

TICK = os.sysconf('SC_CLK_TCK')

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def cpu_s(pid:int)->float:
    "User + system CPU seconds of a process (all its threads), from /proc; 0 if it is gone."
    try: f = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError): return 0.0
    return (int(f[11]) + int(f[12])) / TICK

def pids_named(prefix:str)->list[int]:
    "Processes whose command line starts with `prefix` (Ray sets replica and proxy process titles)."
    out = []
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: cmd = (p/'cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
        except OSError: continue
        if cmd.startswith(prefix): out.append(int(p.name))
    return sorted(out)

async def load(url:str, queries:list[str], clients:int, seconds:float)->dict:
    "`clients` concurrent clients, each sending POST / back to back for `seconds`; latencies of the answered ones."
    import httpx
    lat, errors, stop = [], [0], time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients)) as c:
        async def client(i):
            j = i
            while time.monotonic() < stop:
                q = queries[j % len(queries)]; j += clients
                t0 = time.perf_counter()
                try: ok = (await c.post('/', json={'query': q})).status_code == 200
                except httpx.HTTPError: ok = False
                if ok: lat.append(time.perf_counter() - t0)
                else: errors[0] += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000
    return {'requests': len(lat), 'errors': errors[0], 'wall_s': round(wall, 2), 'throughput_rps': round(len(lat) / wall, 2),
            'p50_ms': round(float(np.percentile(a, 50)), 1) if len(a) else None, 'p99_ms': round(float(np.percentile(a, 99)), 1) if len(a) else None}

def measure(name:str, url:str, queries, a, procs:dict)->dict:
    "Warm up, then load `url` while reading the CPU time of `procs` ({role: [pid]}) before and after."
    asyncio.run(load(url, queries, a.clients, a.warmup))
    la0 = os.getloadavg()
    before = {role: {p: cpu_s(p) for p in pids} for role, pids in procs.items()}
    client0 = time.process_time()
    r = asyncio.run(load(url, queries, a.clients, a.seconds))
    client_cpu = time.process_time() - client0
    n = max(r['requests'], 1)
    cpu = {role: sum(cpu_s(p) - c for p, c in b.items()) for role, b in before.items()}
    r.update(server=name, loadavg_before=[round(x, 2) for x in la0], loadavg_after=[round(x, 2) for x in os.getloadavg()],
             cpu_s={k: round(v, 2) for k, v in cpu.items()}, client_cpu_s=round(client_cpu, 2),
             cpu_ms_per_request={k: round(1000 * v / n, 2) for k, v in cpu.items()},
             server_cpu_ms_per_request=round(1000 * sum(cpu.values()) / n, 2))
    print(json.dumps(r), flush=True)
    return r

def batch_sizes(url:str, tries:int=20)->dict:
    "Mean queries per embedding batch of each replica (over its life), from the replicas' own /metrics (a scrape lands on any one)."
    import httpx, re
    out = {}
    for _ in range(tries):
        t = httpx.get(url + '/metrics', timeout=30).text
        m = re.search(r'query_router_replica_info\{[^}]*replica="([^"]+)"', t)
        s, c = (re.search(rf'^query_router_embed_batch_size_{k} ([0-9.e+]+)', t, re.M) for k in ('sum', 'count'))
        if m and s and c and float(c.group(1)): out[m.group(1)] = {'mean_batch': round(float(s.group(1)) / float(c.group(1)), 2), 'batches': int(float(c.group(1)))}
    return out

def wait_healthy(url:str, timeout:float):
    import httpx
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(url + '/health', timeout=5).status_code == 200: return
        except httpx.HTTPError: pass
        time.sleep(1)
    raise TimeoutError(f'{url} not healthy after {timeout}s')

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--clients', type=int, default=32); ap.add_argument('--seconds', type=float, default=20); ap.add_argument('--warmup', type=float, default=4)
    ap.add_argument('--artifacts', default=None, help='artifact folder (default: build one from --points queries of the default dataset)')
    ap.add_argument('--points', type=int, default=500); ap.add_argument('--replicas', default='1,2'); ap.add_argument('--cpus', type=float, default=1.0)
    ap.add_argument('--batch_size', type=int, default=32); ap.add_argument('--batch_wait_ms', type=float, default=5.0)
    ap.add_argument('--startup_timeout', type=float, default=300)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'ray_scale.json')); a = ap.parse_args()
    os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from query_router.data import load_default_dataset
    data = load_default_dataset()
    art = a.artifacts
    if art is None:
        from query_router.knn import build_artifacts
        art = build_artifacts(Path(tempfile.mkdtemp())/'art', data.subset(range(a.points)), n_trees=10)
    queries = data.subset(range(a.points, min(len(data), a.points + 1000))).queries # not in the artifact
    res = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'loadavg_start': [round(x, 2) for x in os.getloadavg()],
                       'note': 'shared 2-core machine, other engineers running jobs at the same time: absolute figures are noisy and bounded by the cores; compare within this run'},
           'settings': {'clients': a.clients, 'seconds': a.seconds, 'warmup_s': a.warmup, 'artifact_points': a.points if a.artifacts is None else None,
                        'cpus_per_replica': a.cpus, 'batch_size': a.batch_size, 'batch_wait_ms': a.batch_wait_ms, 'endpoint': 'POST / (one query per request)'},
           'results': []}

    # 1. the single-process server, in its own process like `query-router serve`
    port = free_port()
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; from query_router.cli import main; sys.exit(main())', 'serve', '--artifacts', str(art),
                             '--port', str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f'http://127.0.0.1:{port}', a.startup_timeout)
        res['results'].append({'replicas': 1, **measure('single-process', f'http://127.0.0.1:{port}', queries, a, {'server': [proc.pid]})})
    finally: proc.terminate(); proc.wait(30)

    # 2. Ray Serve on a local instance with 2 CPUs: 1 replica, then scaled to 2 (a redeploy of the same app)
    from ray import serve
    from query_router.ray_serve import start_ray, ray_app, deploy
    port = free_port(); url = f'http://127.0.0.1:{port}'
    t0 = time.monotonic(); rt = start_ray(num_cpus=2); res['ray_start_s'] = round(time.monotonic() - t0, 1)
    try:
        for n in map(int, a.replicas.split(',')):
            t0 = time.monotonic()
            deploy(ray_app(art, replicas=n, cpus=a.cpus, batch_size=a.batch_size, batch_wait_ms=a.batch_wait_ms, access_log=False), port=port)
            replicas = pids_named('ray::ServeReplica:query_router:QueryRouter')
            assert len(replicas) == n, f'expected {n} replica processes, found {replicas}'
            r = measure(f'ray-serve-{n}', url, queries, a, {'replicas': replicas, 'proxy': pids_named('ray::ProxyActor')})
            res['results'].append({'replicas': n, 'deploy_s': round(time.monotonic() - t0, 1), **r, 'embed_batches': batch_sizes(url)})
    finally:
        serve.shutdown(); rt.shutdown()

    by = {r['server']: r for r in res['results']}
    single = by['single-process']
    res['ratios'] = {k: {'throughput_vs_single': round(r['throughput_rps'] / single['throughput_rps'], 2),
                         'p50_vs_single': round(r['p50_ms'] / single['p50_ms'], 2)} for k, r in by.items() if k != 'single-process'}
    if 'ray-serve-1' in by and 'ray-serve-2' in by:
        res['ratios']['ray-serve-2']['throughput_vs_1_replica'] = round(by['ray-serve-2']['throughput_rps'] / by['ray-serve-1']['throughput_rps'], 2)
    ray_cpu = by.get('ray-serve-2', by.get('ray-serve-1'))
    per_req = ray_cpu['cpu_ms_per_request']
    res['capacity_estimate'] = {
        'replica_cpu_ms_per_request': per_req['replicas'], 'proxy_cpu_ms_per_request': per_req['proxy'],
        'requests_per_s_per_core': round(1000 / (per_req['replicas'] + per_req['proxy']), 1),
        'how': 'a node with C cores serves about C * 1000 / (replica + proxy CPU ms per request) requests/s when CPU-bound; divide by the cores the load generator does not use',
    }
    res['machine']['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + '\n')
    print(json.dumps(res['ratios'], indent=1), json.dumps(res['capacity_estimate'], indent=1))

if __name__ == '__main__': main()
