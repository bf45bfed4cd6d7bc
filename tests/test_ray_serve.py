"""Ray Serve: two replicas of a small artifact on a local Ray instance (2 CPUs, no dashboard), asked over HTTP and compared
with the in-process router; one replica's actor killed while requests keep coming; a replica that cannot load never answers.

Slow to start on a small loaded machine (Ray itself, then two replicas that each load the embedding model): every wait is
bounded (see the *_TIMEOUT constants) rather than assumed."""
import os, re, socket, threading, time, concurrent.futures as cf
import pytest
pytest.importorskip('ray.serve', reason='ray[serve] is not installed (pip install "query_router[ray]"): Ray Serve tests skipped')
os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
import httpx, ray
from ray import serve
from query_router.ray_serve import start_ray, ray_app, deploy, router_deployment
from query_router.router import respond
from query_router.serve import load_router

APP = 'query_router'
REPLICA_PREFIX = f'SERVE_REPLICA::{APP}#QueryRouter#'
REPLACE_TIMEOUT = 240 # seconds for Ray to bring a killed replica back (process start + model load on a loaded 2-core box)
# The client's retry window: a request that fails (connection error or 5xx) is sent again after 0.25, 0.5, 1, 2 and 4 s:
# at most 6 attempts over ~7.75 s of back-off. The bar: no request fails after this window.
RETRY_DELAYS = (0.25, 0.5, 1, 2, 4)

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]
METRICS_PORT = free_port() # Ray's per-node Prometheus endpoint
METRICS_TIMEOUT = 120 # seconds for Ray to export the replicas' metrics (it exports every few seconds)

def replicas()->list[str]:
    "Ids of the live replica actors of the app, from Ray's named actors."
    return sorted(a['name'][len(REPLICA_PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True) if a['name'].startswith(REPLICA_PREFIX))

def post_with_retry(c:httpx.Client, body:dict)->tuple[httpx.Response|None, int]:
    "The answer and the number of failed attempts before it (None: still failing after the retry window)."
    fails = 0
    for delay in (*RETRY_DELAYS, None):
        try:
            r = c.post('/', json=body)
            if r.status_code < 500: return r, fails
        except httpx.HTTPError: pass
        fails += 1
        if delay is None: return None, fails
        time.sleep(delay)

@pytest.fixture(scope='module')
def art(tmp_path_factory, embedder, default_data):
    "A KNN artifact built from 200 queries of the default dataset."
    from query_router.knn import build_artifacts
    return build_artifacts(tmp_path_factory.mktemp('ray')/'art', default_data.subset(range(200)), embedder, n_trees=10)

@pytest.fixture(scope='module')
def local(art, embedder): return load_router(art, embedder=embedder)

@pytest.fixture(scope='module')
def url(art):
    "Two replicas (half a CPU each) deployed on a fresh local Ray instance; Serve and Ray shut down afterwards."
    port = free_port()
    try:
        start_ray(num_cpus=2, _metrics_export_port=METRICS_PORT)
        deploy(ray_app(art, replicas=2, cpus=0.5, access_log=False), port=port, name=APP)
        yield f'http://127.0.0.1:{port}'
    finally:
        try: serve.shutdown()
        finally: ray.shutdown()

def test_two_replicas_answer_like_the_in_process_router(url, local, default_data):
    qs = default_data.subset(range(200, 300)).queries # not in the artifact
    assert len(qs) == 100
    with httpx.Client(base_url=url, timeout=60) as c, cf.ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda q: c.post('/', json={'query': q}), qs))
        assert [a.status_code for a in answers] == [200] * 100, [a.text for a in answers if a.status_code != 200][:3]
        want = [respond(local, [q])[0] for q in qs]
        assert [a.json()['route'] for a in answers] == [w['route'] for w in want]
        for a, w in zip(answers, want):
            got, exp = {s['target']: s['score'] for s in a.json()['scores']}, {s['target']: s['score'] for s in w['scores']}
            assert got.keys() == exp.keys() and all(abs(got[t] - exp[t]) < 1e-3 for t in got), (got, exp)
        assert len({a.headers['x-query-router-replica'] for a in answers}) == 2 # both replicas answered
        b = c.post('/batch', json={'queries': qs[:5]}).json()['results']
        assert [x['route'] for x in b] == [w['route'] for w in want[:5]]
        bad = c.post('/', json={'query': '   '})
        assert bad.status_code == 422 and 'is empty' in bad.json()['error']
        h = c.get('/health').json()
        assert h['status'] == 'ok' and h['points'] == 200
        m = c.get('/metrics').text # one replica's metrics
    assert 'query_router_replica_info{' in m and 'process_cpu_seconds_total' in m
    assert 'query_router_requests_total{endpoint="/",status="200"}' in m and 'query_router_embed_batch_size_count' in m

def ray_counts()->dict:
    "Requests to POST / answered 200, per replica, from the node's Prometheus endpoint (Ray's metrics)."
    try: txt = httpx.get(f'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).text
    except httpx.HTTPError: return {}
    out = {}
    for line in txt.splitlines():
        if line.startswith('ray_query_router_requests_total{') and 'endpoint="/"' in line and 'status="200"' in line:
            rep = re.search(r'replica="([^"]+)"', line).group(1)
            out[rep] = out.get(rep, 0) + float(line.rsplit(' ', 1)[1])
    return out

def test_every_replica_is_in_rays_prometheus_metrics(url):
    "Scrapes through Serve's proxy land on any replica; Ray's per-node endpoint has them all, labelled by replica."
    t0, counts = time.monotonic(), {}
    while time.monotonic() - t0 < METRICS_TIMEOUT:
        counts = ray_counts()
        if len(counts) == 2 and sum(counts.values()) >= 100: break
        time.sleep(3)
    assert set(counts) == set(replicas()) and sum(counts.values()) >= 100, counts

def test_a_replica_that_cannot_load_never_answers(url, art, tmp_path):
    """A copy of the artifact with one byte flipped (same size: only the SHA-256 tells): the replica's health check fails,
    so Ray gives up on the deployment (after one start here) and no request reaches it."""
    import shutil
    bad = shutil.copytree(art, tmp_path/'bad')
    f = max((p for p in bad.iterdir() if p.is_file() and p.name != 'manifest.json'), key=lambda p: p.stat().st_size)
    b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0xFF; f.write_bytes(bytes(b))
    broken = router_deployment().options(name='Broken', num_replicas=1, max_constructor_retry_count=1, ray_actor_options={'num_cpus': 0.25})
    with pytest.raises(Exception) as e: serve.run(broken.bind(str(bad)), name='broken', route_prefix='/broken')
    why = str(e.value) + serve.status().applications['broken'].deployments['Broken'].message
    assert 'cannot load the router' in why and 'checksum mismatch' in why, why
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post('/broken/', json={'query': 'hi'})
        assert r.status_code != 200 and 'route' not in r.text
    serve.delete('broken')

def test_killing_a_replica_loses_no_request(url):
    before = replicas()
    assert len(before) == 2, before
    victim = before[0]
    ray.kill(ray.get_actor(REPLICA_PREFIX + victim, namespace='serve'), no_restart=True)
    stats, stop, lock = {'requests': 0, 'retried': 0, 'failed_attempts': 0, 'lost': 0}, threading.Event(), threading.Lock()
    def client(i):
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r, fails = post_with_retry(c, {'query': f'request {i} while a replica is being replaced'})
                with lock:
                    stats['requests'] += 1; stats['failed_attempts'] += fails
                    stats['retried'] += fails > 0; stats['lost'] += r is None
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads: t.start()
    t0, replaced = time.monotonic(), False
    try:
        while time.monotonic() - t0 < REPLACE_TIMEOUT:
            now, st = replicas(), serve.status().applications[APP].deployments['QueryRouter'].replica_states
            if victim not in now and len(now) == 2 and st.get('RUNNING') == 2: replaced = True; break
            time.sleep(1)
        while stats['requests'] < 100 and time.monotonic() - t0 < REPLACE_TIMEOUT + 60: time.sleep(0.2)
    finally:
        stop.set()
        for t in threads: t.join(60)
    print(f"\nreplica {victim} killed; replaced after {time.monotonic() - t0:.1f}s: {stats}")
    assert replaced, f"Ray did not replace replica {victim} within {REPLACE_TIMEOUT}s: live {replicas()}"
    assert stats['requests'] >= 100 and stats['lost'] == 0, stats
    with httpx.Client(base_url=url, timeout=60) as c:
        seen = {c.post('/', json={'query': f'after {i}'}).headers['x-query-router-replica'] for i in range(30)}
    assert victim not in seen and seen <= set(replicas())

def test_rolling_update_to_a_new_artifact_fails_no_request(url, art, tmp_path):
    "Redeploying under the same name with another artifact folder: new replicas load and pass health checks before old ones stop."
    import shutil
    v2 = shutil.copytree(art, tmp_path/'v2')
    stats, stop, lock = {'requests': 0, 'failed': 0, 'lost': 0}, threading.Event(), threading.Lock()
    def client(i):
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r, fails = post_with_retry(c, {'query': f'request {i} during a rolling update'})
                with lock: stats['requests'] += 1; stats['failed'] += fails > 0; stats['lost'] += r is None
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads: t.start()
    try: deploy(ray_app(v2, replicas=2, cpus=0.5, access_log=False), port=int(url.rsplit(':', 1)[1]), name=APP) # returns once v2 is running
    finally:
        stop.set()
        for t in threads: t.join(60)
    print(f"\nrolling update to {v2}: {stats}")
    with httpx.Client(base_url=url, timeout=60) as c:
        paths = {c.get('/health').json()['path'] for _ in range(10)}
    assert paths == {v2.name}, paths # /health names the folder, never an absolute path
    assert stats['requests'] > 0 and stats['failed'] == 0 and stats['lost'] == 0, stats
