"Issue 19: same request, same route. Whitespace and casing never change a route; rewrites that carry no task route like the originals; the margin is present and in range."
import json, shutil
import numpy as np, pytest
from query_router.router import Router, decide, margins, respond
from query_router.canonical import Canonicalizer, load_canon_spec, load_rewrites, select_variants, rewrite, canonicalize_data

QUERIES = ['Write a Python function that checks whether a string is a palindrome.',
           'Prove that the square root of 2 is irrational.',
           'What is the capital of France?',
           'Design a distributed rate limiter for an API gateway serving 2 million requests per second across regions; explain the consistency trade-offs.',
           'Translate "good morning" into Spanish.',
           'Summarise the causes of the First World War in three bullet points.',
           'hi',
           'Explain the difference between a process and a thread, with an example in C.']

WHITESPACE = [lambda q: '   ' + q + '   ', lambda q: q.replace(' ', '  '), lambda q: q.replace(' ', '\t'), lambda q: '\n' + q.replace('. ', '.\n') + '\n\n',
              lambda q: q.replace(' ', ' \u00a0')]
CASING = [str.lower, str.upper, str.swapcase, str.title]

@pytest.fixture(scope='module')
def spec(): return load_canon_spec()

@pytest.fixture(scope='module')
def knn(tmp_path_factory, embedder, default_data, spec):
    "A small KNN artifact that records its canonicalisation in the manifest, as the default artifact does."
    from query_router.knn import build_artifacts, KNNRouter
    d = default_data.subset(range(0, len(default_data), 12))
    p = build_artifacts(tmp_path_factory.mktemp('robust')/'art', canonicalize_data(d, spec), embedder, n_trees=10, settings={'k': 10, 'canonicalize': spec})
    return KNNRouter(p, embedder, exact=True)

@pytest.fixture(scope='module')
def tfidf(default_data, spec):
    from query_router.evaluate import TfidfRouter
    r = TfidfRouter().fit(canonicalize_data(default_data.subset(range(0, len(default_data), 4)), spec))
    r.canonicalize = spec
    return r

def test_manifest_records_canonicalisation(knn, spec):
    assert knn.manifest['settings']['canonicalize'] == spec
    assert knn.canonicalizer() is not None and knn.prepare(['  Hi!  ' + QUERIES[0]]) == [QUERIES[0].rstrip('.')]

@pytest.mark.parametrize('kind', ['knn', 'tfidf'])
def test_whitespace_and_casing_never_change_a_route(kind, request):
    r = request.getfixturevalue(kind)
    base = r.route_batch(QUERIES)
    for f in WHITESPACE + CASING:
        assert r.route_batch([f(q) for q in QUERIES]) == base, f
    s0, s1 = r.score_batch(QUERIES), r.score_batch([WHITESPACE[1](q.upper()) for q in QUERIES])
    np.testing.assert_allclose(s0, s1, atol=1e-5) # the scores, not only the routes

def test_seen_rewrites_without_a_task_route_like_the_originals(knn, tfidf):
    "A fixture of rewritten queries (greetings, politeness, markdown, chat templates, whitespace: the seen variants) routes exactly like the originals."
    fams = load_rewrites()
    vs = select_variants(fams, heldout=False, only=['greetings', 'politeness', 'whitespace', 'markdown', 'chat', 'casing'])
    assert len(vs) >= 20
    qs = [q for q in QUERIES if len(q) > 10]
    for r in (knn, tfidf):
        base = r.route_batch(qs)
        for f, v in vs:
            assert r.route_batch([rewrite(q, v) for q in qs]) == base, (f, v['name'])

def test_without_canonicalisation_a_greeting_can_matter(knn):
    "The hook is what makes the difference: switched off, the router scores the greeting too."
    q = 'Hi! Quick question: ' + QUERIES[2] + '\n\nThanks!'
    knn.canonicalize = False
    try: raw = knn.score_batch([q])
    finally: knn.canonicalize = None
    assert not np.allclose(raw, knn.score_batch([q])) and np.allclose(knn.score_batch([q]), knn.score_batch([QUERIES[2]]))

def test_margin_present_and_in_range(knn):
    for policy, param in [('argmax', None), ('threshold', 0.4), ('utility', 0.5)]:
        ans = respond(knn, QUERIES, policy, param)
        for a in ans:
            assert 'margin' in a and isinstance(a['margin'], float)
            assert 0 <= a['margin'] <= 1 + (param or 0)
    a = respond(knn, [QUERIES[0]])[0]
    top = [s['score'] for s in a['scores']]
    assert a['route'] == a['scores'][0]['target'] and abs(a['margin'] - (top[0] - top[1])) < 2e-4 # argmax: best minus second best

def test_margin_in_http_answer(knn):
    pytest.importorskip('fastapi')
    from fastapi.testclient import TestClient
    from query_router.serve import make_app
    c = TestClient(make_app(knn))
    r = c.post('/', json={'query': QUERIES[1]})
    assert r.status_code == 200 and 0 <= r.json()['margin'] <= 1

def test_margin_rule_settles_near_ties():
    s = np.array([[0.40, 0.45, 0.15], [0.1, 0.2, 0.7]])
    assert decide(s).tolist() == [1, 2]
    assert decide(s, margin=0.1).tolist() == [0, 2] # a near-tie goes to the cheaper
    assert decide(s, margin=0.1, tie_break='capable').tolist() == [1, 2]
    m = margins(s, decide(s)); assert np.allclose(m, [0.05, 0.5])

def test_decide_takes_a_cost_matrix():
    s = np.array([[0.5, 0.6], [0.5, 0.6]])
    C = np.array([[1.0, 2.0], [1.0, 20.0]]) # the second query is long: its big model costs ten times more
    assert decide(s, 'utility', 1.0, C, cost_scale=20).tolist() == [1, 0]
    with pytest.raises(ValueError, match='costs must have shape'): decide(s, 'utility', 1.0, np.ones((3, 2)))

def test_router_reads_margin_rule_from_manifest():
    class R(Router):
        targets, costs = ['s', 'b'], np.array([1.0, 2.0])
        def score_batch(self, qs): return np.tile([0.5, 0.55], (len(qs), 1))
    r = R(); assert r.route('x') == 'b'
    r.manifest = {'settings': {'margin': 0.1}}; assert r.route('x') == 's'
    r.manifest['settings']['tie_break'] = 'capable'; assert r.route('x') == 'b'
    assert respond(r, ['x'])[0]['margin'] == pytest.approx(0.05)

def test_bad_rules_are_named(tmp_path):
    p = tmp_path/'canon.json'; p.write_text(json.dumps({'steps': {'x': [['(', '']]}}))
    with pytest.raises(ValueError, match="step 'x' rule 0: bad pattern"): load_canon_spec(p)
    p.write_text('{nope'); 
    with pytest.raises(ValueError, match='not valid JSON'): load_canon_spec(p)
    p.write_text(json.dumps({'families': {'f': [{'name': 'v'}]}}))
    with pytest.raises(ValueError, match="variant 'v': give one of"): load_rewrites(p)

def test_canonicalisation_is_idempotent_and_never_empties(spec):
    c = Canonicalizer(spec)
    for q in QUERIES:
        for f, v in select_variants(load_rewrites(), None):
            t = c(rewrite(q, v))
            assert c(t) == t and t.strip()
