"The KNN router served by a real uvicorn server on loopback, asked with a real HTTP client."
import json, numpy as np, httpx, pytest
from query_router.serve import load_router, make_app, ServerThread

@pytest.fixture(scope='module')
def server(small_artifacts, embedder):
    router = load_router(small_artifacts, embedder=embedder)
    with ServerThread(make_app(router, max_body=4096, max_batch=8)) as srv:
        yield srv, router

def post(srv, path, body=None, raw=None):
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        if raw is not None: return c.post(path, content=raw, headers={'content-type': 'application/json'})
        return c.post(path, json=body)

def test_original_request_and_response_shape(server):
    srv, router = server
    r = post(srv, '/', {'query': 'Translate "good morning" into Spanish'})
    assert r.status_code == 200
    a = r.json()
    assert set(a) == {'hits', 'scores', 'route', 'policy', 'margin'}
    assert a['margin'] >= 0
    assert len(a['hits']) == 10 and set(a['hits'][0]) == {'id', 'category', 'similarity'}
    sims = [h['similarity'] for h in a['hits']]; assert sims == sorted(sims, reverse=True)
    sc = [s['score'] for s in a['scores']]; assert sc == sorted(sc, reverse=True)
    assert {s['target'] for s in a['scores']} == {'3B', '7B', '30B', '70B'}
    assert a['route'] == a['scores'][0]['target']

def test_scores_follow_the_formula(server):
    srv, router = server
    a = post(srv, '/', {'query': 'Prove that there are infinitely many primes.'}).json()
    w = np.clip([h['similarity'] for h in a['hits']], 0, None)
    cat = [h['category'] for h in a['hits']]
    for s in a['scores']:
        want = sum(wi for wi, c in zip(w, cat) if c == s['target']) / w.sum()
        assert abs(s['score'] - want) < 1e-3, (s, want)

def test_batch_and_policies(server):
    srv, router = server
    qs = ['hi!', 'Design a distributed rate limiter for 1M rps across regions']
    r = post(srv, '/batch', {'queries': qs, 'policy': 'threshold', 'param': 0.2}).json()['results']
    assert len(r) == 2 and all(x['policy'] == {'name': 'threshold', 'param': 0.2} for x in r)
    single = [post(srv, '/', {'query': q, 'policy': 'threshold', 'param': 0.2}).json() for q in qs]
    assert [x['route'] for x in r] == [x['route'] for x in single]
    cheap = post(srv, '/', {'query': qs[1], 'policy': 'utility', 'param': 10}).json()
    assert cheap['route'] == '3B' # a huge cost weight always picks the cheapest

@pytest.mark.parametrize('path,raw,status,msg', [
    ('/', b'{"query": ', 400, 'invalid JSON'),
    ('/', b'', 400, 'empty request body'),
    ('/', b'["hi"]', 400, 'JSON object'),
    ('/', b'{"q": "hi"}', 400, "missing 'query'"),
    ('/', b'{"query": 42}', 422, 'must be a string'),
    ('/', b'{"query": null}', 422, 'must be a string'),
    ('/', b'{"query": "   "}', 422, 'is empty'),
    ('/', b'{"query": "x", "policy": "cheapest-always"}', 422, 'unknown policy'),
    ('/', b'{"query": "x", "param": "high"}', 422, 'finite number'),
    ('/', b'{"query": "x", "k": 0}', 422, "'k' must be"),
    ('/', json.dumps({'query': 'x' * 5000}).encode(), 413, 'limit is 4096'),
    ('/batch', b'{"queries": []}', 422, 'non-empty list'),
    ('/batch', b'{"queries": ["a", 3]}', 422, 'queries[1]'),
    ('/batch', json.dumps({'queries': ['a'] * 9}).encode(), 413, 'limit per batch is 8'),
])
def test_bad_input_gets_a_clear_4xx(server, path, raw, status, msg):
    r = post(server[0], path, raw=raw)
    assert r.status_code == status, r.text
    assert msg in r.json()['error']

def test_long_query_is_truncated_not_rejected(server):
    r = post(server[0], '/', {'query': 'explain ' * 400})
    assert r.status_code == 200 and r.json()['route']

def test_health_and_metrics(server):
    srv, router = server
    with httpx.Client(base_url=srv.url) as c:
        h = c.get('/health').json()
        assert h['status'] == 'ok' and h['points'] == 300 and [t['name'] for t in h['targets']] == ['3B', '7B', '30B', '70B']
        c.post('/', content=b'nope'); c.post('/', json={'query': 'hello'})
        m = c.get('/metrics').text
    assert 'query_router_requests_total{endpoint="/",status="400"}' in m
    assert 'query_router_request_latency_seconds_bucket' in m and 'query_router_routes_total' in m
