"""The proxy under fault: loopback mock backends that stall after their headers, drip, send gzip bombs, answer too much, echo keys,
set cookies; clients that go away; request bodies that cannot be re-encoded. Every answer is a deliberate status, never a 500."""
import contextlib, json, os, socket, time
import httpx, pytest
from query_router.proxy import ApiError, encode_chat, mount_proxy, parse_chat, routing_text
from query_router.serve import make_app, ServerThread

KEY = 'sk-test-0123456789abcdefXYZ' # the backends' API key, as an environment variable would hold it
os.environ['QR_FAULT_KEY'] = KEY # (module-scoped servers read it when they start)
SEEN = [] # every status a test got from the proxy: none may be a 500

@pytest.fixture(scope='module')
def router(small_router): return small_router

@pytest.fixture(scope='module')
def backends(mock_backends): return mock_backends

@pytest.fixture(autouse=True)
def fresh(request, monkeypatch):
    monkeypatch.setenv('QR_FAULT_KEY', KEY)
    if 'backends' in request.fixturenames:
        for m in request.getfixturevalue('backends')[0].values(): m.reset('ok', delay=0.0, chunks=4, hang=3.0, size=1 << 20)
    yield
    assert 500 not in SEEN, 'the proxy answered 500'

def config(urls, timeout=5.0, backend=None, **proxy):
    "Every backend with the key; `backend` adds fields to 3B's entry."
    bs = {t: {'base_url': u + '/v1', 'model': f'model-{t}', 'timeout': timeout, 'api_key_env': 'QR_FAULT_KEY'} for t, u in urls.items()}
    bs['3B'].update(backend or {})
    return {'backends': bs, 'proxy': {'deadline': 10, **proxy}}

@contextlib.contextmanager
def proxy_server(router, cfg, timeout=20):
    with ServerThread(make_app(router, backends=cfg)) as srv, httpx.Client(base_url=srv.url, timeout=timeout) as c:
        yield c

def post(c, body, **kw):
    r = c.post('/v1/chat/completions', json=body, **kw)
    SEEN.append(r.status_code)
    return r

def chat(text='Prove that the square root of 2 is irrational.', model='3B', **kw):
    return {'model': model, 'messages': [{'role': 'user', 'content': text}], **kw}

def events(c, body):
    "Status, headers and the data of each event of a streamed answer."
    with c.stream('POST', '/v1/chat/completions', json=body) as r:
        SEEN.append(r.status_code)
        if r.status_code != 200: return r.status_code, r.headers, json.loads(r.read())
        return r.status_code, r.headers, [l[5:].strip() for l in r.iter_lines() if l.startswith('data:')]

def others(mocks, but='3B'): return sum(len(m.requests) for t, m in mocks.items() if t != but)

def wait_for(cond, seconds=15.0):
    "Poll `cond` until it holds (the proxy reacts asynchronously); the assertion is on `cond`, not on time."
    end = time.monotonic() + seconds
    while time.monotonic() < end and not cond(): time.sleep(0.05)
    return cond()

# A started answer is final.

@pytest.mark.parametrize('timeout,deadline,status,code', [(0.5, 10, 504, 'backend_timed_out_after_commit'), (5.0, 1.0, 504, 'deadline_exceeded')])
def test_no_second_backend_after_status_and_headers(router, backends, timeout, deadline, status, code):
    mocks, urls = backends
    mocks['3B'].reset('headers_stall', hang=8)
    with proxy_server(router, config(urls, timeout, deadline=deadline)) as c:
        r = post(c, chat(model='router-threshold-0')) # threshold 0: 3B is chosen, and would fall back to 7B
    e = r.json()['error']
    assert (r.status_code, e['code'], e['type']) == (status, code, 'upstream_error'), r.text
    assert 'not sent to another backend' in e['message'] and e['attempts'][-1]['after_commit'] is True
    assert r.headers['x-route-chosen'] == '3B' and others(mocks) == 0

def test_streamed_status_then_stall_is_a_clean_504_without_fallback(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('headers_stall', hang=8)
    with proxy_server(router, config(urls, 5.0, deadline=1)) as c:
        status, _, body = events(c, chat(model='router-threshold-0', stream=True))
    assert (status, body['error']['code']) == (504, 'deadline_exceeded') and others(mocks) == 0

def test_a_5xx_before_any_answer_still_falls_back(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('500')
    with proxy_server(router, config(urls)) as c: r = post(c, chat(model='router-threshold-0'))
    assert (r.status_code, r.headers['x-route-target']) == (200, '7B')

def test_a_redirect_is_not_an_answer_and_its_location_is_not_shown(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('redirect')
    with proxy_server(router, config(urls)) as c: r = post(c, chat(model='router-threshold-0'))
    assert (r.status_code, r.headers['x-route-target']) == (200, '7B')
    assert json.loads(r.headers['x-route-fallbacks']) == [{'target': '3B', 'error': 'HTTP 307'}]
    assert 'location' not in r.headers and '10.0.0.7' not in r.text + json.dumps(dict(r.headers))

# One deadline per request.

@pytest.mark.parametrize('stream', [False, True])
def test_a_dripped_body_cannot_hold_the_client_past_the_deadline(router, backends, stream):
    mocks, urls = backends
    mocks['3B'].reset('drip', delay=0.05) # a few hundred bytes at 20 per second: well past the client's own 20 s timeout
    with proxy_server(router, config(urls, timeout=5.0, deadline=1.0)) as c: # the read timeout never fires
        if not stream:
            r = post(c, chat())
            assert (r.status_code, r.json()['error']['code']) == (504, 'deadline_exceeded'), r.text
        else:
            status, h, evs = events(c, chat(stream=True))
            assert (status, h['x-route-target']) == (200, '3B')
            err = json.loads(evs[-1])['error']
            assert err['code'] == 'deadline_exceeded' and 'incomplete' in err['message']
    assert others(mocks) == 0

def test_the_deadline_spans_fallbacks(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('hang', hang=4); mocks['7B'].reset('hang', hang=4)
    with proxy_server(router, config(urls, timeout=5.0, deadline=1.0)) as c:
        r = post(c, chat(model='router-threshold-0'))
    e = r.json()['error']
    assert (r.status_code, e['code']) == (504, 'backends_timed_out') and 'deadline' in e['message'], r.text
    assert len(mocks['7B'].requests) == 0 # 3B used the whole request's time; nothing was left to try 7B

def test_a_backend_deadline_leaves_time_for_the_fallback(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('hang', hang=4)
    with proxy_server(router, config(urls, timeout=5.0, backend={'deadline': 0.5}, deadline=10)) as c:
        r = post(c, chat(model='router-threshold-0'))
    assert (r.status_code, r.headers['x-route-target']) == (200, '7B'), r.text
    assert 'deadline (0.5s)' in json.loads(r.headers['x-route-fallbacks'])[0]['error']

# A client that goes away cancels the upstream work.

def attempts(c, target, outcome):
    line = f'query_router_proxy_attempts_total{{outcome="{outcome}",target="{target}"}}'
    return next((float(l.split()[-1]) for l in c.get('/metrics').text.splitlines() if l.startswith(line)), 0.0)

def test_a_client_that_leaves_cancels_the_upstream_request_and_the_fallbacks(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('hang', hang=6) # without cancelling, the proxy would give up on 3B after 1 s and ask 7B
    with proxy_server(router, config(urls, timeout=1.0)) as c:
        body = json.dumps(chat(model='router-threshold-0')).encode()
        with socket.create_connection((c.base_url.host, c.base_url.port)) as s: # a client that leaves once 3B is working on its request
            s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                      b'Content-Length: %d\r\n\r\n' % len(body) + body)
            assert wait_for(lambda: len(mocks['3B'].requests) == 1)
        assert wait_for(lambda: attempts(c, '3B', 'client_gone') == 1), 'the proxy did not notice the client leave'
        assert wait_for(lambda: len(mocks['3B'].gone) == 1), 'the request to 3B was not cancelled'
        m = c.get('/metrics').text # counted apart, not as an answer the proxy sent
        assert 'status="499"' in m or 'query_router_client_disconnects_total{endpoint="/v1/chat/completions"} 1.0' in m
    assert others(mocks) == 0

def test_a_client_that_leaves_mid_stream_cancels_the_upstream_stream(router, backends):
    mocks, urls = backends
    mocks['70B'].reset('ok', delay=0.3, chunks=40) # 12 s of stream
    with proxy_server(router, config(urls)) as c:
        with c.stream('POST', '/v1/chat/completions', json=chat(model='70B', stream=True)) as r:
            assert next(l for l in r.iter_lines() if l.startswith('data:'))
        assert wait_for(lambda: len(mocks['70B'].gone) == 1), 'the backend kept streaming to nobody'
        assert wait_for(lambda: attempts(c, '70B', 'client_gone') == 1)
    assert len(mocks['70B'].produced) < 40

# Bounded responses.

@pytest.mark.parametrize('stream', [False, True])
def test_gzip_answers_are_decoded(router, backends, stream):
    mocks, urls = backends
    mocks['3B'].reset('gzip')
    with proxy_server(router, config(urls)) as c:
        if not stream:
            r = post(c, chat('hello there'))
            assert r.status_code == 200 and 'content-encoding' not in r.headers
            assert r.json()['choices'][0]['message']['content'] == 'mock-3B answers: hello there'
        else:
            status, _, evs = events(c, chat('hello there', stream=True))
            assert status == 200 and evs[-1] == '[DONE]'
            assert ''.join(json.loads(e)['choices'][0]['delta'].get('content', '') for e in evs[:-1]).strip() == 'mock-3B answers: hello there'

@pytest.mark.parametrize('stream', [False, True])
def test_a_decompression_bomb_is_cut_at_the_cap(router, backends, stream):
    mocks, urls = backends
    mocks['3B'].reset('bomb', size=64 << 20) # 64 MiB of blanks in about 64 KiB of gzip
    with proxy_server(router, config(urls, max_response=1 << 20)) as c:
        if not stream: status, body = (r := post(c, chat(model='router-threshold-0'))).status_code, r.json()
        else: status, _, body = events(c, chat(model='router-threshold-0', stream=True))
    assert (status, body['error']['code']) == (502, 'response_too_large'), body
    assert others(mocks) == 0 # 3B had answered: too large is final, not a reason to ask 7B

@pytest.mark.parametrize('stream', [False, True])
def test_an_answer_over_the_cap(router, backends, stream):
    mocks, urls = backends
    mocks['3B'].reset('big', size=300_000)
    with proxy_server(router, config(urls, max_response=100_000)) as c:
        if not stream:
            r = post(c, chat())
            assert (r.status_code, r.json()['error']['code']) == (502, 'response_too_large')
        else: # the padding comes late in the stream: the client already has the first chunk, so the stream ends with an error event
            status, _, evs = events(c, chat(stream=True))
            assert status == 200 and json.loads(evs[-1])['error']['code'] == 'response_too_large'
        mocks['3B'].reset('big', size=50_000)
        assert post(c, chat()).status_code == 200 # under the cap

def test_a_long_error_body_is_not_relayed_whole(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('big_error', size=1 << 20)
    with proxy_server(router, config(urls, max_error_body=4096)) as c: r = post(c, chat())
    e = r.json()['error']
    assert (r.status_code, e['code']) == (400, 'upstream_error_not_relayed') and len(r.content) < 2000

# Headers and secrets.

def test_backend_cookies_cors_and_location_are_not_relayed(router, backends):
    mocks, urls = backends
    mocks['3B'].reset('cookies')
    with proxy_server(router, config(urls)) as c: r = post(c, chat())
    assert r.status_code == 200 and r.headers['x-backend'] == 'mock-3B'
    assert not [h for h in r.headers if h in ('set-cookie', 'location') or h.startswith('access-control-')], dict(r.headers)

@pytest.mark.parametrize('mode,stream,status', [('echo_key', False, 401), ('echo_key_500', False, 502), ('leak_key', False, 200), ('leak_key', True, 200)])
def test_the_backend_key_never_reaches_the_client(router, backends, mode, stream, status):
    mocks, urls = backends
    mocks['3B'].reset(mode)
    with proxy_server(router, config(urls)) as c:
        with c.stream('POST', '/v1/chat/completions', json=chat(stream=stream)) as r:
            SEEN.append(r.status_code)
            raw = r.read()
    assert mocks['3B'].requests[-1]['headers']['authorization'] == f'Bearer {KEY}' # the backend got it...
    assert r.status_code == status
    everything = raw.decode() + json.dumps(dict(r.headers))
    assert KEY not in everything and KEY[:12] not in everything # ...and nothing of it came back
    assert '[redacted]' in everything

# Bad input in chat bodies.

BAD = [(b'{"model": "3B", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 'NaN'),
       (b'{"model": "3B", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', 'Infinity'),
       (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "temperature": -Infinity}', 'Infinity'),
       (b'{"model": "3B", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', 'out of range'),
       (b'{"model": "3B", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b'0' * 5000 + b'}', 'digits'),
       (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "seed": ' + b'9' * 401 + b'}', 'digits'),
       (b'{"model": "3B", "messages": [{"role": "user", "content": "hi"}], "x": ' + b'[' * 1100 + b']' * 1100 + b'}', 'nested'),
       (b'{"model": "3B", "messages": [{"role": "user", "content": ' + b'{"a": ' * 1100 + b'1' + b'}' * 1100 + b'}]}', 'nested'),
       (b'{"model": "3B", "messages": [{"role": "user", "content": "hi", "x": ' + b'[' * 80 + b']' * 80 + b'}]}', 'nested')]

@pytest.mark.parametrize('raw,msg', BAD, ids=range(len(BAD)))
def test_bodies_that_cannot_be_re_encoded_are_refused(router, backends, raw, msg):
    mocks, urls = backends
    with proxy_server(router, config(urls)) as c:
        r = c.post('/v1/chat/completions', content=raw, headers={'content-type': 'application/json'}); SEEN.append(r.status_code)
    assert r.status_code == 400 and msg in r.json()['error']['message'], r.text
    assert sum(len(m.requests) for m in mocks.values()) == 0

@pytest.fixture(scope='module')
def shared_client(router, backends):
    with proxy_server(router, config(backends[1])) as c: yield c

@pytest.mark.parametrize('text', [r'\ud800', r'\udfff', r'hello \ud83d world', r'\udc00\ud800 two'])
@pytest.mark.parametrize('model', ['router', '7B'])
def test_lone_surrogates_are_replaced_and_routed(shared_client, backends, router, text, model):
    raw = ('{"model": "%s", "messages": [{"role": "user", "content": "%s"}], "user": "%s"}' % (model, text, text)).encode()
    r = shared_client.post('/v1/chat/completions', content=raw, headers={'content-type': 'application/json'}); SEEN.append(r.status_code)
    assert r.status_code == 200, r.text
    want = json.loads(f'"{text}"', strict=False).encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')
    got = backends[0][r.headers['x-route-target']].requests[-1]['body']
    assert got['messages'][0]['content'] == want and got['user'] == want and '\ufffd' in want
    if model == 'router': assert r.headers['x-route-target'] == router.route(want)

@pytest.mark.parametrize('model,ok', [('router-threshold-1.5', False), ('router-threshold--0.1', False), ('router-utility--1', False),
                                      ('router-threshold-nan', False), ('router-utility-inf', False), ('router-threshold-1e999', False),
                                      ('router-threshold-0', True), ('router-threshold-1', True), ('router-utility-0', True),
                                      ('router-ordinal-0.5', True), ('router-ordinal-1', True), ('router-ordinal-0', False), ('router-ordinal-1.5', False),
                                      ('router-smooth-0.5', True), ('router-smooth-0', True), ('router-smooth-1.2', False), ('router-smooth--0.1', False)])
def test_routing_parameters_are_range_checked(shared_client, model, ok):
    r = post(shared_client, chat('hi', model))
    assert r.status_code == (200 if ok else 400), r.text
    if not ok: assert r.json()['error']['param'] == 'model'

def test_an_ordinal_level_out_of_range_in_the_backends_file_is_refused(router, backends):
    with pytest.raises(ValueError, match=r'ordinal policy.s cumulative level: a number in \(0, 1\]'): make_app(router, backends=config(backends[1], policy='ordinal', param=0))

def test_a_negative_utility_weight_in_the_backends_file_is_refused(router, backends):
    with pytest.raises(ValueError, match='cost weight λ: a number >= 0'): make_app(router, backends=config(backends[1], policy='utility', param=-1))

def test_the_margin_header(shared_client, router):
    from query_router.proxy import route_margin
    import numpy as np
    q = 'Write a Python function that merges two sorted lists.'
    r = post(shared_client, chat(q, 'router-utility-0.5'))
    s = router.score_batch([q])[0]
    want = route_margin(s, router.targets.index(r.headers['x-route-target']), 'utility', 0.5, router.costs)
    assert abs(float(r.headers['x-route-margin']) - want) < 1e-3 and want >= 0
    assert 'x-route-margin' not in post(shared_client, chat(q, '7B')).headers # pinned: nothing was decided

# Scoring goes through the server's batcher when there is one.

def test_the_proxy_scores_through_the_given_callable(router, backends):
    from fastapi import FastAPI
    seen = []
    async def score(texts):
        seen.append(list(texts)); return router.score_batch(texts)
    app = FastAPI(); app.state.score_async = score # as make_app exposes its batcher
    mount_proxy(app, router, config(backends[1]))
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + '/v1/chat/completions', json=chat('hello world', 'router'), timeout=20); SEEN.append(r.status_code)
    assert r.status_code == 200 and seen == [['hello world']]
    assert app.state.proxy.lock is None # no global lock around scoring

# Fuzz: whatever the body, the proxy's parsing answers a 4xx or a body it can re-encode.

def test_fuzz_parse_and_re_encode():
    hyp = pytest.importorskip('hypothesis')
    from hypothesis import given, settings, strategies as st, HealthCheck
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=30)
    message = st.fixed_dictionaries({'role': st.sampled_from(['user', 'assistant', 'system']) | values, 'content': values})
    body = st.fixed_dictionaries({'model': st.sampled_from(['router', '3B', 'router-threshold-0.5']) | values,
                                  'messages': st.lists(message, max_size=3) | values}, optional={'stream': values, 'temperature': values, 'seed': values})
    surrogates = st.text(alphabet=st.characters(min_codepoint=0xd800, max_codepoint=0xdfff) | st.characters(max_codepoint=0x7f), max_size=10)
    def check(raw:bytes):
        try: b = parse_chat(raw)
        except ApiError as e: assert 400 <= e.status < 500; return
        json.loads(encode_chat(b, 'm'))
        try: routing_text(b['messages'])
        except ApiError as e: assert e.status == 400
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body, surrogates)
    def run(b, s):
        check(json.dumps(b).encode())
        check(json.dumps({'model': 'router', 'messages': [{'role': 'user', 'content': s}]}).encode())
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def run_bytes(raw): check(raw)
    run(); run_bytes()
