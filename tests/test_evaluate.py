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
    r = run('evaluate', '--data', str(data), '--candidates', str(default_candidates_path()), '--routers', 'length,tfidf', '--out', str(tmp_path/'out'),
            '--n_latency', '3', '--cal_folds', '2', '--split', 'random')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'out'/'evaluate.json').read_text())
    names = [row['router'] for row in res['rows']]
    assert {'random', 'oracle', 'always 3B (cheapest)', 'length', 'tfidf', 'task-only'} <= set(names)
    assert 'no token counts' in res['meta']['cost_unit'] and res['meta']['cost_unit_short'] == '$/Mtok'
    md = (tmp_path/'out'/'evaluate.md').read_text()
    assert '| router | quality | cost_rel | aiq |' in md and '| length |' in md and 'under_routed' in md
    assert 'chosen **on training data only**, from 2-fold out-of-fold scores' in md and 'spent (test)' in md
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
    res = compare({'knn': lambda d: fit_knn(d, emb, 10)}, tr, te, calibration=None, baselines=False, embedder=emb, n_latency=3, progress=False)
    rows = {r['router']: r for r in res['rows']}
    knn, rand = rows['knn'], rows['random']
    cheapest = next(r for n, r in rows.items() if n.endswith('(cheapest)'))
    assert 'error' not in knn, knn.get('error')
    assert knn['quality'] > rand['quality'] + 0.05 and knn['quality'] > cheapest['quality'] + 0.02, (knn['quality'], rand['quality'], cheapest['quality'])
    cv = res['curves']['knn'] # some operating point costs no more than random and answers better
    assert max(q for q, c in zip(cv['quality'], cv['cost']) if c <= rand['cost']) > rand['quality'] + 0.05
    assert knn['aiq'] > cheapest['aiq'] and knn['aiq'] > rand['aiq']
    assert knn['p50_ms'] > 0 and knn['size_mb'] > 0

# --- issue 17 part B: costs per query, calibration aimed at the budget, baselines, folds, refusals ---
import warnings
import pandas as pd
from query_router.core import Candidate
from query_router.data import load_routing_data

def test_route_value_charges_a_cost_matrix_per_query():
    O, C = np.ones((2, 2)), np.array([[1., 10], [2, 20]]) # query 0 costs 1 or 10, query 1 costs 2 or 20
    assert route_value([0, 1], O, C) == (1.0, 10.5) # not 8.25, what indexing the matrix as one row per target gave
    assert route_value([0, 1], O, [1, 10]) == (1.0, 5.5)
    with pytest.raises(ValueError, match=r'one per query and target, shape \(2, 2\); got shape \(3, 2\)'): route_value([0, 1], O, np.ones((3, 2)))
    sw = sweep(np.array([[0.9, 1.0], [0.9, 1.0]]), O, C)
    assert sw['cost'].max() == pytest.approx(15.0) and sw['cost'].min() == pytest.approx(1.5)

def test_calibration_aims_at_the_budget_not_below_it():
    rng = np.random.default_rng(0) # a flat, noisy curve: three models of nearly equal quality, scores that know little
    O = (rng.random((600, 3)) < [0.55, 0.57, 0.58]).astype(float); S = rng.random((600, 3)) * 0.1 + O * 0.02
    costs = np.array([0.1, 0.2, 0.9])
    spend = calibrate(S[:300], O[:300], costs, max_cost=0.3 * 0.9)
    qual = calibrate(S[:300], O[:300], costs, max_cost=0.3 * 0.9, aim='quality')
    assert 0.9 * 0.27 <= spend['calibration']['cost'] <= 0.27 + 1e-12 # spends the budget...
    assert qual['calibration']['cost'] <= spend['calibration']['cost'] # ...where the best-quality point may spend far less
    _, c = route_value(decide(S[300:], 'utility', spend['param'], costs), O[300:], costs)
    assert 0.7 * 0.27 <= c <= 1.15 * 0.27, c # and on held-out queries it still spends close to the budget

def test_calibrate_cv_chooses_on_training_data_and_spends_the_budget(default_data):
    tr, va, te = split_data(default_data, 'grouped')
    full = concat_data(tr, va)
    cal = calibrate_cv(lambda d: LengthRouter().fit(d), full, budget=0.5, k=5, how='grouped')
    assert cal['calibration']['n'] == len(full) and cal['calibration']['folds'] == 5
    r = LengthRouter().fit(full)
    q, c = route_value(decide(r.score_batch(te.queries), 'utility', cal['param'], te.costs()), outcome_matrix(te), te.costs())
    assert 0.4 <= c / te.costs().max() <= 0.55, c # asked for 50% of always-70B's cost, on unseen topics

def test_compare_carries_baselines_calibrated_points_and_returns_routers(default_data):
    small = default_data.subset(range(400))
    a, b, c = split_data(small, 'random')
    res = compare({'tfidf': lambda d: TfidfRouter(max_features=5000).fit(d)}, a, c, valid=b, n_latency=0, progress=False, cal_folds=2)
    rows = {r['router']: r for r in res['rows']}
    assert {'task-only', 'length-only'} <= set(rows) and rows['task-only']['simple_baseline'] and 'error' not in rows['task-only']
    t = rows['tfidf']
    assert t['cal_budget'] == 0.5 and t['cal_train_cost_rel'] <= 0.5 + 1e-9 and t['cal_cost_rel'] is not None and t['cal_method'] == '2-fold out-of-fold'
    assert res['meta']['calibration']['chosen_on'] == 'training data only' and res['meta']['calibration']['n'] == len(a) + len(b)
    assert set(res.routers) == {'tfidf', 'task-only', 'length-only'}
    to = next(r for r in res['rows'] if r['router'] == 'task oracle') # the ceiling of routing by task, from the test split's own task means
    assert to['baseline'] and to['aiq'] >= rows['task-only']['aiq'] - 1e-9 and 'task oracle' in res['curves']
    S = task_oracle_scores(res.outcomes, c.groups)
    g = np.asarray(c.groups)
    assert np.allclose(S[g == g[0]], res.outcomes[g == g[0]].mean(0))
    assert np.allclose(res.scores['tfidf'], res.routers['tfidf'].score_batch(c.queries)) and res.costs.shape == (len(c), 4)
    vs = res['meta']['vs_baselines']
    assert vs['best_router'] == 'tfidf' and 'task-only_aiq' in vs and 'length-only_aiq' in vs
    json.dumps(res) # still plain JSON

def test_compare_bootstrap_gives_standard_errors_and_paired_tests(default_data):
    small = default_data.subset(range(400))
    a, b, c = split_data(small, 'random')
    res = compare({'tfidf': lambda d: TfidfRouter(max_features=5000).fit(d)}, a, c, valid=b, n_latency=0, progress=False, cal_folds=2, bootstrap=100)
    rows = {r['router']: r for r in res['rows']}
    t = rows['tfidf']
    for m in ('aiq', 'apgr', 'q@50%', 'cal_quality'):
        assert t[f'{m}_se'] > 0 and t[f'{m}_lo'] <= t[m] <= t[f'{m}_hi'], (m, t[f'{m}_lo'], t[m], t[f'{m}_hi'])
    assert 0 <= t['p_aiq_above_task-only'] <= 1 and 'p_aiq_above_length-only' in t
    assert rows['length-only']['aiq_se'] > 0 and 'p_aiq_above_task-only' not in rows['length-only'] # baselines get errors, not tests against each other
    assert res['meta']['bootstrap']['n'] == 100 and 'within each task' in res['meta']['bootstrap']['how']
    d = bootstrap_draws(res.scores['tfidf'], res.outcomes, res.costs, 0, (0, 3), n=100, groups=c.groups) # the same seed: the row's figures come from these draws
    assert d['aiq'].std() == pytest.approx(t['aiq_se'])
    json.dumps(res)
    with pytest.raises(ValueError, match='at least 2 resamples'): compare({'length': lambda d: LengthRouter().fit(d)}, a, c, n_latency=0, progress=False, calibration=None, bootstrap=1)

def test_group_router_knows_only_the_task():
    d = load_routing_data(pd.DataFrame({'prompt': list('abcdef'), 'task': ['x', 'x', 'x', 'y', 'y', 'z'], 'm1': [1, 1, 0, 0, 0, 1], 'm2': [1, 1, 1, 1, 1, 0]}),
                          [Candidate('m1', 7, .1, .1), Candidate('m2', 70, 1, 1)])
    g = GroupRouter(prior_weight=0).fit(d.subset(range(5)))
    assert np.allclose(g.score_data(d.subset([0, 3]))[:, 0], [2 / 3, 0]) and np.allclose(g.score_data(d.subset([5]))[0], g.prior)

def test_compare_refuses_empty_sets_and_grouped_splits_of_few_groups(tmp_path, default_data):
    a, b, c = split_data(default_data.subset(range(200)), 'random')
    with pytest.raises(ValueError, match='the training set is empty'): compare({'length': lambda d: LengthRouter().fit(d)}, a.subset([]), c, progress=False)
    with pytest.raises(ValueError, match='the test set is empty'): compare({'length': lambda d: LengthRouter().fit(d)}, a, c.subset([]), progress=False)
    data = tmp_path/'few.csv'
    default_data.frame.head(60).assign(group=['a'] * 30 + ['b'] * 30).rename(columns={'query': 'question', 'group': 'topic'})[['question', 'label', 'topic']].to_csv(data, index=False)
    r = run('evaluate', '--data', str(data), '--candidates', str(default_candidates_path()), '--routers', 'knn,tfidf', '--split', 'grouped', '--out', str(tmp_path/'o'))
    assert r.returncode == 1 and 'only 2 groups for 3 parts' in r.stderr and 'Use a random split' in r.stderr and 'Traceback' not in r.stderr and 'IndexError' not in r.stderr

def test_two_candidates_without_prices_get_pair_metrics(tmp_path):
    rng = np.random.default_rng(0)
    n = 160; hard = rng.random(n) < 0.5
    qs = [('prove the lemma about primes and groups ' * 4 if h else 'hi there ') + f'#{i}' for i, h in enumerate(hard)]
    strong, weak = (rng.random(n) < 0.9).astype(int), np.where(hard, rng.random(n) < 0.2, rng.random(n) < 0.85).astype(int)
    data = tmp_path/'pair.csv'
    pd.DataFrame({'prompt': qs, 'gpt-4o': strong, 'llama-8b': weak}).to_csv(data, index=False)
    r = run('evaluate', '--data', str(data), '--routers', 'tfidf', '--split', 'random', '--out', str(tmp_path/'o'), '--n_latency', '0', '--cal_folds', '2')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'o'/'evaluate.json').read_text())
    assert res['meta']['pair'] == ['llama-8b', 'gpt-4o'] and res['meta']['cost_unit_short'] == 'rank' # weak first, from the data
    t = next(x for x in res['rows'] if x['router'] == 'tfidf')
    assert t['apgr'] > 0.6 and t['cpt50'] is not None
    md = (tmp_path/'o'/'evaluate.md').read_text()
    assert 'need no prices' in md and 'mean score (no prices)' in md

def test_per_query_costs_are_charged_and_labelled(tmp_path):
    rng = np.random.default_rng(1)
    n = 150; long = rng.random(n) < 0.4
    qs = [('write a long essay about history and its many lessons ' * 3 if l else 'short one ') + str(i) for i, l in enumerate(long)]
    df = pd.DataFrame({'prompt': qs, 'small': np.where(long, 0, 1), 'big': 1,
                       'small|total_cost': np.where(long, 0.004, 0.001), 'big|total_cost': np.where(long, 0.08, 0.02)})
    df.loc[3, 'big'] = None # a candidate not run on one query
    data = tmp_path/'rb.csv'; df.to_csv(data, index=False)
    r = run('evaluate', '--data', str(data), '--routers', 'length', '--split', 'random', '--out', str(tmp_path/'e'))
    assert r.returncode == 1 and "missing scores in 1 rows ({'big': 1}" in r.stderr and "--missing drop" in r.stderr
    r = run('evaluate', '--data', str(data), '--routers', 'length', '--split', 'random', '--missing', 'drop', '--out', str(tmp_path/'o'), '--n_latency', '0', '--cal_folds', '2')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'o'/'evaluate.json').read_text())
    assert res['meta']['cost_unit_short'] == '$/query' and 'USD per query' in res['meta']['cost_unit']
    rows = {x['router']: x for x in res['rows']}
    assert rows['always big (best single)']['cost'] > 0.02 # the mean of what each test query cost, not a price per Mtok
    assert '$/query' in (tmp_path/'o'/'evaluate.md').read_text()

def test_folds_report_mean_and_spread(tmp_path, default_data):
    data = tmp_path/'d.csv'
    default_data.frame.head(200).rename(columns={'query': 'text', 'group': 'area', 'id': 'key'})[['key', 'text', 'label', 'area']].to_csv(data, index=False)
    r = run('evaluate', '--data', str(data), '--candidates', str(default_candidates_path()), '--routers', 'length', '--folds', '3', '--cal_folds', '2',
            '--query_col', 'text', '--id_col', 'key', '--group_col', 'area', '--out', str(tmp_path/'o'), '--n_latency', '0')
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'o'/'evaluate.json').read_text())
    assert res['meta']['folds']['k'] == 3 and len(res['fold_rows']) == 3
    row = next(x for x in res['rows'] if x['router'] == 'length')
    assert row['n_folds'] == 3 and 'aiq_sd' in row and 'cal_cost_rel_sd' in row
    assert ' ± ' in (tmp_path/'o'/'evaluate.md').read_text()

def test_a_stray_word_in_a_score_column_names_file_row_and_column(tmp_path):
    data = tmp_path/'models.csv'
    data.write_text('prompt,gpt-4o,llama-8b\nhi,1,1\nprove it,1,0\nsort this,1,yes\n')
    r = run('evaluate', '--data', str(data), '--routers', 'length', '--split', 'random', '--out', str(tmp_path/'o'))
    assert r.returncode == 1 and "models.csv: non-numeric score 'yes' in column 'llama-8b', row 2 (line 4)" in r.stderr and 'Traceback' not in r.stderr
