"Issue 17: bench/compare.py measures what `query-router build` serves (canonicalisation, the default KNN artifact's k and temperature)."
import importlib.util, json, sys
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(scope='module')
def bench_compare():
    "bench/compare.py as a module (its `main` does not run on import)."
    spec = importlib.util.spec_from_file_location('bench_compare', ROOT/'bench'/'compare.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

@pytest.fixture(scope='module')
def embedder(embedder):
    "conftest's embedder, remembering embeddings in memory: these tests embed the same few hundred queries many times."
    from query_router.evaluate import CachedEmbedder
    return CachedEmbedder(embedder)

@pytest.fixture(scope='module')
def train_test(default_data):
    return default_data.subset(range(300)), default_data.subset(range(300, 340))

@pytest.fixture(scope='module')
def canon():
    from query_router.canonical import load_canon_spec
    return load_canon_spec()

def _roundtrip(x): return json.loads(json.dumps(x))

@pytest.mark.parametrize('temperature', [0.15, None])
def test_memory_knn_scores_like_the_knn_artifact(tmp_path, embedder, train_test, canon, temperature):
    "Same data, k and temperature: the in-memory router and the KNN artifact (exact search) give the same scores, canonicalisation included."
    from query_router.linear import MemoryKNNRouter
    from query_router.knn import build_artifacts, KNNRouter
    tr, te = train_test
    mem = MemoryKNNRouter(embedder, k=75, temperature=temperature)
    mem.canonicalize = canon
    mem.fit(tr)
    art = KNNRouter(build_artifacts(tmp_path/'knn', tr, embedder, settings={'k': 75, 'temperature': temperature}, index='exact', canonicalize=canon, progress=False), embedder=embedder)
    assert art.temperature == temperature and art.k == 75 and art.targets == mem.targets
    q = te.queries + ['Hi there! What is the capital of France? Thanks a lot!']
    a, b = mem.score_batch(q), art.score_batch(q)
    assert np.allclose(a, b, atol=1e-5), np.abs(a - b).max()

def test_temperature_changes_the_vote(embedder, train_test):
    "The temperature is used (not silently ignored): T=0.05 and the similarity-weighted rule differ."
    from query_router.linear import MemoryKNNRouter
    tr, te = train_test
    r0, r1 = MemoryKNNRouter(embedder, 30).fit(tr), MemoryKNNRouter(embedder, 30, temperature=0.05).fit(tr)
    assert not np.allclose(r0.score_batch(te.queries), r1.score_batch(te.queries))
    with pytest.raises(ValueError, match='temperature must be'): MemoryKNNRouter(embedder, temperature=-1)

def test_save_load_keeps_temperature_policy_and_canonicalize(tmp_path, embedder, train_test, canon):
    from query_router.linear import MemoryKNNRouter
    from query_router.artifacts import load_router, load_manifest
    from query_router.knn import DEFAULT_SETTINGS
    tr, te = train_test
    r = MemoryKNNRouter(embedder, **DEFAULT_SETTINGS); r.canonicalize = canon
    r.fit(tr)
    assert (r.default_policy, r.default_param) == ('smooth', 0.5) # tier data: policy 'auto' is the smooth decision, as `build` resolves it
    p = r.save(tmp_path/'knn', index='exact')
    s = load_manifest(p)['settings']
    assert (s['k'], s['temperature'], s['policy'], s['param']) == (75, 0.15, 'smooth', 0.5)
    assert s['canonicalize'] == _roundtrip(canon)
    lr = load_router(p, embedder=embedder)
    assert (lr.k, lr.temperature, lr.default_policy, lr.default_param) == (75, 0.15, 'smooth', 0.5)
    assert lr.canonicalizer().names == [x[0] for x in canon['steps']]
    assert np.allclose(lr.score_batch(te.queries), r.score_batch(te.queries), atol=1e-5)
    # a router without canonicalisation saves an artifact without it (it used to get the package's rules)
    plain = MemoryKNNRouter(embedder, 10).fit(tr)
    s2 = load_manifest(plain.save(tmp_path/'plain', index='exact'))['settings']
    assert not s2.get('canonicalize') and s2.get('temperature') is None and s2['policy'] == 'argmax'

def test_make_router_knn_options(embedder):
    from query_router.build import make_router
    r = make_router('knn', embedder, k=75, temperature=0.15, policy='auto')
    assert (r.k, r.temperature, r.policy) == (75, 0.15, 'auto')
    assert make_router('knn', embedder).temperature is None # the old default: similarity-weighted, k=10
    with pytest.raises(ValueError, match='takes no option'): make_router('knn', embedder, trees=3)

def test_lineup_has_the_default_knn_row(bench_compare):
    from query_router.knn import DEFAULT_SETTINGS
    rows = [n for n, (kind, opts) in bench_compare.LINEUP.items() if kind == 'knn' and opts == DEFAULT_SETTINGS]
    assert rows == [f"knn (default: k={DEFAULT_SETTINGS['k']}, T={DEFAULT_SETTINGS['temperature']})"]
    assert bench_compare.split_names(f'{rows[0]}, tfidf') == [rows[0], 'tfidf'] # the name's comma does not split it

def test_compare_factory_canonicalises_as_build_does(tmp_path, embedder, train_test, bench_compare):
    "A router fitted through compare's factory scores a greeting-wrapped query like the bare one (and without canonicalisation it does not)."
    from query_router.build import build_router
    from query_router.artifacts import load_router
    tr, te = train_test
    spec = bench_compare.canon_spec()
    assert bench_compare.canon_meta(spec)['steps'] == [s[0] for s in spec['steps']] and bench_compare.canon_meta(None) is False
    wrapped, bare = 'Hi there! What is the capital of France? Thank you so much!', 'What is the capital of France?'
    f = bench_compare.factories(['tfidf', 'knn (k=10)'], embedder, spec)
    for name, make in f.items():
        r = make(tr)
        a = r.score_batch([wrapped, bare])
        assert np.allclose(a[0], a[1]), name
    raw = bench_compare.factories(['tfidf'], embedder, bench_compare.canon_spec(no_canon=True))['tfidf'](tr)
    b = raw.score_batch([wrapped, bare])
    assert not np.allclose(b[0], b[1])
    # the same scores as the artifact `query-router build --router tfidf` writes from the same data
    r = f['tfidf'](tr)
    built = load_router(build_router('tfidf', tmp_path/'tfidf', tr), embedder=embedder)
    assert np.allclose(built.score_batch(te.queries + [wrapped]), r.score_batch(te.queries + [wrapped]))

def test_through_artifacts_checks_scores_and_canonicalisation(tmp_path, embedder, train_test, bench_compare):
    "compare's artifact step: the loaded artifacts canonicalise as fitted and score the same (tfidf exactly; knn to the index's recall)."
    from query_router.evaluate import compare
    tr, te = train_test
    spec = bench_compare.canon_spec()
    names = ['tfidf', 'knn (k=10)']
    res = compare(bench_compare.factories(names, embedder, spec), tr, te, calibration=None, baselines=False, embedder=embedder, n_latency=0, progress=False)
    out = bench_compare.through_artifacts(res, names, te, embedder, tmp_path, 0, spec)
    for n in names: assert out[n]['canonicalize_steps'] == [s[0] for s in spec['steps']], n
    assert out['tfidf']['max_score_diff_vs_fitted'] < 1e-6
    assert out['knn (k=10)']['k'] == 10 and out['knn (k=10)']['temperature'] is None
    assert out['knn (k=10)']['max_score_diff_exact_search'] < 1e-5 # the artifact searched exactly scores what was fitted
    with pytest.raises(SystemExit, match='records canonicalisation'): # a mismatch is refused, not reported as a score difference
        bench_compare.through_artifacts(res, ['tfidf'], te, embedder, tmp_path/'other', 0, None)

def test_memo_canonicalizer_is_the_same_canonicalisation(bench_compare, default_data, canon):
    "compare's remembering canonicaliser gives the package canonicaliser's output and records the same spec."
    from query_router.canonical import Canonicalizer
    c, m = Canonicalizer(canon), bench_compare.MemoCanonicalizer(canon)
    q = default_data.queries[:200] + ['Hi there! What is the capital of France? Thank you so much!', '<|im_start|>user\nwrite a haiku<|im_end|>']
    assert m(q) == c(q) and m(q) == c(q) # twice: from the memo the second time
    assert len(m.memo) == len(set(q)) and m(q[-1]) == c(q[-1]) and m.describe() == canon
