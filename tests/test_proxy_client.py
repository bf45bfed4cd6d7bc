"The in-process OpenAI-style client: the proxy's routing and forwarding, called from Python with no router server."
import asyncio, json
import numpy as np, pytest
from query_router.proxy import ApiError, AsyncRouterClient, RouterClient, route_margin
from query_router.serve import ServerThread

Q = 'Prove that the square root of 2 is irrational.'
def msgs(text=Q): return [{'role': 'user', 'content': text}]

@pytest.fixture(scope='module')
def router(small_router): return small_router

@pytest.fixture(scope='module')
def backends(mock_backends):
    mocks, urls = mock_backends
    return mocks, {'backends': {t: {'base_url': u + '/v1', 'model': f'model-{t}', 'timeout': 2.0} for t, u in urls.items()}}

@pytest.fixture(autouse=True)
def fresh(request):
    if 'backends' in request.fixturenames:
        for m in request.getfixturevalue('backends')[0].values(): m.reset('ok', delay=0.0, chunks=4, hang=3.0)

@pytest.fixture(scope='module')
def client(router, backends):
    with RouterClient(router, backends[1]) as c: yield c

def test_create_routes_and_answers_in_openai_shape(client, router, backends):
    ans = client.chat.completions.create(model='router-threshold-0.4', messages=msgs(), temperature=0.2)
    t = router.route(Q, 'threshold', 0.4)
    assert ans.choices[0].message.content == f'mock-{t} answers: {Q}' == ans['choices'][0]['message']['content']
    assert ans.object == 'chat.completion' and ans.model == f'model-{t}'
    r = ans.route
    assert (r['target'], r['chosen'], r['policy'], r['param'], r['model'], r['fallbacks']) == (t, t, 'threshold', 0.4, f'model-{t}', [])
    s = router.score_batch([Q])[0]
    assert list(r['scores']) == router.targets and np.allclose(list(r['scores'].values()), s, atol=1e-5)
    assert r['margin'] >= 0 and abs(r['margin'] - route_margin(s, router.targets.index(t), 'threshold', 0.4)) < 1e-9
    assert backends[0][t].requests[-1]['body'] == {'model': f'model-{t}', 'messages': msgs(), 'temperature': 0.2}
    assert sum(len(m.requests) for m in backends[0].values()) == 1

def test_streaming(client, backends):
    backends[0]['70B'].reset('ok', chunks=5)
    stream = client.chat.completions.create(model='70B', messages=msgs(), stream=True)
    assert stream.route['target'] == '70B' and stream.route['policy'] == 'pinned'
    chunks = list(stream)
    assert all(c.object == 'chat.completion.chunk' for c in chunks) and chunks[-1].choices[0].finish_reason == 'stop'
    assert ''.join(c.choices[0].delta.get('content', '') for c in chunks).strip() == f'mock-70B answers: {Q}'
    assert backends[0]['70B'].requests[-1]['body']['stream'] is True

def test_route_is_a_dry_run(client, router, backends):
    d = client.route(msgs(), model='router-utility-0.5')
    assert d['target'] == router.route(Q, 'utility', 0.5) and d['policy'] == 'utility' and d['margin'] >= 0
    assert d['model'] == f"model-{d['target']}" and d['plan'][0] == d['target']
    assert client.route(msgs(), model='7B')['policy'] == 'pinned'
    assert sum(len(m.requests) for m in backends[0].values()) == 0

def test_route_needs_no_backends_and_loads_an_artifact(small_artifacts, embedder, router):
    with RouterClient(small_artifacts, embedder=embedder) as c: # a path: the router is loaded from it
        d = c.route(msgs('hi there'))
        assert d['target'] == router.route('hi there') and d['model'] is None
        with pytest.raises(ValueError, match='no backends'): c.chat.completions.create(model='router', messages=msgs())

def test_fallback_and_errors(client, backends):
    mocks = backends[0]
    mocks['3B'].reset('500')
    ans = client.chat.completions.create(model='router-threshold-0', messages=msgs())
    assert (ans.route['chosen'], ans.route['target']) == ('3B', '7B') and ans.route['fallbacks'] == [{'target': '3B', 'error': 'HTTP 500'}]
    mocks['3B'].reset('400')
    with pytest.raises(ApiError) as e: client.chat.completions.create(model='3B', messages=msgs())
    assert e.value.status_code == 400 and e.value.body == {'error': {'message': 'mock-3B refuses', 'type': 'invalid_request_error', 'code': 'refused'}}
    for m in mocks.values(): m.reset('500')
    with pytest.raises(ApiError, match='no backend answered') as e: client.chat.completions.create(model='router', messages=msgs())
    assert e.value.status_code == 502 and e.value.body['error']['code'] == 'backends_failed'

@pytest.mark.parametrize('kw,status,msg', [({'model': 'gpt-4o'}, 404, "unknown model 'gpt-4o'"), ({'model': 'router-utility--1'}, 400, 'λ'),
                                           ({'model': 'router', 'temperature': float('nan')}, 400, 'NaN'),
                                           ({'model': 'router', 'seed': 10 ** 400}, 400, 'digits'),
                                           ({'model': 'router', 'messages': [{'role': 'system', 'content': 'hi'}]}, 400, "no message with role 'user'"),
                                           ({'model': 'router', 'x': object()}, 400, 'not JSON-serialisable')])
def test_bad_requests_raise_like_the_http_proxy(client, backends, kw, status, msg):
    with pytest.raises(ApiError, match=msg) as e: client.chat.completions.create(**{'messages': msgs(), **kw})
    assert e.value.status_code == status
    assert sum(len(m.requests) for m in backends[0].values()) == 0

def test_lone_surrogates_are_routed(client, backends):
    ans = client.chat.completions.create(model='router', messages=msgs('hello \ud83d world'))
    assert backends[0][ans.route['target']].requests[-1]['body']['messages'][0]['content'] == 'hello \ufffd world'

def test_a_failure_mid_stream_raises(client, backends):
    backends[0]['3B'].reset('stall', hang=4)
    stream = client.chat.completions.create(model='3B', messages=msgs(), stream=True)
    got = []
    with pytest.raises(ApiError, match='failed mid-stream') as e:
        for c in stream: got.append(c)
    assert got and e.value.body['error']['code'] == 'stream_interrupted'

def test_the_key_is_redacted_in_client_errors(router, backends, monkeypatch):
    key = 'sk-client-test-9876543210'
    monkeypatch.setenv('QR_CLIENT_KEY', key)
    cfg = json.loads(json.dumps(backends[1])); cfg['backends']['3B']['api_key_env'] = 'QR_CLIENT_KEY'
    backends[0]['3B'].reset('echo_key')
    with RouterClient(router, cfg) as c, pytest.raises(ApiError) as e: c.chat.completions.create(model='3B', messages=msgs())
    assert e.value.status_code == 401 and key not in str(e.value) and key not in json.dumps(e.value.body) and '[redacted]' in str(e.value)

def test_async_client(router, backends):
    async def main():
        async with AsyncRouterClient(router, backends[1]) as c:
            ans = await c.chat.completions.create(model='router', messages=msgs())
            stream = await c.chat.completions.create(model='7B', messages=msgs(), stream=True)
            text = ''.join([ch.choices[0].delta.get('content', '') async for ch in stream])
            return ans, text, await c.route(msgs())
    ans, text, d = asyncio.run(main())
    assert ans.route['target'] == router.route(Q) == d['target'] and ans.choices[0].message.content.startswith('mock-')
    assert text.strip() == f'mock-7B answers: {Q}'

def test_the_client_and_the_server_agree(router, backends):
    "Same code: the client's decision and margin are the proxy's headers."
    import httpx
    from query_router.serve import make_app
    qs = ['hi', Q, 'Write a distributed key-value store in Rust with Raft']
    with ServerThread(make_app(router, backends=backends[1])) as srv, RouterClient(router, backends[1]) as c:
        for q in qs:
            h = httpx.post(srv.url + '/v1/chat/completions', json={'model': 'router-utility-0.3', 'messages': msgs(q)}, timeout=20).headers
            d = c.route(msgs(q), model='router-utility-0.3')
            assert (h['x-route-target'], h['x-route-margin']) == (d['target'], f"{d['margin']:.4f}")
