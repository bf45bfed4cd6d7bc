"Every router kind builds, loads, serves over HTTP and refuses a damaged artifact; the outcome models' losses fall."
import json, os, numpy as np, pandas as pd, pytest
from pathlib import Path

KINDS = {'linear': {}, 'tfidf': {'max_features': 2000}, 'length': {}, 'hybrid': {'k': 5, 'folds': 3, 'max_features': 2000},
         'stacked': {'k': 20, 'folds': 3, 'max_features': 2000, 'clusters': 4},
         'mf': {'dim': 8, 'epochs': 60}, 'knn': {'k': 5}}

@pytest.fixture(scope='module')
def outcome_data(default_data):
    "Outcome data from 240 default-dataset queries: a target succeeds when it is at least the needed tier (noisy)."
    from query_router.data import load_routing_data
    d = default_data.subset(range(0, 1200, 5))
    rng = np.random.default_rng(0)
    need = np.array([d.targets.index(l) for l in d.labels])
    S = (np.arange(len(d.targets))[None, :] >= need[:, None]).astype(float)
    S = np.where(rng.random(S.shape) < 0.1, 1 - S, S)
    df = pd.DataFrame({'id': d.ids, 'query': d.queries, **{t: S[:, j] for j, t in enumerate(d.targets)}})
    return load_routing_data(df, d.candidates, score_cols=list(d.targets))

@pytest.fixture(scope='module')
def built(tmp_path_factory, outcome_data, embedder):
    from query_router.build import build_router
    root = tmp_path_factory.mktemp('routers')
    return {k: build_router(k, root/k, outcome_data, embedder, **o) for k, o in KINDS.items()}

@pytest.mark.parametrize('kind', list(KINDS))
def test_build_load_serve(kind, built, outcome_data, embedder):
    import httpx
    from query_router.artifacts import load_router, load_manifest
    from query_router.serve import make_app, ServerThread
    p = built[kind]
    m = load_manifest(p, verify=True)
    r = load_router(p, embedder=embedder)
    assert list(r.targets) == list(outcome_data.targets) and r.costs is not None
    s = r.score_batch(outcome_data.queries[:4])
    assert s.shape == (4, len(r.targets)) and np.isfinite(s).all() and (s >= 0).all() and (s <= 1 + 1e-6).all()
    with ServerThread(make_app(r)) as srv:
        res = httpx.post(srv.url + '/', json={'query': outcome_data.queries[0], 'policy': 'utility', 'param': 0.5}, timeout=30)
        assert res.status_code == 200, res.text
        body = res.json()
        assert body['route'] in r.targets and len(body['scores']) == len(r.targets)
        assert httpx.get(srv.url + '/health', timeout=30).status_code == 200

@pytest.mark.parametrize('kind', [k for k in KINDS if k != 'knn'])
def test_saved_equals_fitted(kind, tmp_path, outcome_data, embedder):
    "What is served is what was fitted: scores of the loaded router equal the in-memory router's."
    from query_router.build import make_router
    from query_router.artifacts import load_router
    r = make_router(kind, embedder, **KINDS[kind]).fit(outcome_data)
    r2 = load_router(r.save(tmp_path/kind), embedder=embedder)
    np.testing.assert_allclose(r2.score_batch(outcome_data.queries[:8]), r.score_batch(outcome_data.queries[:8]), atol=1e-5)

@pytest.mark.parametrize('kind', [k for k in KINDS if k != 'knn'])
def test_refuses_damaged(kind, built, tmp_path, embedder):
    import shutil
    from query_router.artifacts import load_router, ArtifactError
    p = tmp_path/kind; shutil.copytree(built[kind], p)
    w = p/'weights.npz'; raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0xFF; w.write_bytes(bytes(raw)) # same size, other bytes
    with pytest.raises(ArtifactError, match='checksum'): load_router(p, embedder=embedder, verify=True)
    w.write_bytes(bytes(raw[:len(raw) // 2])) # truncated
    with pytest.raises(ArtifactError, match='weights.npz'): load_router(p, embedder=embedder)
    (p/'state.json').unlink()
    with pytest.raises(ArtifactError, match='state.json'): load_router(p, embedder=embedder)

def test_refuses_wrong_embedder(built):
    from query_router.artifacts import load_router, ArtifactError
    from query_router.embed import Embedder
    class Other(Embedder):
        fingerprint = [0.0] * 8 # embeds differently from the model the artifact was built with
        def __init__(self): self.name, self.dim, self.kind = 'other', 384, 'transformer'
    with pytest.raises(ArtifactError, match='fingerprint'): load_router(built['hybrid'], embedder=Other())

def test_mf_loss_falls(outcome_data, embedder):
    from query_router.mf import MFRouter
    r = MFRouter(embedder, dim=8, epochs=80).fit(outcome_data)
    assert r.losses[-1] < 0.8 * r.losses[0]

def test_hybrid_k_reaches_knn(outcome_data, embedder):
    from query_router.linear import HybridRouter
    a = HybridRouter(embedder, k=3, folds=2, max_features=500, combine='mean').fit(outcome_data)
    b = HybridRouter(embedder, k=40, folds=2, max_features=500, combine='mean').fit(outcome_data)
    assert a.k == 3 and not np.allclose(a.score_batch(outcome_data.queries[:20]), b.score_batch(outcome_data.queries[:20]))

def _tasks_data(n=240, seed=0):
    "Outcome data with 4 tasks whose candidates' success rates differ by task; the task shows in the words of the query."
    from query_router.core import Candidate
    from query_router.data import load_routing_data
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 4, n); rate = np.array([[.9, .9, .9], [.1, .2, .9], [.1, .8, .9], [.0, .1, .2]])
    S = (rng.random((n, 3)) < rate[g]).astype(float)
    words = ['solve the equation for x', 'what is the capital of', 'write a python function that', 'prove the theorem about']
    df = pd.DataFrame({'id': [f'q{i}' for i in range(n)], 'query': [f'{words[x]} {rng.integers(10**6)}' for x in g], 'task': [f't{x}' for x in g],
                       **{f'm{j}': S[:, j] for j in range(3)}})
    cands = [Candidate(f'm{j}', input_price_per_mtok=p, output_price_per_mtok=p) for j, p in enumerate((0.1, 0.3, 1.0))]
    return load_routing_data(df, cands, score_cols=['m0', 'm1', 'm2'], group_col='task'), g, rate

def test_stacked_learns_the_task_prior(embedder, tmp_path):
    "The stacked router reads the task from the text (no task name at serve time) and its scores approach each task's success rates."
    from query_router.stacked import StackedRouter
    from query_router.artifacts import load_router, load_manifest
    d, g, rate = _tasks_data()
    r = StackedRouter(embedder, k=20, folds=3, max_features=2000).fit(d)
    assert r.group_source == 'groups' and r.groups == ['t0', 't1', 't2', 't3']
    E = np.asarray(embedder.encode(d.queries)); P = r.task_probs(E, r.tfidf.transform(d.queries))
    assert (P.argmax(1) == g).mean() > 0.95
    np.testing.assert_allclose(r.members['table'], [S.mean(0) for S in (d.scores()[g == t] for t in range(4))], atol=0.05) # shrunk means, near the raw means
    s = r.score_batch(d.queries)
    assert np.abs(s - rate[g]).mean() < 0.12, np.abs(s - rate[g]).mean()
    dn, gn, _ = _tasks_data(80, seed=1) # new queries of the same tasks
    assert np.abs(r.score_batch(dn.queries) - rate[gn]).mean() < 0.15
    p = r.save(tmp_path/'st')
    assert load_manifest(p, verify=True)['kind'] == 'stacked'
    np.testing.assert_allclose(load_router(p, embedder=embedder).score_batch(dn.queries), r.score_batch(dn.queries), atol=1e-5)

def test_stacked_refuses_too_little_data(embedder, outcome_data):
    from query_router.stacked import StackedRouter
    with pytest.raises(ValueError, match='at least 6 training queries'): StackedRouter(embedder, folds=3).fit(outcome_data.subset(range(4)))

def test_cli_build_kinds(tmp_path, outcome_data):
    from query_router.cli import main
    f = tmp_path/'d.jsonl'; outcome_data.frame.rename(columns=lambda c: c.replace('score:', '')).drop(columns=['label', 'group'], errors='ignore').to_json(f, orient='records', lines=True)
    cands = tmp_path/'c.json'; cands.write_text(json.dumps([{'name': c.name, 'size_b': c.size_b, 'input_price_per_mtok': c.input_price_per_mtok, 'output_price_per_mtok': c.output_price_per_mtok} for c in outcome_data.candidates]))
    assert main(['build', '--router', 'length', '--data', str(f), '--candidates', str(cands), '--out', str(tmp_path/'len')]) == 0
    assert (tmp_path/'len'/'manifest.json').exists()
    assert main(['build', '--router', 'length', '--data', str(f), '--out', str(tmp_path/'x'), '--dim', '4']) == 1 # an mf option

def test_outcome_classifier_loss_falls_and_serves(tmp_path, outcome_data):
    "The classification router on per-candidate outcomes: one logit per candidate, BCE; the loss falls and the artifact loads by kind."
    from query_router.classifier import train_classifier, tiny_causal_lm
    from query_router.artifacts import load_manifest, load_router
    d = outcome_data.subset(range(48))
    lm = tiny_causal_lm(tmp_path/'lm', d.queries)
    p = train_classifier(tmp_path/'clf', d, valid=d.subset(range(8)), model=str(lm), epochs=8, lr=3e-3, logging_steps=1, progress=False)
    m = load_manifest(p, verify=True)
    assert m['settings']['objective'] == 'outcomes' and 'quality_argmax' in m['valid']
    losses = [h['loss'] for h in m['training']['loss_history']]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    r = load_router(p)
    s = r.score_batch(d.queries[:4])
    assert s.shape == (4, len(d.targets)) and not np.allclose(s.sum(1), 1) # independent sigmoids, one per candidate

def test_dual_contrastive_losses():
    "RouterDC's two terms: lower when the good candidate / same-cluster queries are close; no pairs, no loss."
    import torch
    from query_router.dcfinetune import sample_llm_loss, sample_sample_loss
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    K = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    S = torch.tensor([[1., 0, 0, 0]] * 6)
    K2 = torch.nn.functional.normalize(K + 3 * torch.cat([q.mean(0, keepdim=True), torch.zeros(3, 8)]), dim=1)
    assert sample_llm_loss(q, K2, S, top=1, bottom=3) < sample_llm_loss(q, K, S, top=1, bottom=3)
    assert float(sample_llm_loss(q, K, torch.ones(6, 4))) == 0.0
    c = torch.tensor([0, 0, 1, 1, 2, 2])
    assert sample_sample_loss(torch.nn.functional.normalize(q + 5 * torch.nn.functional.one_hot(c, 8).float(), dim=1), c) < sample_sample_loss(q, c)
