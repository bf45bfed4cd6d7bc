"Issue 19 for every artifact kind: canonicalisation is recorded by `write_artifact` and applied on load by `Router.prepare`, whatever the router; the ordinal decision and its margin."
import numpy as np, pytest
from query_router.artifacts import load_manifest, load_router
from query_router.build import build_router, build_cli
from query_router.canonical import load_canon_spec, load_rewrites, select_variants, rewrite
from query_router.router import decide, margins, respond
from test_robustness import QUERIES, WHITESPACE, CASING

KINDS = {'tfidf': {}, 'length': {}, 'linear': {}, 'hybrid': {'folds': 2, 'k': 5}, 'mf': {'epochs': 30, 'dim': 8}}

@pytest.fixture(scope='module')
def small(default_data): return default_data.subset(range(0, len(default_data), 10))

@pytest.fixture(scope='module')
def built(tmp_path_factory, small, embedder):
    "kind -> (artifact path, loaded router), each built the default way (canonicalised)."
    root = tmp_path_factory.mktemp('kinds')
    return {k: (p, load_router(p)) for k, o in KINDS.items() for p in [build_router(k, root/k, small, embedder, **o)]}

@pytest.mark.parametrize('kind', list(KINDS))
def test_manifest_records_and_load_applies_canonicalisation(built, kind):
    p, r = built[kind]
    assert load_manifest(p)['settings']['canonicalize'] == load_canon_spec()
    assert r.canonicalizer() is not None and r.prepare(['  Hello!\n\n' + QUERIES[0] + '\n\nThanks!']) == [QUERIES[0].rstrip('.')]

@pytest.mark.parametrize('kind', list(KINDS))
def test_whitespace_and_casing_never_change_a_route(built, kind):
    r = built[kind][1]
    base = r.route_batch(QUERIES)
    for f in WHITESPACE + CASING:
        assert r.route_batch([f(q) for q in QUERIES]) == base, (kind, f)

@pytest.mark.parametrize('kind', list(KINDS))
def test_rewritten_fixture_routes_like_the_originals(built, kind):
    "Seen rewrites that carry no task (greetings, politeness, markdown, chat templates, whitespace, casing) route exactly like the originals, for every kind."
    r = built[kind][1]
    vs = select_variants(load_rewrites(), heldout=False, only=['greetings', 'politeness', 'whitespace', 'markdown', 'chat', 'casing'])
    qs = [q for q in QUERIES if len(q) > 10]
    base = r.route_batch(qs)
    for f, v in vs: assert r.route_batch([rewrite(q, v) for q in qs]) == base, (kind, f, v['name'])

def test_opt_out_for_every_kind(tmp_path, small):
    p = build_router('tfidf', tmp_path/'raw', small, canonicalize=False)
    assert not load_manifest(p)['settings'].get('canonicalize') and load_router(p).canonicalizer() is None
    p = build_cli.__wrapped__(out=str(tmp_path/'cli'), router='length', no_canonicalize=True) # the CLI flag applies to every kind now
    assert not load_manifest(p)['settings'].get('canonicalize')

def test_ordinal_moves_at_most_one_tier_and_its_margin(built):
    "The median tier of the votes: a small change of the shares moves it at most one tier; its margin is the share that would have to move."
    rng = np.random.default_rng(0)
    V = 0.025 + 0.9 * rng.dirichlet(np.ones(4), 2000); W = np.clip(V + rng.normal(0, 0.005, V.shape), 0, None) # every tier holds some share; small noise
    a, b = decide(V, 'ordinal'), decide(W, 'ordinal')
    assert np.abs(a - b).max() <= 1 and np.abs(decide(V) - decide(W)).max() > 1 # the arg-max jumps tiers on the same noise
    m = margins(V, a, 'ordinal', 0.5)
    assert (m >= 0).all() and (m <= 0.5).all()
    assert (a == b)[m > 0.02].all() # a decision with more than the noise's share of margin does not flip
    r = built['linear'][1]
    for ans in respond(r, QUERIES, 'ordinal'):
        assert ans['policy']['name'] == 'ordinal' and 0 <= ans['margin'] <= 0.5

def test_server_takes_the_ordinal_policy(built):
    pytest.importorskip('fastapi')
    from fastapi.testclient import TestClient
    from query_router.serve import make_app
    c = TestClient(make_app(built['tfidf'][1]))
    r = c.post('/', json={'query': QUERIES[1], 'policy': 'ordinal'})
    assert r.status_code == 200 and 0 <= r.json()['margin'] <= 0.5
