"Artifacts and the KNN router: interop with the original's files, checks on load, the scoring formula."
import json, uuid, numpy as np, pytest
from query_router.embed import Embedder
from query_router.knn import build_artifacts, KNNRouter, load_manifest, ArtifactError

class Resized(Embedder):
    "The bundled model cut to fewer dimensions: a different embedder."
    def __init__(self, base, dim):
        self.__dict__.update(base.__dict__); self.dim, self.name, self._fp = dim, f'resized-{dim}', None
    def encode(self, texts, progress=None):
        e = Embedder.encode(self, texts, progress)
        e = e[..., :self.dim]
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

def test_dimension_mismatch_is_refused(small_artifacts, embedder):
    with pytest.raises(ArtifactError, match='dimension mismatch'): KNNRouter(small_artifacts, Resized(embedder, 128))

def test_files_written_by_the_original_build_here(tmp_path, embedder, default_data):
    "The original wrote random uuid4 ids, no utterance, one target line per point with score 1."
    d = default_data.subset(range(40)); x = embedder.encode(d.queries)
    ids = [str(uuid.uuid4()) for _ in range(len(d))]
    with open(tmp_path/'points.jsonl', 'w') as f:
        for i, l, e in zip(ids, d.labels, x): f.write(json.dumps({'point_uid': i, 'category': l, 'embedding': e.tolist()}) + '\n')
    with open(tmp_path/'targets.jsonl', 'w') as f:
        for i, l in zip(ids, d.labels): f.write(json.dumps({'point_uid': i, 'target': l, 'score': 1}) + '\n')
    art = build_artifacts(tmp_path/'art', points=tmp_path/'points.jsonl', targets=tmp_path/'targets.jsonl', model=embedder, n_trees=5)
    r = KNNRouter(art, embedder)
    assert r.targets == ['3B', '7B', '30B', '70B'] # cost order, not the file's or alphabetical
    assert KNNRouter(art, embedder, k=1).route(d.queries[5]) == d.labels[5] # its own point is its nearest neighbour (a 10-vote depends on the data)
    # and ours export back to the original's format: every target line names a known point
    from query_router.knn import export_artifact
    ex = export_artifact(art, tmp_path/'ex', progress=False)
    uids = {json.loads(l)['point_uid'] for l in open(ex['points'])}
    assert uids == set(ids) and all(json.loads(l)['point_uid'] in uids for l in open(ex['targets']))

def test_graded_targets_give_weighted_means(tmp_path, embedder):
    import pandas as pd
    from query_router.data import load_routing_data
    from query_router.core import Candidate
    df = pd.DataFrame({'prompt': ['add two numbers in python', 'add 2 numbers using python', 'prove the four colour theorem'],
                       'scores': [{'small': 1.0, 'big': 1.0}, {'small': 0.5, 'big': 1.0}, {'small': 0.0, 'big': 1.0}]})
    d = load_routing_data(df, [Candidate('small', 1, 0.1, 0.1), Candidate('big', 70, 1, 1)])
    art = build_artifacts(tmp_path/'g', d, embedder, n_trees=2)
    r = KNNRouter(art, embedder, k=3, exact=True)
    idx, sims, sc = r.neighbours(['sum of two numbers in python'])
    w = np.clip(sims[0], 0, None)
    want = (w[:, None] * d.scores()[idx[0]]).sum(0) / w.sum()
    np.testing.assert_allclose(sc[0], want, rtol=1e-5)
    assert r.route('sum of two numbers in python', 'threshold', 0.4) == 'small'

def test_rebuild_replaces_atomically(tmp_path, embedder, default_data):
    a = build_artifacts(tmp_path/'x', default_data.subset(range(20)), embedder, n_trees=2)
    first = load_manifest(a)['files']
    build_artifacts(tmp_path/'x', default_data.subset(range(20, 50)), embedder, n_trees=2)
    m = load_manifest(tmp_path/'x')
    assert m['n_points'] == 30 and m['files'] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x'] # no temporary or old folders left

# --- similarity temperature (issue 19): a servable artifact setting

def _graded(embedder, tmp_path, settings=None):
    import pandas as pd
    from query_router.data import load_routing_data
    from query_router.core import Candidate
    df = pd.DataFrame({'prompt': ['add two numbers in python', 'add 2 numbers using python', 'prove the four colour theorem', 'sum a list of numbers'],
                       'scores': [{'small': 1.0, 'big': 1.0}, {'small': 0.5, 'big': 1.0}, {'small': 0.0, 'big': 1.0}, {'small': 0.8, 'big': 0.9}]})
    d = load_routing_data(df, [Candidate('small', 1, 0.1, 0.1), Candidate('big', 70, 1, 1)])
    return d, build_artifacts(tmp_path/'g', d, embedder, n_trees=2, settings=settings)

def test_temperature_scores_by_hand(tmp_path, embedder):
    "With settings.temperature the hits weigh exp((sim - max sim) / T); the manifest's value is what the router uses."
    d, art = _graded(embedder, tmp_path, {'k': 4, 'temperature': 0.05})
    assert load_manifest(art)['settings']['temperature'] == 0.05
    r = KNNRouter(art, embedder, exact=True)
    assert (r.k, r.temperature) == (4, 0.05) and r.describe()['temperature'] == 0.05
    idx, sims, sc = r.neighbours(['sum of two numbers in python'])
    w = np.exp((sims[0] - sims[0].max()) / 0.05)
    np.testing.assert_allclose(sc[0], (w[:, None] * d.scores()[idx[0]]).sum(0) / w.sum(), rtol=1e-5)
    # a large temperature: the plain mean of the hits; the override on the router wins over the manifest
    big = KNNRouter(art, embedder, exact=True, temperature=1e6)
    np.testing.assert_allclose(big.neighbours(['sum of two numbers in python'])[2][0], d.scores()[idx[0]].mean(0), rtol=1e-4)

def test_no_temperature_is_the_seed_rule(tmp_path, embedder):
    "An artifact without the setting (every older one) scores exactly as before: similarity-weighted, negatives clamped."
    d, art = _graded(embedder, tmp_path, {'k': 4})
    m = load_manifest(art); assert 'temperature' not in m['settings']
    r = KNNRouter(art, embedder, exact=True)
    assert r.temperature is None
    idx, sims, sc = r.neighbours(['sum of two numbers in python'])
    w = np.clip(sims[0], 0, None)
    np.testing.assert_allclose(sc[0], (w[:, None] * d.scores()[idx[0]]).sum(0) / w.sum(), rtol=1e-6)

@pytest.mark.parametrize('bad', [0, -0.1, 'warm', True, [0.1]])
def test_bad_temperature_in_manifest_is_refused(tmp_path, embedder, bad):
    from query_router.serve import load_router
    _, art = _graded(embedder, tmp_path, {'k': 2, 'temperature': 0.1})
    m = json.loads((art/'manifest.json').read_text()); m['settings']['temperature'] = bad
    (art/'manifest.json').write_text(json.dumps(m)) # settings are outside the manifest's integrity digest (calibration edits them)
    with pytest.raises(ArtifactError, match=r"manifest.json: field 'settings.temperature' must be a finite number > 0"): KNNRouter(art, embedder)
    with pytest.raises(ArtifactError, match=r"settings.temperature"): load_router(art, embedder=embedder)

def test_bad_smooth_param_in_manifest_is_refused(tmp_path, embedder):
    with pytest.raises(ArtifactError, match=r"settings.param' is the smooth policy's neighbour weight"): _graded(embedder, tmp_path/'b', {'k': 2, 'policy': 'smooth', 'param': 3}) # refused at build
    _, art = _graded(embedder, tmp_path, {'k': 2, 'policy': 'smooth', 'param': 0.5})
    m = json.loads((art/'manifest.json').read_text()); m['settings']['param'] = 3
    (art/'manifest.json').write_text(json.dumps(m)) # settings are outside the manifest's integrity digest (calibration edits them)
    with pytest.raises(ArtifactError, match=r"settings.param' is the smooth policy's neighbour weight"): KNNRouter(art, embedder)

def test_cli_writes_temperature_and_k(tmp_path, default_data):
    "`query-router build --temperature T --k K` stores both; the defaults are the default artifact's settings (policy auto -> smooth on tier data)."
    import contextlib, io
    from query_router.cli import main
    from query_router.knn import DEFAULT_K, DEFAULT_TEMPERATURE
    from query_router.serve import load_router, make_app, ServerThread
    default_data.subset(range(60)).frame.to_csv(tmp_path/'d.csv', index=False)
    def build(*a):
        with contextlib.redirect_stdout(io.StringIO()) as o: rc = main(['build', '--data', str(tmp_path/'d.csv'), '--n_trees', '2', *a])
        assert rc in (0, None), o.getvalue()
    build('--out', str(tmp_path/'a'), '--temperature', '0.07', '--k', '12')
    s = load_manifest(tmp_path/'a')['settings']
    assert (s['k'], s['temperature'], s['policy'], s['param']) == (12, 0.07, 'smooth', 0.5)
    build('--out', str(tmp_path/'b'))
    s = load_manifest(tmp_path/'b')['settings']
    assert (s['k'], s['temperature'], s['policy']) == (DEFAULT_K, DEFAULT_TEMPERATURE, 'smooth')
    build('--out', str(tmp_path/'c'), '--temperature', '0', '--policy', 'argmax')
    s = load_manifest(tmp_path/'c')['settings']
    assert s.get('temperature') is None and s['policy'] == 'argmax' # 0: the seed's similarity-weighted rule
    with ServerThread(make_app(load_router(tmp_path/'a'))) as srv:
        import httpx
        h = httpx.get(srv.url + '/health', timeout=30).json()
        assert h['k'] == 12 and h['temperature'] == 0.07 and h['policy'] == {'name': 'smooth', 'param': 0.5}

def test_export_then_cli_rebuild_keeps_the_canonicalisation(tmp_path, embedder, default_data):
    "The exported points were embedded from canonicalised text: `query-router build --points` reads the settings.json export writes beside them, so the rebuilt artifact canonicalises queries too and scores like the original."
    from query_router.knn import export_artifact, build_cli
    d = default_data.subset(range(60))
    art = build_artifacts(tmp_path/'a', d, embedder, n_trees=5, settings={'k': 10})
    ex = export_artifact(art, tmp_path/'ex', progress=False)
    assert json.loads(ex['settings'].read_text())['canonicalize'] == load_manifest(art)['settings']['canonicalize']
    build_cli.__wrapped__(out=str(tmp_path/'b'), model=None, points=str(ex['points']), targets=str(ex['targets']), k=10, temperature=0, n_trees=5)
    assert load_manifest(tmp_path/'b')['settings']['canonicalize'] == load_manifest(art)['settings']['canonicalize']
    q = ['Hi! What is the capital of France?', 'Explain recursion with an example in Python.']
    np.testing.assert_allclose(KNNRouter(tmp_path/'b', embedder, exact=True).score_batch(q), KNNRouter(art, embedder, exact=True).score_batch(q), atol=1e-5)

def test_a_broken_exported_settings_file_is_named(tmp_path, embedder, default_data):
    from query_router.knn import export_artifact, build_cli
    art = build_artifacts(tmp_path/'a', default_data.subset(range(20)), embedder, n_trees=2)
    ex = export_artifact(art, tmp_path/'ex', progress=False)
    ex['settings'].write_text('{"k": 10,')
    with pytest.raises(ValueError, match='settings.json: cannot read exported settings'):
        build_cli.__wrapped__(out=str(tmp_path/'b'), points=str(ex['points']), targets=str(ex['targets']), n_trees=2)
    ex['settings'].write_text('[1]')
    with pytest.raises(ValueError, match='must be a JSON object'): build_artifacts(tmp_path/'c', points=ex['points'], targets=ex['targets'], model=embedder, settings=ex['settings'])
