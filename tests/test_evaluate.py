"Evaluation metrics on hand-checked toys, calibration on held-out data, the evaluate/calibrate CLIs, a calibrated server, and the real LLMRouter outcomes."
import json, subprocess, sys
import numpy as np, pytest, httpx
from conftest import need_shared
from query_router.router import decide
from query_router.core import default_candidates_path
from query_router.data import split_data, load_llmrouter
from query_router.evaluate import *

def run(*args):
    return subprocess.run([sys.executable, '-c', 'import sys; from query_router.cli import main; sys.exit(main())', *args],
                          capture_output=True, text=True, timeout=600)

def test_aiq_of_known_hulls():
    assert aiq([0, 1], [0.5, 1], 0, 1) == pytest.approx(0.75) # a straight line
    assert aiq([0, 0.5, 1], [0.5, 0.6, 1], 0, 1) == pytest.approx(0.75) # a point under the hull changes nothing
    assert aiq([0, 0.5, 1], [0.5, 0.9, 1], 0, 1) == pytest.approx(0.35 + 0.475) # one above lifts it
    assert aiq([0, 0.5, 1], [0.5, 0.9, 0.8], 0, 1) == pytest.approx(0.35 + 0.45) # paying more for less: flat
    assert aiq([2, 4], [0.2, 0.6], 0, 4) == pytest.approx((0.2 + 0.6) / 2 * 2 / 4) # nothing left of the cheapest point

def test_pgr_apgr_cpt_on_a_toy():
    weak, strong = np.array([1, 0, 0, 0]), np.array([1, 1, 1, 0])
    x, p = pgr_curve(np.array([0.1, 0.9, 0.8, 0.0]), weak, strong) # prefers strong exactly where it helps
    assert x.tolist() == [0, .25, .5, .75, 1] and p.tolist() == [0, .5, 1, 1, 1]
    assert apgr(x, p) == pytest.approx(0.75)
    assert cpt(x, p, 0.5) == pytest.approx(0.25) and cpt(x, p, 0.8) == pytest.approx(0.4)
    x, p = pgr_curve(np.array([0.9, 0.0, 0.1, 0.8]), weak, strong) # the worst order
    assert apgr(x, p) == pytest.approx(0.25) and cpt(x, p, 0.5) == pytest.approx(0.75)
    x, p = pgr_curve(np.zeros(4), weak, strong) # no preference: the random router
    assert apgr(x, p) == pytest.approx(0.5) and cpt(x, p, 0.8) == pytest.approx(0.8)
    with pytest.raises(ValueError, match='strong model that beats the weak'): pgr_curve(np.zeros(4), strong, weak)

def test_under_and_over_routing_on_a_toy_confusion():
    cm = np.array([[2, 1, 0], [1, 3, 1], [0, 2, 4]]) # rows: needed tier, columns: chosen, cheapest first
    m = tier_metrics(cm, costs=[1, 2, 4])
    assert m['accuracy'] == pytest.approx(9 / 14)
    assert m['under_routed'] == pytest.approx(3 / 14) and m['over_routed'] == pytest.approx(2 / 14)
    assert m['cost_vs_largest'] == pytest.approx((3 * 1 + 6 * 2 + 5 * 4) / 14 / 4)
    assert tier_metrics(confusion([0, 1, 2], [0, 1, 2], 3))['under_routed'] == 0

def test_calibration_meets_its_target_on_held_out_data(default_data):
    tr, va, te = split_data(default_data, 'grouped')
    r = TfidfRouter().fit(tr) # reads words; since dataset v2, length alone cannot reach a 0.8 quality floor
    sv, st = r.score_batch(va.queries), r.score_batch(te.queries)
    costs = te.costs()
    for share in (0.3, 0.5):
        cal = calibrate(sv, outcome_matrix(va), costs, 'utility', max_cost=share * costs.max())
        q, c = route_value(decide(st, 'utility', cal['param'], costs), outcome_matrix(te), costs)
        assert c <= share * costs.max() * 1.1, (share, c) # within 10% of the budget on unseen topics
        assert q > outcome_matrix(te)[:, 0].mean() # and better than always-cheapest
    cal = calibrate(sv, outcome_matrix(va), costs, 'threshold', min_quality=0.8)
    q, _ = route_value(decide(st, 'threshold', cal['param'], costs), outcome_matrix(te), costs)
    assert q >= 0.8 - 0.05, q

def test_evaluate_cli_writes_json_and_markdown(tmp_path, default_data):
    data = tmp_path/'d.csv'
    default_data.frame.head(240).rename(columns={'query': 'question', 'group': 'topic'})[['question', 'label', 'topic']].to_csv(data, index=False)
    assert 'give a candidates file' in run('evaluate', '--data', str(data), '--routers', 'length', '--out', str(tmp_path/'o1')).stderr
    r = run('evaluate', '--data', str(data), '--candidates', str(default_candidates_path()), '--routers', 'length,tfidf', '--out', str(tmp_path/'out'), '--n_latency', '3')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'out'/'evaluate.json').read_text())
    names = [row['router'] for row in res['rows']]
    assert {'random', 'oracle', 'always 3B (cheapest)', 'length', 'tfidf'} <= set(names)
    assert 'no token counts' in res['meta']['cost_unit']
    md = (tmp_path/'out'/'evaluate.md').read_text()
    assert '| router | quality | cost_rel | aiq |' in md and '| length |' in md and 'under_routed' in md
    assert (tmp_path/'out'/'evaluate_curves.png').stat().st_size > 1000 and (tmp_path/'out'/'evaluate_confusion.png').exists()
    bad = run('evaluate', '--data', str(data), '--candidates', str(default_candidates_path()), '--routers', 'vibes', '--out', str(tmp_path/'o2'))
    assert bad.returncode == 1 and "unknown routers ['vibes']" in bad.stderr and 'Traceback' not in bad.stderr

def test_calibrated_artifact_is_served_with_its_policy(tmp_path, default_data, embedder):
    from query_router.knn import build_artifacts
    from query_router.serve import load_router, make_app, ServerThread
    tr, va, _ = split_data(default_data, 'grouped')
    art = build_artifacts(tmp_path/'art', tr.subset(range(120)), embedder, n_trees=10)
    cal_file = tmp_path/'valid.csv'
    va.frame.head(50).rename(columns={'query': 'question', 'group': 'topic'})[['id', 'question', 'label', 'topic']].to_csv(cal_file, index=False)
    r = run('calibrate', '--artifacts', str(art), '--data', str(cal_file), '--split', 'all', '--budget', '0.4')
    assert r.returncode == 0, r.stderr[-2000:]
    settings = json.loads((art/'manifest.json').read_text())['settings']
    assert settings['policy'] == 'utility' and settings['calibration']['budget_share'] == 0.4
    assert settings['calibration']['cost'] <= 0.4 * 0.9 + 1e-9
    router = load_router(art, embedder=embedder)
    with ServerThread(make_app(router)) as srv:
        c = httpx.Client(base_url=srv.url, timeout=60)
        h = c.get('/health').json()
        assert h['policy'] == {'name': 'utility', 'param': settings['param']}
        ans = c.post('/', json={'query': 'Prove that there are infinitely many primes.'}).json()
        assert ans['policy'] == {'name': 'utility', 'param': settings['param']}
        assert c.post('/', json={'query': 'hi', 'policy': 'argmax'}).json()['policy']['name'] == 'argmax' # a request can still override
    over = run('calibrate', '--artifacts', str(art), '--data', str(cal_file), '--split', 'all', '--budget', '0.01')
    assert over.returncode == 1 and 'cheapest reachable' in over.stderr and 'Traceback' not in over.stderr

def test_knn_beats_random_and_cheapest_on_llmrouter(embedder):
    need_shared()
    tr, te = load_llmrouter('train'), load_llmrouter('test')
    rng = np.random.default_rng(0)
    tr, te = tr.subset(sorted(rng.choice(len(tr), 400, replace=False))), te.subset(sorted(rng.choice(len(te), 150, replace=False)))
    emb = CachedEmbedder(embedder)
    res = compare({'knn': lambda d: fit_knn(d, emb, 10)}, tr, te, cal_frac=0, embedder=emb, n_latency=3, progress=False)
    rows = {r['router']: r for r in res['rows']}
    knn, rand = rows['knn'], rows['random']
    cheapest = next(r for n, r in rows.items() if n.endswith('(cheapest)'))
    assert 'error' not in knn, knn.get('error')
    assert knn['quality'] > rand['quality'] + 0.05 and knn['quality'] > cheapest['quality'] + 0.02, (knn['quality'], rand['quality'], cheapest['quality'])
    cv = res['curves']['knn'] # some operating point costs no more than random and answers better
    assert max(q for q, c in zip(cv['quality'], cv['cost']) if c <= rand['cost']) > rand['quality'] + 0.05
    assert knn['aiq'] > cheapest['aiq'] and knn['aiq'] > rand['aiq']
    assert knn['p50_ms'] > 0 and knn['size_mb'] > 0
