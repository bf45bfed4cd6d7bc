"Issue 19: the smooth decision (argmax of votes smoothed along ordered tiers), the default artifact's settings (k, similarity temperature, decision), and the robustness benchmark's bookkeeping (fresh variants, the margin rule chosen on the calibration split)."
import json, sys
from pathlib import Path
import numpy as np, pytest
from query_router.router import decide, margins, respond, smoothed_scores
from query_router.knn import DEFAULT_K, DEFAULT_TEMPERATURE, DEFAULT_SETTINGS, KNNRouter
from test_robustness import QUERIES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent/'bench'))

def test_smooth_removes_bimodal_jumps():
    "Votes split between two tiers with one between them go to the middle tier whichever side leads; argmax jumps two tiers."
    V = np.array([[0.40, 0.18, 0.42, 0.0], [0.42, 0.18, 0.40, 0.0], [0.0, 0.45, 0.1, 0.45]])
    assert decide(V).tolist() == [2, 0, 1] # arg-max: the first two jump two tiers apart
    assert decide(V, 'smooth', 0.5).tolist() == [1, 1, 2] # smooth: the middle tier, both times
    np.testing.assert_allclose(smoothed_scores(V[:1], 0.5), [[0.49, 0.59, 0.51, 0.21]])
    rng = np.random.default_rng(0)
    A = rng.dirichlet(np.ones(4) * 0.5, 3000); B = np.clip(A + rng.normal(0, 0.02, A.shape), 0, None)
    jumps = lambda p: int((np.abs(decide(A, p, 0.5 if p == 'smooth' else None) - decide(B, p, 0.5 if p == 'smooth' else None)) > 1).sum())
    assert jumps('smooth') < jumps('argmax') / 2 # fewer, not none: votes split between the two end tiers can still jump
    assert decide(A, 'smooth', 0.0).tolist() == decide(A).tolist() # weight 0 is argmax

@pytest.fixture(scope='module')
def default_knn(tmp_path_factory, default_data, embedder):
    "A KNN artifact built the default way (`build_router('knn', ...)` = `query-router build` with no options), on a slice of the default data."
    from query_router.build import build_router
    p = build_router('knn', tmp_path_factory.mktemp('dk')/'a', default_data.subset(range(0, len(default_data), 8)), embedder, n_trees=5)
    return KNNRouter(p, embedder)

def test_default_artifact_settings(default_knn):
    s = default_knn.manifest['settings']
    assert (s['k'], s['temperature'], s['policy'], s['param']) == (DEFAULT_K, DEFAULT_TEMPERATURE, 'smooth', 0.5)
    assert (default_knn.k, default_knn.temperature, default_knn.default_policy) == (DEFAULT_K, DEFAULT_TEMPERATURE, 'smooth')
    for a in respond(default_knn, QUERIES):
        assert a['policy'] == {'name': 'smooth', 'param': 0.5} and 0 <= a['margin'] <= 1.5
        assert len(a['hits']) == DEFAULT_K

def test_default_decision_on_outcome_data_is_argmax(tmp_path, embedder):
    "Outcome data's targets are models, not ordered tiers: the default artifact keeps argmax there."
    import pandas as pd
    from query_router.data import load_routing_data
    from query_router.core import Candidate
    from query_router.build import build_router
    df = pd.DataFrame({'prompt': ['add two numbers', 'prove a theorem', 'sort a list', 'write a poem'],
                       'scores': [{'a': 1.0, 'b': 1.0}, {'a': 0.0, 'b': 1.0}, {'a': 1.0, 'b': 0.5}, {'a': 0.5, 'b': 1.0}]})
    d = load_routing_data(df, [Candidate('a', 1, 0.1, 0.1), Candidate('b', 70, 1, 1)])
    s = json.loads((build_router('knn', tmp_path/'o', d, embedder, n_trees=2)/'manifest.json').read_text())['settings']
    assert s['policy'] == 'argmax' and s['temperature'] == DEFAULT_TEMPERATURE and s['k'] == DEFAULT_K

def test_server_range_checks_smooth(default_knn):
    pytest.importorskip('fastapi')
    from fastapi.testclient import TestClient
    from query_router.serve import make_app
    c = TestClient(make_app(default_knn))
    r = c.post('/', json={'query': QUERIES[0]})
    assert r.status_code == 200 and r.json()['policy'] == {'name': 'smooth', 'param': 0.5}
    assert c.post('/', json={'query': QUERIES[0], 'policy': 'smooth', 'param': 0.2}).status_code == 200
    for bad in (1.5, -0.1):
        r = c.post('/', json={'query': QUERIES[0], 'policy': 'smooth', 'param': bad})
        assert r.status_code == 422 and 'smooth' in r.text
    assert c.get('/health').json()['temperature'] == DEFAULT_TEMPERATURE

# --- the benchmark's bookkeeping (bench/robustness.py)

def test_fresh_variants_are_a_third_part(tmp_path):
    import robustness as rb
    from query_router.canonical import load_rewrites, select_variants
    f = tmp_path/'fresh.json'
    f.write_text(json.dumps({'version': 1, 'families': {'greetings': [{'name': 'hey', 'template': 'Hey, {q}'}], 'typos': [{'name': 't1', 'typos': 1, 'seed': 3}]}}))
    fresh = [(fam, {**v, 'fresh': True}) for fam, v in select_variants(load_rewrites(f), None)]
    assert [rb.part_of(v) for _, v in fresh] == ['fresh', 'fresh'] and rb.part_of({'heldout': True}) == 'heldout' and rb.part_of({}) == 'seen'
    stat = lambda share, jump: {'flip_share': share, 'flips': 1, 'mean_jump': 1.0, 'max_jump': jump, 'flips_over_1_apart': int(jump > 1), 'delta_quality': 0.0, 'delta_cost': 0.0, 'mean_abs_delta_cost': 0.0}
    per = {'g/hi': stat(0.1, 1), 'g/hey (fresh)': stat(0.2, 2), 't/typo-2': stat(0.0, 0), 't/t1 (fresh)': stat(0.1, 1), 't/typo-2b': stat(0.3, 1)}
    fam = {'g/hi': 'g', 'g/hey (fresh)': 'g', 't/typo-2': 't', 't/t1 (fresh)': 't', 't/typo-2b': 't'}
    part = {'g/hi': 'seen', 'g/hey (fresh)': 'fresh', 't/typo-2': 'seen', 't/t1 (fresh)': 'fresh', 't/typo-2b': 'heldout'}
    s = rb.summarise(per, fam, part)
    assert set(s) == {'seen', 'heldout', 'fresh'}
    assert s['seen']['robustness'] == pytest.approx(0.95) and s['fresh']['robustness'] == pytest.approx(0.85) and s['heldout']['robustness'] == pytest.approx(0.7)
    assert s['fresh']['flips_over_1_apart'] == 1 and s['seen']['flips_over_1_apart'] == 0
    assert 'fresh' not in rb.summarise({'g/hi': stat(0.1, 1)}, fam, part) # no fresh file: no fresh part

def test_margin_rule_is_chosen_on_the_calibration_split():
    "The most robust rule on the calibration split whose calibrated quality there is within 0.005 of no margin; the test table plays no part."
    import robustness as rb
    def rule(tq, tr, test_q, test_r):
        return {'tune': {'cal_quality': tq, 'robustness_seen': tr}, 'cal_quality': test_q, 'calibrated': {'seen': {'robustness': test_r}, 'heldout': {'robustness': test_r - 0.05}}}
    m = {'0': rule(0.550, 0.960, 0.55, 0.96), '0.1/cheaper': rule(0.540, 0.990, 0.60, 0.999), # too costly on calibration, whatever the test says
         '0.1/capable': rule(0.547, 0.975, 0.50, 0.90), '0.05/capable': rule(0.549, 0.970, 0.56, 0.99)}
    ch = rb.choose_margin(m)
    assert ch['rule'] == '0.1/capable' and ch['test']['cal_quality'] == 0.50 and ch['test']['robustness_heldout'] == pytest.approx(0.85)
    assert rb.choose_margin({'0': rule(0.55, 0.96, 0.5, 0.9)})['rule'] == '0'
