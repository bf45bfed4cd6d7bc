"Issue 12: the ONNX Runtime engine embeds exactly like torch, routes alike, serves batched answers equal to single ones, and needs no torch once exported."
import json, os, subprocess, sys
import numpy as np, pytest
from query_router.embed import Embedder, model_key, onnx_available, BUNDLED

pytestmark = pytest.mark.skipif(not onnx_available(), reason="ONNX Runtime is not installed (pip install 'query_router[onnx]'): skipped")

TEXTS = ['How do I reverse a list in Python?', 'hi', '', 'Prove the Riemann hypothesis ' * 30, 'word ' * 5000,
         'Translate "good morning" into Spanish', 'Design a distributed rate limiter for 1M rps across regions ' * 3, 'héllo wörld \ud800 ✓']

@pytest.fixture(scope='module')
def fast():
    return Embedder(backend='onnx') # exported into the cache the first time (tens of seconds), loaded from it afterwards

def test_onnx_embeddings_equal_torch(fast, embedder):
    assert fast.backend == 'onnx' and embedder.backend == 'torch'
    ref = embedder.encode(TEXTS)
    np.testing.assert_allclose(fast.encode(TEXTS), ref, atol=1e-5) # one call: bucketed by length, padded per bucket
    np.testing.assert_allclose(np.stack([fast.encode(t) for t in TEXTS]), ref, atol=1e-5) # one text a call
    assert fast.describe() == embedder.describe() # same fingerprint: an artifact built with either loads with the other

def test_onnx_routes_equal_torch(small_artifacts, embedder, fast, default_data):
    from query_router.serve import load_router
    from query_router.router import respond
    qs = default_data.queries[300:340]
    a, b = load_router(small_artifacts, embedder=embedder), load_router(small_artifacts, embedder=fast)
    ra, rb = respond(a, qs), respond(b, qs)
    assert [r['route'] for r in ra] == [r['route'] for r in rb]
    np.testing.assert_allclose([[s['score'] for s in r['scores']] for r in ra], [[s['score'] for s in r['scores']] for r in rb], atol=1e-4)

def test_onnx_batched_http_answers_equal_single_answers(small_artifacts, fast):
    import httpx
    from concurrent.futures import ThreadPoolExecutor
    from query_router.serve import load_router, make_app, ServerThread
    router = load_router(small_artifacts, embedder=fast)
    qs = [f'question number {i}: how do I sort a list in python?' if i % 2 else f'prove lemma {i} about graphs ' * (1 + i) for i in range(12)]
    def ask(url, q):
        with httpx.Client(base_url=url, timeout=60) as c: return c.post('/', json={'query': q}).json()
    with ServerThread(make_app(router, lock=True)) as old: want = [ask(old.url, q) for q in qs]
    with ServerThread(make_app(router, batch_wait=0.02)) as new, ThreadPoolExecutor(12) as ex:
        got = list(ex.map(lambda q: ask(new.url, q), qs))
        assert httpx.get(new.url + '/health').json()['engine'] == 'onnx'
    for w, g in zip(want, got):
        assert w['route'] == g['route'] and [h['id'] for h in w['hits']] == [h['id'] for h in g['hits']]

def test_exported_model_routes_without_torch(fast, small_artifacts):
    code = ("import sys; from query_router.embed import Embedder; e = Embedder(backend='onnx'); v = e.encode(['hi', 'there']); "
            "from query_router.artifacts import load_router; from query_router.router import respond; r = load_router(sys.argv[1]); "
            "a = respond(r, ['How do I reverse a list in Python?'])[0]; "
            "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules, 'torch was imported'; print(e.backend, r.embedder.backend, v.shape, a['route'] in r.targets)")
    out = subprocess.run([sys.executable, '-c', code, str(small_artifacts)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'HF_HUB_OFFLINE': '1', 'QUERY_ROUTER_BACKEND': 'auto'})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['onnx', 'onnx', '(2,', '384)', 'True']

def test_taking_the_model_out_returns_to_torch():
    e = Embedder(backend='onnx')
    m = e.model # the caller may change its weights (fine-tuning): the exported graph would be stale
    assert e.backend == 'torch' and m is e.model
    np.testing.assert_allclose(e.encode('hi'), Embedder(backend='onnx').encode('hi'), atol=1e-5)

def test_backend_choice(monkeypatch):
    with pytest.raises(ValueError, match='unknown embedding backend'): Embedder(backend='tensorflow')
    monkeypatch.setenv('QUERY_ROUTER_BACKEND', 'onnx')
    assert Embedder().backend == 'onnx' # what `query-router serve --backend` sets for itself and its workers
    monkeypatch.setenv('QUERY_ROUTER_BACKEND', 'torch')
    assert Embedder().backend == 'torch'

def test_model_key_follows_the_contents(tmp_path):
    (tmp_path/'modules.json').write_text('[]'); (tmp_path/'config.json').write_text('{}'); (tmp_path/'model.safetensors').write_bytes(b'\0' * 64)
    k = model_key(tmp_path)
    assert k == model_key(tmp_path)
    (tmp_path/'model.safetensors').write_bytes(b'\0' * 63 + b'\1') # same size, other weights: exported afresh
    assert model_key(tmp_path) != k
    assert model_key(tmp_path/'missing') is None
