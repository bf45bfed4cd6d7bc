"The OpenAI-compatible routing proxy, end to end: real mock backends and a real router server on loopback, real HTTP clients."
import contextlib, json, socket, threading, time
import httpx, pytest
from query_router.proxy import MockBackend, load_backends, parse_backends
from query_router.serve import load_router, make_app, ServerThread

TIMEOUT, HANG = 0.5, 1.5 # the proxy's read timeout for the mocks, and how long a hanging mock hangs

@pytest.fixture(scope='module')
def router(small_artifacts, embedder): return load_router(small_artifacts, embedder=embedder)

@pytest.fixture(scope='module')
def backends(router):
    "One mock backend per target, each a real uvicorn server."
    mocks = {t: MockBackend(f'mock-{t}', hang=HANG) for t in router.targets}
    with contextlib.ExitStack() as stack:
        urls = {t: stack.enter_context(ServerThread(m.app())).url for t, m in mocks.items()}
        yield mocks, urls

@pytest.fixture(autouse=True)
def fresh(request):
    "Every mock answers normally at the start of each test."
    if 'backends' in request.fixturenames:
        for m in request.getfixturevalue('backends')[0].values(): m.reset('ok', delay=0.0, chunks=4, hang=HANG)

def config(urls, targets=None, **proxy):
    return {'backends': {t: {'base_url': urls[t] + '/v1', 'model': f'model-{t}', 'timeout': TIMEOUT} for t in (targets or urls)},
            **({'proxy': proxy} if proxy else {})}

@contextlib.contextmanager
def router_server(router, cfg):
    with ServerThread(make_app(router, backends=cfg)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c

@pytest.fixture(scope='module')
def client(router, backends):
    with router_server(router, config(backends[1])) as c: yield c

def chat(text, model='router', **kw): return {'model': model, 'messages': [{'role': 'user', 'content': text}], **kw}
Q = 'Prove that the square root of 2 is irrational.'

def test_routed_request_is_forwarded_and_answered_unchanged(client, router, backends):
    mocks = backends[0]
    r = client.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0.4', temperature=0.2, max_tokens=7, user='u1'),
                    headers={'authorization': 'Bearer client-key'})
    assert r.status_code == 200, r.text
    t = r.headers['x-route-target']
    assert t == router.route(Q, 'threshold', 0.4) == r.headers['x-route-chosen']
    got = mocks[t].requests[-1]
    assert got['body'] == chat(Q, f'model-{t}', temperature=0.2, max_tokens=7, user='u1') # only the model name changed
    assert 'authorization' not in got['headers'] # the client's key for the router is not passed on
    assert r.json()['choices'][0]['message']['content'] == f'mock-{t} answers: {Q}' and r.json()['model'] == f'model-{t}'
    assert sum(len(m.requests) for m in mocks.values()) == 1
    h = r.headers
    assert (h['x-route-policy'], h['x-route-param'], h['x-route-model'], h['x-backend']) == ('threshold', '0.4', f'model-{t}', f'mock-{t}')
    assert json.loads(h['x-route-fallbacks']) == [] and float(h['x-route-routing-ms']) > 0
    scores = json.loads(h['x-route-scores'])
    assert list(scores) == router.targets
    assert all(abs(scores[k] - v) < 1e-3 for k, v in router.score(Q).items())

@pytest.mark.parametrize('model,policy,param', [('router', 'argmax', None), ('router-argmax', 'argmax', None),
                                                ('router-threshold-0.2', 'threshold', 0.2), ('router-threshold-0.6', 'threshold', 0.6),
                                                ('router-utility-0.5', 'utility', 0.5), ('router-utility-100', 'utility', 100)])
def test_model_names_choose_the_policy(client, router, model, policy, param):
    for q in ['hi there!', 'Write a Python function that merges two sorted lists.', Q]:
        r = client.post('/v1/chat/completions', json=chat(q, model))
        assert r.status_code == 200, r.text
        assert r.headers['x-route-target'] == router.route(q, policy, param), (model, q)
        assert r.headers['x-route-policy'] == policy

def test_utility_with_a_huge_cost_weight_takes_the_cheapest(client, router):
    r = client.post('/v1/chat/completions', json=chat('Design a distributed consensus protocol and prove it safe', 'router-utility-100'))
    assert r.headers['x-route-target'] == router.targets[0]

@pytest.mark.parametrize('route_on,want', [('last_user', 'prove it is irrational'), ('all_user', 'what is sqrt 2?\nprove it is irrational'),
                                           ('last_n', 'about 1.414\nprove it is irrational')])
def test_what_the_router_reads_is_configurable(router, backends, route_on, want):
    msgs = [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'what is sqrt 2?'},
            {'role': 'assistant', 'content': 'about 1.414'}, {'role': 'user', 'content': [{'type': 'text', 'text': 'prove it is irrational'}]}]
    with router_server(router, config(backends[1], route_on=route_on, last_n=2)) as c:
        r = c.post('/v1/chat/completions', json={'model': 'router', 'messages': msgs})
    assert r.status_code == 200, r.text
    scores = json.loads(r.headers['x-route-scores'])
    assert all(abs(scores[k] - v) < 1e-3 for k, v in router.score(want).items()), (scores, router.score(want))

def test_pinning_a_target(client, backends):
    mocks = backends[0]
    r = client.post('/v1/chat/completions', json=chat('hi', '30B'))
    assert (r.status_code, r.headers['x-route-target'], r.headers['x-route-policy']) == (200, '30B', 'pinned')
    assert 'x-route-scores' not in r.headers and len(mocks['30B'].requests) == 1
    mocks['30B'].reset('500') # a pinned target does not fall back by default
    r = client.post('/v1/chat/completions', json=chat('hi', '30B'))
    assert r.status_code == 502 and [a['target'] for a in r.json()['error']['attempts']] == ['30B']
    assert len(mocks['70B'].requests) == 0

def test_pinned_fallback_when_configured(router, backends):
    backends[0]['30B'].reset('500')
    with router_server(router, config(backends[1], fallback_pinned=True)) as c:
        r = c.post('/v1/chat/completions', json=chat('hi', '30B'))
    assert (r.status_code, r.headers['x-route-target'], r.headers['x-route-chosen']) == (200, '70B', '30B')

@pytest.mark.parametrize('model,status,code,msg', [('gpt-4o', 404, 'model_not_found', "unknown model 'gpt-4o'"),
                                                   ('router-mf-0.1', 404, 'model_not_found', 'unknown model'),
                                                   ('router-threshold-high', 400, None, 'must be a number'),
                                                   ('router-argmax-1', 400, None, 'takes no parameter'),
                                                   (None, 400, None, "missing 'model'"), (7, 400, None, "'model' must be a string")])
def test_unknown_models_are_refused_openai_style(client, model, status, code, msg):
    body = chat('hi', model)
    if model is None: del body['model']
    r = client.post('/v1/chat/completions', json=body)
    assert r.status_code == status and r.json()['error']['code'] == code and msg in r.json()['error']['message'], r.text
    assert set(r.json()['error']) >= {'message', 'type', 'param', 'code'}

@pytest.mark.parametrize('raw,status,msg', [
    (b'', 400, 'empty request body'), (b'{"model": "router", ', 400, 'invalid JSON'), (b'["hi"]', 400, 'JSON object'),
    (b'\xff\xfe', 400, 'invalid JSON'), (b'{"model": "router"}', 400, "missing 'messages'"),
    (b'{"model": "router", "messages": "hi"}', 400, "'messages' must be a list"), (b'{"model": "router", "messages": []}', 400, 'is empty'),
    (b'{"model": "router", "messages": ["hi"]}', 400, 'messages[0] must be an object'),
    (b'{"model": "router", "messages": [{"content": "hi"}]}', 400, "string 'role'"),
    (b'{"model": "router", "messages": [{"role": "system", "content": "hi"}]}', 400, "no message with role 'user'"),
    (b'{"model": "router", "messages": [{"role": "user", "content": "  "}]}', 400, 'no text to route on'),
    (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "'stream' must be true or false"),
])
def test_bad_requests_get_a_clear_4xx(client, backends, raw, status, msg):
    r = client.post('/v1/chat/completions', content=raw, headers={'content-type': 'application/json'})
    assert r.status_code == status and msg in r.json()['error']['message'], r.text
    assert r.json()['error']['type'] == 'invalid_request_error'
    assert sum(len(m.requests) for m in backends[0].values()) == 0 # nothing was forwarded

def test_body_over_the_limit(router, backends):
    with router_server(router, config(backends[1], max_body=2000)) as c:
        r = c.post('/v1/chat/completions', json=chat('x' * 3000))
    assert r.status_code == 413 and 'limit' in r.json()['error']['message']

def test_streaming_is_relayed_as_it_arrives(client, backends, router):
    m = backends[0]['70B'].reset('ok', delay=0.3, chunks=5)
    with client.stream('POST', '/v1/chat/completions', json=chat(Q, '70B', stream=True)) as r:
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/event-stream')
        assert r.headers['x-route-target'] == '70B'
        events, produced_at_first = [], None
        for line in r.iter_lines():
            if not line.startswith('data:'): continue
            if produced_at_first is None: produced_at_first, t_first = len(m.produced), time.perf_counter()
            events.append(line[5:].strip())
    assert produced_at_first < 5, 'the first chunk reached the client only after the backend produced the last: the stream was buffered'
    assert m.produced[-1] - m.produced[0] > 1.0 # the backend took its time...
    assert events[-1] == '[DONE]'
    text = ''.join(json.loads(e)['choices'][0]['delta'].get('content', '') for e in events[:-1])
    assert text.strip() == f'mock-70B answers: {Q}'
    assert m.requests[-1]['body']['stream'] is True and m.requests[-1]['body']['model'] == 'model-70B'

def test_a_slow_stream_does_not_block_other_requests(client, backends):
    backends[0]['70B'].reset('ok', delay=0.4, chunks=5)
    done = {}
    def slow():
        with client.stream('POST', '/v1/chat/completions', json=chat(Q, '70B', stream=True)) as r:
            for _ in r.iter_lines(): pass
        done['stream'] = time.perf_counter()
    th = threading.Thread(target=slow); th.start(); time.sleep(0.3)
    with httpx.Client(base_url=str(client.base_url), timeout=30) as c2:
        r = c2.post('/v1/chat/completions', json=chat('hi', '3B'))
    done['quick'] = time.perf_counter(); th.join()
    assert r.status_code == 200 and done['quick'] < done['stream']

def test_fallback_on_5xx_goes_to_the_next_more_expensive_target(client, backends):
    mocks = backends[0]
    mocks['3B'].reset('500')
    r = client.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0')) # threshold 0: the cheapest target always qualifies
    assert r.status_code == 200, r.text
    assert (r.headers['x-route-chosen'], r.headers['x-route-target']) == ('3B', '7B')
    assert json.loads(r.headers['x-route-fallbacks']) == [{'target': '3B', 'error': 'HTTP 500'}]
    assert r.json()['choices'][0]['message']['content'].startswith('mock-7B')
    assert [len(mocks[t].requests) for t in ['3B', '7B', '30B', '70B']] == [1, 1, 0, 0]

def test_fallback_on_connection_error(router, backends):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); dead = s.getsockname()[1] # a port nobody listens on
    urls = {**backends[1], '3B': f'http://127.0.0.1:{dead}'}
    with router_server(router, config(urls)) as c:
        r = c.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
    assert (r.status_code, r.headers['x-route-target']) == (200, '7B')
    assert json.loads(r.headers['x-route-fallbacks'])[0]['error'].startswith('connection error')

def test_fallback_on_timeout_and_504_when_all_time_out(router, backends):
    mocks = backends[0]
    mocks['3B'].reset('hang')
    with router_server(router, config(backends[1], max_tries=2)) as c:
        t0 = time.perf_counter()
        r = c.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
        assert (r.status_code, r.headers['x-route-target']) == (200, '7B')
        assert time.perf_counter() - t0 < HANG # the proxy gave up on 3B after its timeout, not when 3B finished
        assert 'timeout' in json.loads(r.headers['x-route-fallbacks'])[0]['error']
        mocks['7B'].reset('hang')
        r = c.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
    e = r.json()['error']
    assert (r.status_code, e['code'], e['type']) == (504, 'backends_timed_out', 'upstream_error')
    assert [a['target'] for a in e['attempts']] == ['3B', '7B'] and 'timeout' in e['message']
    assert len(mocks['30B'].requests) == 0 # max_tries=2

def test_502_lists_what_was_tried(client, backends):
    mocks = backends[0]
    for m in mocks.values(): m.reset('500')
    r = client.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
    e = r.json()['error']
    assert (r.status_code, e['code']) == (502, 'backends_failed')
    assert [(a['target'], a['model'], a['error']) for a in e['attempts']] == [(t, f'model-{t}', 'HTTP 500') for t in ['3B', '7B', '30B']]
    assert 'mock-3B is broken' in e['attempts'][0]['detail']
    assert len(mocks['70B'].requests) == 0 # max_tries defaults to 3
    assert json.loads(r.headers['x-route-fallbacks'])[0] == {'target': '3B', 'error': 'HTTP 500'}

def test_backend_4xx_is_returned_as_it_is(client, backends):
    mocks = backends[0]
    mocks['3B'].reset('400')
    r = client.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
    assert r.status_code == 400 and r.json() == {'error': {'message': 'mock-3B refuses', 'type': 'invalid_request_error', 'code': 'refused'}}
    assert r.headers['x-route-target'] == '3B' and len(mocks['7B'].requests) == 0

@pytest.mark.parametrize('mode', ['500', 'hang'])
def test_streaming_falls_back_before_the_first_byte(client, backends, mode):
    backends[0]['3B'].reset(mode)
    with client.stream('POST', '/v1/chat/completions', json=chat(Q, 'router-threshold-0', stream=True)) as r:
        body = r.read().decode()
    assert (r.status_code, r.headers['x-route-target']) == (200, '7B')
    assert json.loads(r.headers['x-route-fallbacks'])[0]['target'] == '3B'
    assert 'mock-7B' in body and body.rstrip().endswith('data: [DONE]')

@pytest.mark.parametrize('mode', ['stall', 'die'])
def test_streaming_failure_after_the_first_byte_ends_with_an_error_event(client, backends, mode):
    backends[0]['3B'].reset(mode)
    with client.stream('POST', '/v1/chat/completions', json=chat(Q, 'router-threshold-0', stream=True)) as r:
        events = [l[5:].strip() for l in r.iter_lines() if l.startswith('data:')]
    assert (r.status_code, r.headers['x-route-target']) == (200, '3B') # already committed to 3B
    assert json.loads(events[0])['choices'][0]['delta']['role'] == 'assistant'
    err = json.loads(events[-1])['error']
    assert err['code'] == 'stream_interrupted' and 'incomplete' in err['message']
    assert len(backends[0]['7B'].requests) == 0

def test_only_targets_with_a_backend_are_served(router, backends):
    with router_server(router, config(backends[1], targets=['3B', '70B'])) as c:
        ids = [m['id'] for m in c.get('/v1/models').json()['data']]
        assert ids[-2:] == ['3B', '70B'] and '7B' not in ids and 'router' in ids
        r = c.post('/v1/chat/completions', json=chat('hi', '7B'))
        assert r.status_code == 404 and 'has no backend' in r.json()['error']['message']
        for q in ['hi', Q, 'Write a distributed key-value store in Rust with Raft']:
            assert c.post('/v1/chat/completions', json=chat(q)).headers['x-route-target'] in ('3B', '70B')
        backends[0]['3B'].reset('500')
        r = c.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
        assert (r.headers['x-route-chosen'], r.headers['x-route-target']) == ('3B', '70B') # the next served target

def test_backend_connections_are_closed_when_the_server_stops(router, backends):
    app = make_app(router, backends=config(backends[1]))
    with ServerThread(app) as srv:
        assert httpx.post(srv.url + '/v1/chat/completions', json=chat('hi', '3B')).status_code == 200
        assert app.state.proxy._client is not None
    assert app.state.proxy._client is None

def test_api_key_comes_from_the_named_environment_variable(router, backends, monkeypatch):
    monkeypatch.setenv('QR_TEST_BACKEND_KEY', 'secret-123')
    cfg = config(backends[1]); cfg['backends']['3B']['api_key_env'] = 'QR_TEST_BACKEND_KEY'
    with router_server(router, cfg) as c: c.post('/v1/chat/completions', json=chat('hi', '3B'))
    assert backends[0]['3B'].requests[-1]['headers']['authorization'] == 'Bearer secret-123'

def test_models_health_and_metrics(client, router, backends):
    data = client.get('/v1/models').json()
    assert data['object'] == 'list'
    assert [m['id'] for m in data['data']] == ['router', 'router-argmax', 'router-threshold', 'router-utility'] + router.targets
    assert data['data'][-1]['backend_model'] == 'model-70B'
    assert client.post('/', json={'query': 'hi'}).status_code == 200 # the router's own API is still there
    backends[0]['3B'].reset('500')
    client.post('/v1/chat/completions', json=chat(Q, 'router-threshold-0'))
    m = client.get('/metrics').text
    assert 'query_router_proxy_attempts_total{outcome="5xx",target="3B"}' in m
    assert 'query_router_requests_total{endpoint="/v1/chat/completions",status="200"}' in m

# The official client, pointed at the router.

def test_openai_client(client, router, backends):
    openai = pytest.importorskip('openai')
    oc = openai.OpenAI(base_url=str(client.base_url) + '/v1', api_key='x', max_retries=0)
    ans = oc.chat.completions.create(model='router-threshold-0.4', messages=[{'role': 'user', 'content': Q}])
    t = router.route(Q, 'threshold', 0.4)
    assert ans.choices[0].message.content == f'mock-{t} answers: {Q}' and ans.model == f'model-{t}'
    raw = oc.chat.completions.with_raw_response.create(model='router', messages=[{'role': 'user', 'content': Q}])
    assert raw.headers['x-route-target'] == router.route(Q) and raw.parse().choices[0].message.content.startswith('mock-')
    stream = oc.chat.completions.create(model='70B', messages=[{'role': 'user', 'content': Q}], stream=True)
    assert ''.join(c.choices[0].delta.content or '' for c in stream if c.choices).strip() == f'mock-70B answers: {Q}'
    assert [m.id for m in oc.models.list()][-4:] == router.targets
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-4o'"):
        oc.chat.completions.create(model='gpt-4o', messages=[{'role': 'user', 'content': 'hi'}])
    with pytest.raises(openai.BadRequestError, match="no message with role 'user'"):
        oc.chat.completions.create(model='router', messages=[{'role': 'system', 'content': 'hi'}])
    backends[0]['3B'].reset('stall')
    with pytest.raises(openai.APIError, match='failed mid-stream'):
        for _ in oc.chat.completions.create(model='3B', messages=[{'role': 'user', 'content': Q}], stream=True): pass
    for m in backends[0].values(): m.reset('500')
    with pytest.raises(openai.InternalServerError, match='no backend answered'):
        oc.chat.completions.create(model='router', messages=[{'role': 'user', 'content': Q}])

# The backends file.

T = ['3B', '7B', '30B', '70B']

def test_backends_file_yaml_and_json(tmp_path):
    y = tmp_path/'backends.yaml'
    y.write_text('backends:\n  3B: {base_url: "http://127.0.0.1:8080/v1", model: smollm2}\n'
                 '  70B:\n    base_url: https://api.openai.com/v1\n    model: gpt-4o\n    api_key_env: OPENAI_API_KEY\n    timeout: 30\n'
                 'proxy:\n  route_on: all_user\n  max_tries: 2\n  policy: threshold\n  param: 0.4\n')
    c = load_backends(y, T, env={'OPENAI_API_KEY': 'k'})
    assert (c.backends['70B'].model, c.backends['70B'].timeout, c.backends['70B'].api_key_env) == ('gpt-4o', 30, 'OPENAI_API_KEY')
    assert (c.route_on, c.max_tries, c.policy, c.param) == ('all_user', 2, 'threshold', 0.4)
    j = tmp_path/'backends.json'
    j.write_text(json.dumps({'backends': {'7B': {'base_url': 'http://127.0.0.1:11434/v1', 'model': 'qwen2.5:7b'}}}))
    assert load_backends(j, T).backends['7B'].url == 'http://127.0.0.1:11434/v1/chat/completions'

@pytest.mark.parametrize('text,msg', [
    ('backends:\n  13B: {base_url: "http://x/v1", model: m}\n', "unknown target '13B'; the router's targets are ['3B', '7B', '30B', '70B']"),
    ('backends:\n  3B: {model: m}\n', 'backends.3B: missing base_url'),
    ('backends:\n  3B: {base_url: "http://x/v1"}\n', 'backends.3B: missing model'),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m, api_key: sk-live-123}\n', 'backends.3B.api_key: never put an API key in the backends file'),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m, api_key_env: sk-proj-a1b2c3d4e5f6g7h8}\n', 'looks like an API key itself'),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m, api_key_env: NOT_SET_ANYWHERE_QR}\n', 'NOT_SET_ANYWHERE_QR is not set'),
    ('backends:\n  3B: {base_url: "x.com/v1", model: m}\n', 'must be an http(s) URL'),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m, timeout: -1}\n', 'backends.3B.timeout must be a number > 0'),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m, temprature: 0}\n', "unknown field(s) ['temprature']"),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m}\nproxy: {max_tries: 0}\n', 'proxy.max_tries must be an integer > 0'),
    ('backends:\n  3B: {base_url: "http://x/v1", model: m}\nproxy: {policy: cheapest}\n', 'proxy.policy must be one of'),
    ('backend:\n  3B: {base_url: "http://x/v1", model: m}\n', "unknown section(s) ['backend']"),
    ('backends: [1, 2]\n', "'backends' must map each target"),
    ('backends: {3B: [unclosed\n', 'not valid YAML'),
])
def test_backends_file_errors_are_clear(tmp_path, text, msg):
    p = tmp_path/'b.yaml'; p.write_text(text)
    with pytest.raises(ValueError) as e: load_backends(p, T, env={})
    assert msg in str(e.value) and str(p) in str(e.value)
    assert 'a1b2c3d4' not in str(e.value) and 'sk-live-123' not in str(e.value) # keys are never echoed

def test_serve_cli_refuses_a_bad_backends_file(small_artifacts, tmp_path, capsys):
    from query_router.cli import main
    p = tmp_path/'b.yaml'; p.write_text('backends:\n  13B: {base_url: "http://x/v1", model: m}\n')
    assert main(['serve', '--artifacts', str(small_artifacts), '--backends', str(p)]) == 1
    assert "unknown target '13B'" in capsys.readouterr().err
    assert main(['serve', '--artifacts', str(small_artifacts), '--backends', str(tmp_path/'nope.yaml')]) == 1
    assert 'backends file not found' in capsys.readouterr().err
