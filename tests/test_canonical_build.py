"A built artifact records the canonicalisation it applied, and routes a request wrapped in harmless text like the bare request."
import numpy as np, pytest
from query_router.data import load_default_dataset
from query_router.knn import build_artifacts
from query_router.artifacts import load_manifest, load_router
from query_router.router import respond

@pytest.fixture(scope='module')
def art(tmp_path_factory):
    d = load_default_dataset().subset(range(120))
    return build_artifacts(tmp_path_factory.mktemp('canon')/'art', d, n_trees=5, progress=False, settings={'k': 10})

def test_manifest_records_canonicalisation(art):
    spec = load_manifest(art)['settings']['canonicalize']
    assert spec and spec['steps'], spec

def test_wrapped_request_routes_like_the_bare_one(art):
    r = load_router(art)
    q = 'Explain how a hash map handles collisions.'
    wrapped = [f'Hi! {q}', f'{q} Thanks!', f'<|im_start|>user\n{q}<|im_end|>', f'   {q}   ']
    a = respond(r, [q] + wrapped)
    for w in a[1:]:
        assert w['route'] == a[0]['route']
        np.testing.assert_allclose([s['score'] for s in w['scores']], [s['score'] for s in a[0]['scores']], atol=1e-4)

def test_opt_out(tmp_path):
    d = load_default_dataset().subset(range(40))
    p = build_artifacts(tmp_path/'raw', d, n_trees=2, progress=False, canonicalize=False)
    assert not load_manifest(p)['settings'].get('canonicalize')
