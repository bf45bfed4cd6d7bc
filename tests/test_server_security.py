"Issue 13, server side: every bad input over real HTTP gets a clear 4xx (never a 5xx), keys, rate limits, content type, CORS, Host, docs, honest metrics."
import json, socket, threading, time
import httpx, numpy as np, pytest
from query_router.router import Router
from query_router.serve import make_app, ServerThread, load_router, hash_key, serve_cli

BIG = '9' * 5000
J = {'content-type': 'application/json'}
DEEP = '[' * 1100 + ']' * 1100
# (name, path, raw body, headers, status): the requests listed in issue 13's "Bad input", and their neighbours
CASES = [
    ('param 401 digits /', '/', '{"query": "x", "param": %s}' % ('9' * 401), J, 400),
    ('param 401 digits /batch', '/batch', '{"queries": ["x"], "param": %s}' % ('9' * 401), J, 400),
    ('param -401 digits', '/', '{"query": "x", "param": -%s}' % ('9' * 401), J, 400),
    ('param 5000 digits', '/', '{"query": "x", "param": %s}' % BIG, J, 400),
    ('k 5000 digits', '/', '{"query": "x", "k": %s}' % BIG, J, 400),
    ('query 5000 digits', '/', '{"query": %s}' % BIG, J, 400),
    ('policy 5000 digits', '/', '{"query": "x", "policy": %s}' % BIG, J, 400),
    ('unknown field 5000 digits', '/', '{"query": "x", "extra": %s}' % BIG, J, 400),
    ('queries item 5000 digits', '/batch', '{"queries": [%s]}' % BIG, J, 400),
    ('queries 5000 digits', '/batch', '{"queries": %s}' % BIG, J, 400),
    ('5000 digits, top level', '/', BIG, J, 400),
    ('nested 1100 in a field', '/', '{"query": "x", "extra": %s}' % DEEP, J, 400),
    ('nested 1100 as query', '/', '{"query": %s}' % DEEP, J, 400),
    ('nested 1100 top level', '/', DEEP, J, 400),
    ('nested 1100 objects', '/batch', '{"a":' * 1100 + '1' + '}' * 1100, J, 400),
    ('nested 1100 in queries', '/batch', '{"queries": %s}' % DEEP, J, 400),
    ('NaN param', '/', '{"query": "x", "param": NaN}', J, 400),
    ('Infinity param', '/', '{"query": "x", "param": Infinity}', J, 400),
    ('-Infinity param', '/batch', '{"queries": ["x"], "param": -Infinity}', J, 400),
    ('1e999 param', '/', '{"query": "x", "param": 1e999}', J, 400),
    ('threshold above 1', '/', '{"query": "x", "policy": "threshold", "param": 1.5}', J, 422),
    ('threshold below 0', '/', '{"query": "x", "policy": "threshold", "param": -0.1}', J, 422),
    ('utility weight below 0', '/', '{"query": "x", "policy": "utility", "param": -1}', J, 422),
    ('ordinal level 0', '/', '{"query": "x", "policy": "ordinal", "param": 0}', J, 422),
    ('ordinal level above 1', '/batch', '{"queries": ["x"], "policy": "ordinal", "param": 1.5}', J, 422),
    ('param string', '/', '{"query": "x", "param": "high"}', J, 422),
    ('param bool', '/', '{"query": "x", "param": true}', J, 422),
    ('k float', '/', '{"query": "x", "k": 2.5}', J, 422),
    ('k over the hit cap', '/', '{"query": "x", "k": 101}', J, 422),
    ('k negative', '/', '{"query": "x", "k": -5}', J, 422),
    ('policy list', '/', '{"query": "x", "policy": ["argmax"]}', J, 422),
    ('query object', '/', '{"query": {"a": 1}}', J, 422),
    ('queries object', '/batch', '{"queries": {"a": 1}}', J, 422),
    ('invalid UTF-8', '/', b'{"query": "\xff\xfe"}', J, 400),
    ('truncated JSON', '/', '{"query": "x"', J, 400),
    ('JSON string', '/', '"hello"', J, 400),
    ('JSON null', '/', 'null', J, 400),
    ('text/plain', '/', '{"query": "x"}', {'content-type': 'text/plain'}, 415),
    ('no content type', '/', '{"query": "x"}', {}, 415),
    ('form', '/batch', 'queries=x', {'content-type': 'application/x-www-form-urlencoded'}, 415),
    ('text/plain to the proxy', '/v1/chat/completions', '{"model": "router", "messages": [{"role": "user", "content": "hi"}]}', {'content-type': 'text/plain'}, 415),
    ('proxy 5000-digit seed', '/v1/chat/completions', '{"model": "router", "seed": %s, "messages": [{"role": "user", "content": "hi"}]}' % BIG, J, 400),
    ('proxy NaN temperature', '/v1/chat/completions', '{"model": "router", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}', J, 400),
    ('proxy Infinity temperature', '/v1/chat/completions', '{"model": "router", "temperature": Infinity, "messages": [{"role": "user", "content": "hi"}]}', J, 400),
    ('proxy nested 1100', '/v1/chat/completions', '{"model": "router", "messages": %s}' % DEEP, J, 400),
    ('over the body limit', '/', json.dumps({'query': 'x' * 10000}), J, 413),
    ('batch over the query limit', '/batch', json.dumps({'queries': ['a'] * 9}), J, 413),
]
# accepted: unpaired surrogates are replaced by U+FFFD
SURROGATES = [('/', '{"query": "\\ud800"}'), ('/', '{"query": "\\udfff"}'), ('/', '{"query": "hello \\ud83d world"}'),
              ('/batch', '{"queries": ["\\ud800", "\\udfff", "hello \\ud83d world"]}'), ('/', '{"query": "\\ud83d\\ude00 pair"}')]

@pytest.fixture(scope='module')
def router(small_artifacts, embedder): return load_router(small_artifacts, embedder=embedder)

BACKENDS = {'backends': {t: {'base_url': 'http://127.0.0.1:9/v1', 'model': t} for t in ('3B', '7B', '30B', '70B')}}

@pytest.fixture(scope='module')
def server(router):
    app = make_app(router, max_body=8192, max_batch=8, backends=BACKENDS)
    with ServerThread(app) as srv: yield srv

TRIED = {'bad': 0, '5xx': 0}

@pytest.mark.parametrize('name,path,raw,headers,status', CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(server, name, path, raw, headers, status):
    raw = raw.encode() if isinstance(raw, str) else raw
    r = httpx.post(server.url + path, content=raw, headers=headers, timeout=30)
    TRIED['bad'] += 1; TRIED['5xx'] += r.status_code >= 500
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    err = r.json()['error']
    assert (err['message'] if isinstance(err, dict) else err), name

@pytest.mark.parametrize('path,raw', SURROGATES)
def test_unpaired_surrogates_are_replaced(server, path, raw):
    r = httpx.post(server.url + path, content=raw.encode(), headers=J, timeout=30)
    TRIED['bad'] += 1; TRIED['5xx'] += r.status_code >= 500
    assert r.status_code == 200, r.text
    a = r.json(); assert (a['results'] if path == '/batch' else [a])[0]['route'] in ('3B', '7B', '30B', '70B')

def test_health_has_no_absolute_paths_and_docs_are_off(server):
    h = httpx.get(server.url + '/health').json()
    def strings(v): return [s for x in (v.values() if isinstance(v, dict) else v) for s in strings(x)] if isinstance(v, (dict, list)) else [v] if isinstance(v, str) else []
    assert not [s for s in strings(h) if s.startswith('/') or ':\\' in s], h
    assert h['limits']['max_body'] == 8192 and h['auth'] is False
    assert httpx.get(server.url + '/docs').status_code == 404 and httpx.get(server.url + '/openapi.json').status_code == 404

def test_cors_is_off_by_default(server):
    r = httpx.post(server.url + '/', json={'query': 'hi'}, headers={'origin': 'https://evil.example'}, timeout=30)
    assert r.status_code == 200 and 'access-control-allow-origin' not in r.headers

def test_metrics_count_what_was_sent(server):
    m = httpx.get(server.url + '/metrics').text
    assert 'status="500"' not in m and 'query_router_requests_total{endpoint="/",status="400"}' in m

KEY, OTHER = 'test-key-0123456789abcdef', 'other-key-0123456789abcdef'

@pytest.fixture(scope='module')
def locked(router, tmp_path_factory):
    kf = tmp_path_factory.mktemp('keys')/'keys.txt'
    kf.write_text(f'# one key stored as its digest, one as is\nsha256:{hash_key(KEY)}\n{OTHER}\n')
    app = make_app(router, api_keys=str(kf), rate_limit=3, allowed_hosts=('127.0.0.1', 'localhost'),
                   cors_origins=('https://app.example',), docs=True, backends=BACKENDS)
    with ServerThread(app) as srv: yield srv

def test_keys_are_required_except_for_health(locked):
    u = locked.url
    assert httpx.get(u + '/health').status_code == 200
    for path, body in [('/', {'query': 'hi'}), ('/batch', {'queries': ['hi']}), ('/v1/chat/completions', {'model': 'router', 'messages': []})]:
        r = httpx.post(u + path, json=body, timeout=30)
        assert r.status_code == 401 and r.headers['www-authenticate'] == 'Bearer', (path, r.text)
        assert httpx.post(u + path, json=body, headers={'authorization': 'Bearer wrong-key-0123456789'}).status_code == 401
    assert httpx.get(u + '/metrics').status_code == 401 and httpx.get(u + '/v1/models').status_code == 401
    ok = httpx.post(u + '/', json={'query': 'hi'}, headers={'authorization': f'Bearer {KEY}'}, timeout=30)
    assert ok.status_code == 200 and ok.json()['route']
    assert httpx.post(u + '/', json={'query': 'hi'}, headers={'x-api-key': OTHER}, timeout=30).status_code == 200

def test_rate_limit_per_key(locked):
    h = {'authorization': f'Bearer {OTHER}'}
    codes = [httpx.post(locked.url + '/', json={'query': 'hi'}, headers=h, timeout=30) for _ in range(4)]
    assert [r.status_code for r in codes].count(429) >= 1
    r = [r for r in codes if r.status_code == 429][0]
    assert int(r.headers['retry-after']) >= 1 and 'rate limit' in r.json()['error']

def test_host_cors_and_docs_when_configured(locked):
    assert httpx.get(locked.url + '/health', headers={'host': 'evil.example'}).status_code == 400
    pre = httpx.options(locked.url + '/', headers={'origin': 'https://app.example', 'access-control-request-method': 'POST',
                                                    'access-control-request-headers': 'authorization,content-type'})
    assert pre.status_code == 200 and pre.headers['access-control-allow-origin'] == 'https://app.example'
    bad = httpx.options(locked.url + '/', headers={'origin': 'https://evil.example', 'access-control-request-method': 'POST'})
    assert 'access-control-allow-origin' not in bad.headers
    assert httpx.get(locked.url + '/openapi.json', headers={'authorization': f'Bearer {KEY}'}).status_code == 200

def test_proxy_on_a_public_address_needs_keys(tmp_path, monkeypatch):
    monkeypatch.delenv('QUERY_ROUTER_API_KEYS', raising=False)
    with pytest.raises(ValueError, match='without API keys'):
        serve_cli.__wrapped__(artifacts=str(tmp_path), host='0.0.0.0', backends='backends.yaml')

class Broken(Router):
    "A router whose scores are NaN (a damaged artifact), or that blocks until `gate` opens."
    targets = ['a', 'b']
    def __init__(self, nan=False): self.nan, self.gate, self.entered = nan, threading.Event(), threading.Event()
    def score_batch(self, qs):
        self.entered.set()
        if not self.nan: self.gate.wait(20)
        return np.full((len(qs), 2), np.nan if self.nan else 0.5)

def test_nan_scores_are_an_error_never_a_200():
    with ServerThread(make_app(Broken(nan=True))) as srv:
        r = httpx.post(srv.url + '/', json={'query': 'hi'}, timeout=30)
        m = httpx.get(srv.url + '/metrics').text
    assert r.status_code == 500 and 'non-finite score' in r.json()['error']
    assert 'status="200"' not in m and 'query_router_requests_total{endpoint="/",status="500"} 1.0' in m

def test_client_disconnects_are_counted_apart():
    r = Broken()
    app = make_app(r, batch_max=1)
    with ServerThread(app) as srv:
        s = socket.create_connection(('127.0.0.1', srv.port))
        body = b'{"query": "hi"}'
        s.sendall(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
        assert r.entered.wait(20)
        s.close() # the client leaves while its query is being routed
        t = time.monotonic() + 20
        while 'query_router_client_disconnects_total{endpoint="/"} 1.0' not in (m := httpx.get(srv.url + '/metrics').text):
            assert time.monotonic() < t, m
            time.sleep(0.05)
        r.gate.set()
    assert 'endpoint="/",status=' not in m # nothing was sent, nothing counted as sent

JSONV = None
def test_fuzz_no_5xx_for_any_json_body(server):
    from hypothesis import given, settings, strategies as st, HealthCheck
    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
    scalar = st.none() | st.booleans() | st.integers(-10**120, 10**120) | st.floats(allow_nan=False, allow_infinity=False) | text
    value = st.recursive(scalar, lambda v: st.lists(v, max_size=4) | st.dictionaries(text, v, max_size=4), max_leaves=12)
    fields = st.fixed_dictionaries({}, optional={'query': value | text, 'queries': st.lists(value | text, max_size=5), 'policy': value | st.sampled_from(['argmax', 'threshold', 'utility']),
                                                 'param': value, 'k': value | st.integers(-5, 2000)})
    body = fields | value
    seen = []
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body, st.sampled_from(['/', '/batch', '/v1/chat/completions']))
    def check(b, path):
        r = httpx.post(server.url + path, content=json.dumps(b).encode(), headers=J, timeout=60)
        seen.append(r.status_code)
        assert r.status_code < 500 or (path.startswith('/v1/') and r.status_code in (502, 503, 504)), (b, r.status_code, r.text[:300])
    check()
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.binary(max_size=300), st.sampled_from(['/', '/batch']))
    def check_bytes(raw, path):
        r = httpx.post(server.url + path, content=raw, headers=J, timeout=60)
        seen.append(r.status_code); assert r.status_code < 500, (raw, r.status_code, r.text[:300])
    check_bytes()
    TRIED['bad'] += len(seen); TRIED['5xx'] += sum(s >= 500 and s not in (502, 503, 504) for s in seen)
    print(f"\nbad inputs tried over HTTP: {TRIED['bad']}, 5xx seen: {TRIED['5xx']}")
    assert TRIED['5xx'] == 0
