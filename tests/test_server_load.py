"Issue 12: dynamic batching, overload answers and slow clients, over real HTTP on loopback (fast: a toy router where the model would be slow)."
import asyncio, json, socket, threading, time
from concurrent.futures import ThreadPoolExecutor
import httpx, numpy as np, pytest
from query_router.router import Router, respond
from query_router.serve import Batcher, Overloaded, make_app, ServerThread, load_router

def arun(coro): return ThreadPoolExecutor(1).submit(asyncio.run, coro).result()

class Gated(Router):
    "Two targets; every call waits for `gate`; `entered` is set when a call starts."
    targets = ['small', 'large']
    def __init__(self):
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []
    def score_batch(self, qs):
        self.entered.set(); self.gate.wait(20); self.calls.append(list(qs))
        return np.array([[0.9, 0.4] if len(q) < 12 else [0.3, 0.8] for q in qs])

def wait_for(cond, what, timeout=20):
    t = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t: raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.01)

def test_batched_answers_equal_single_answers(small_artifacts, embedder):
    router = load_router(small_artifacts, embedder=embedder)
    qs = ['hi', 'Translate "good morning" into Spanish', 'Prove that there are infinitely many primes.',
          'Design a distributed rate limiter for 1M rps across regions ' * 3, 'What is 2+2?', 'write a sonnet about the sea'] * 4
    qs = [q + f' {i}' for i, q in enumerate(qs)]
    b = Batcher(router, batch_max=8, batch_wait=0.01)
    async def together(): return await asyncio.gather(*[b.submit([q]) for q in qs])
    batched = arun(together())
    assert b.runs < len(qs) # the 24 callers shared calls
    for q, (hits, scores) in zip(qs, batched):
        single = respond(router, [q])[0]
        got = respond(type('F', (), {'__getattr__': lambda s, a: getattr(router, a), 'explain_batch': lambda s, qq, k=None: (hits, scores)})(), [q])[0]
        assert got['route'] == single['route'], q
        assert [h['id'] for h in got['hits']] == [h['id'] for h in single['hits']], q
        np.testing.assert_allclose([s['score'] for s in got['scores']], [s['score'] for s in single['scores']], atol=2e-4)

def test_batched_http_answers_equal_lock_answers(small_artifacts, embedder):
    router = load_router(small_artifacts, embedder=embedder)
    qs = [f'question number {i}: how do I sort a list in python?' if i % 2 else f'prove lemma {i} about graphs' for i in range(12)]
    def ask(url, q):
        with httpx.Client(base_url=url, timeout=60) as c: return c.post('/', json={'query': q}).json()
    with ServerThread(make_app(router, lock=True)) as old: want = [ask(old.url, q) for q in qs]
    with ServerThread(make_app(router, batch_wait=0.02)) as new, ThreadPoolExecutor(12) as ex:
        got = list(ex.map(lambda q: ask(new.url, q), qs))
    for w, g in zip(want, got):
        assert w['route'] == g['route'] and [h['id'] for h in w['hits']] == [h['id'] for h in g['hits']]

def test_small_request_goes_before_a_big_batch():
    r = Gated(); r.gate.set()
    b = Batcher(r, batch_max=4, batch_wait=0.01)
    async def both():
        big = asyncio.ensure_future(b.submit([f'long query number {i}' for i in range(16)]))
        small = asyncio.ensure_future(b.submit(['hi']))
        return await asyncio.gather(big, small)
    arun(both())
    assert r.calls[0][0] == 'hi' and len(r.calls) == 5 # the small one rides in the first call; the batch follows in pieces

def post(url, body, timeout=30, **kw):
    with httpx.Client(base_url=url, timeout=timeout) as c: return c.post('/', json=body, **kw)

class Paired(Router):
    "Every call waits until another call is inside too: calls that run one at a time break the barrier."
    targets = ['small', 'large']
    def __init__(self): self.barrier = threading.Barrier(2, timeout=20)
    def score_batch(self, qs):
        self.barrier.wait()
        return np.array([[0.9, 0.4]] * len(qs))

def test_runners_compute_calls_at_once():
    r = Paired()
    b = Batcher(r, batch_max=1, batch_wait=0, runners=2)
    async def two(): return await asyncio.gather(b.submit(['hi']), b.submit(['there']))
    got = arun(two())
    assert [len(h) for h, s in got] == [1, 1] and b.runs == 2 and b.describe()['runners'] == 2

def test_full_queue_gives_503_with_retry_after():
    r = Gated()
    app = make_app(r, batch_max=1, queue_max=2, deadline=30)
    with ServerThread(app) as srv, ThreadPoolExecutor(3) as ex:
        first = ex.submit(post, srv.url, {'query': 'one'})
        wait_for(r.entered.is_set, 'the first call')
        waiting = [ex.submit(post, srv.url, {'query': q}) for q in ('two', 'three')]
        wait_for(lambda: app.state.batcher.queued == 2, 'two queued queries')
        refused = post(srv.url, {'query': 'four'})
        health = httpx.get(srv.url + '/health', timeout=10) # never waits for routing work
        r.gate.set()
        statuses = [f.result().status_code for f in [first, *waiting]]
        m = httpx.get(srv.url + '/metrics').text
    assert refused.status_code == 503 and int(refused.headers['retry-after']) >= 1 and 'busy' in refused.json()['error']
    assert health.status_code == 200 and health.json()['queue'] == 2
    assert statuses == [200, 200, 200]
    assert 'query_router_shed_total{reason="queue_full"} 1.0' in m and 'query_router_requests_total{endpoint="/",status="503"} 1.0' in m

def test_deadline_miss_gives_504_and_drops_the_work():
    r = Gated()
    app = make_app(r, batch_max=1, deadline=0.3)
    with ServerThread(app) as srv, ThreadPoolExecutor(2) as ex:
        first = ex.submit(post, srv.url, {'query': 'one'})
        wait_for(r.entered.is_set, 'the first call')
        late = post(srv.url, {'query': 'two'}) # waits behind the held call past its deadline
        m = httpx.get(srv.url + '/metrics').text
        r.gate.set(); first.result()
        wait_for(lambda: app.state.batcher.queued == 0, 'an empty queue')
    assert late.status_code == 504 and 'deadline' in late.json()['error']
    assert first.result().status_code == 504
    assert 'query_router_deadline_misses_total 2.0' in m
    assert ['two'] not in r.calls # dropped, never computed

def raw_connect(srv):
    s = socket.create_connection(('127.0.0.1', srv.port), timeout=20); return s

def read_all(s)->bytes:
    out = b''
    while True:
        try: d = s.recv(65536)
        except ConnectionResetError: break
        if not d: break
        out += d
    return out

def test_slow_headers_are_disconnected():
    with ServerThread(make_app(Gated(), header_timeout=0.5)) as srv, raw_connect(srv) as s:
        s.sendall(b'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n') # and then nothing
        assert read_all(s) == b'' # closed by the server (a socket timeout would raise)

def test_slow_body_gets_408_and_is_disconnected():
    with ServerThread(make_app(Gated(), body_timeout=0.5)) as srv, raw_connect(srv) as s:
        s.sendall(b'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"query": ')
        got = read_all(s)
    assert got.startswith(b'HTTP/1.1 408') and b'did not arrive in time' in got

def test_chunked_body_over_the_limit_is_refused_early():
    with ServerThread(make_app(Gated(), max_body=4096)) as srv, raw_connect(srv) as s:
        s.sendall(b'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
        chunk = b'x' * 1000
        for _ in range(6): s.sendall(b'%x\r\n%s\r\n' % (len(chunk), chunk)) # 6,000 bytes of an endless body
        got = read_all(s)
    assert got.startswith(b'HTTP/1.1 413') and b'over the limit of 4096' in got

def test_declared_length_over_the_limit_is_refused_before_reading():
    with ServerThread(make_app(Gated(), max_body=4096)) as srv, raw_connect(srv) as s:
        s.sendall(b'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 536870912\r\n\r\n')
        got = read_all(s)
    assert got.startswith(b'HTTP/1.1 413') and b'536870912' in got

def test_batch_token_budget_and_hit_cap():
    r = Gated(); r.gate.set()
    with ServerThread(make_app(r, batch_tokens=100, max_k=20)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        big = c.post('/batch', json={'queries': ['word ' * 200] * 3})
        k = c.post('/', json={'query': 'hi', 'k': 21})
        h = c.get('/health').json()['limits']
    assert big.status_code == 413 and 'tokens' in big.json()['error']
    assert k.status_code == 422 and 'from 1 to 20' in k.json()['error']
    assert h['batch_tokens'] == 100 and h['max_k'] == 20 and h['batch_max'] == 32

def test_worker_factory_reads_its_options_from_the_environment(small_artifacts, monkeypatch):
    from query_router.serve import app_from_env, ENV_CONFIG
    monkeypatch.setenv(ENV_CONFIG, json.dumps({'artifacts': str(small_artifacts), 'router': None, 'k': 5, 'backends': None,
                                               'options': {'batch_max': 4, 'deadline': 3.0, 'cors_origins': []}, 'threads': 1, 'workers': 2}))
    app = app_from_env()
    assert app.state.batcher.batch_max == 4 and app.state.options.deadline == 3.0 and app.state.router.k == 5
