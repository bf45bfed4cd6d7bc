"The ivf index kind (issue 14): points stored in list order with every file permuted alike, exact answers when every list is scanned, export in input order and build back, damaged index files refused."
import io, json, shutil, numpy as np, pytest
from pathlib import Path
from query_router.artifacts import ArtifactError, load_manifest, load_router, manifest_digests, sha256
from query_router.knn import KNNRouter, write_artifacts, export_artifact

N = 3000

@pytest.fixture(scope='module')
def ivf(tmp_path_factory, embedder, clustered_points):
    "The clustered points of `conftest.clustered_points` (3,000, searched with vectors: nothing is embedded) in an ivf artifact."
    x, scores, meta, cands = clustered_points
    assert len(x) == N
    d = tmp_path_factory.mktemp('ivf')
    art = write_artifacts(d/'art', meta, x, ['big', 'small', 'mid'], scores, embedder, cands, index='ivf', progress=False)
    return d, art, x, scores, meta

def _input_pos(r):
    "For each row of the router, the position of its point in the input."
    return np.array([int(r.point(i)['point_uid'][1:]) for i in range(r.n_points)])

def test_rows_move_together(ivf, embedder):
    d, art, x, scores, meta = ivf
    m = load_manifest(art, verify=True)
    s = m['settings']['index']
    assert s['kind'] == 'ivf' and s['nlist'] == round(4 * N ** 0.5) and 1 <= s['nprobe'] <= s['nlist']
    assert s['calibration']['recall_at_k'] >= 0.97 or s['nprobe'] == s['nlist'] # measured on the artifact's own points at build
    assert 'index.ivf.npz' in m['files'] and 'index.ann' not in m['files']
    r = KNNRouter(art, embedder)
    assert isinstance(r.embeddings, np.memmap)
    pos = _input_pos(r)
    assert sorted(pos) == list(range(N)) and list(pos) != list(range(N)) # every point once, in list order
    np.testing.assert_array_equal(pos, np.load(art/'index.ivf.npz')['order'])
    np.testing.assert_allclose(np.asarray(r.embeddings), x[pos], atol=1e-6) # row i: the same point in every file
    np.testing.assert_array_equal(r.scores_matrix, scores[pos][:, [1, 2, 0]])
    assert [r.point(i) for i in range(0, N, 101)] == [meta[j] for j in pos[::101]]
    offsets = np.load(art/'index.ivf.npz')['offsets']
    lists = np.argmax(np.asarray(r.embeddings) @ r.index.centroids.T, axis=1)
    np.testing.assert_array_equal(lists, np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))) # each list contiguous

def test_search_and_hits(ivf, embedder):
    d, art, x, scores, meta = ivf
    r = KNNRouter(art, embedder); pos = _input_pos(r)
    q = x[:50] + np.random.default_rng(1).normal(scale=0.02, size=(50, 384)).astype(np.float32); q /= np.linalg.norm(q, axis=1, keepdims=True)
    ia, _ = r.search(q); ie, _ = r.search(q, exact=True)
    np.testing.assert_array_equal(pos[ie[:, 0]], np.arange(50)) # each query finds its own point, whatever row it moved to
    ref = np.argsort(-(q @ np.asarray(r.embeddings).T), axis=1, kind='stable')[:, :10]
    np.testing.assert_array_equal(ie, ref) # exact search: blocked argpartition = the full stable sort
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ia, ie)]) > 0.9
    full = KNNRouter(art, embedder, nprobe=r.manifest['settings']['index']['nlist']) # every list scanned: the exact answer
    fi, fs = full.search(q); ei, es = r.search(q, exact=True)
    np.testing.assert_array_equal(fi, ei); np.testing.assert_allclose(fs, es, atol=1e-5)
    idx, _ = r.search(x[7:8]) # the hit's id and text are read from the row it moved to
    assert r.columns['ids'][int(idx[0, 0])] == 'p7' and r.point(int(idx[0, 0]))['utterance'] == 'query number 7 ü'

def test_export_in_input_order_and_build_back(ivf, embedder, tmp_path):
    d, art, x, scores, meta = ivf
    ex = export_artifact(art, tmp_path/'ex', progress=False)
    lines = Path(ex['points']).read_text().splitlines()
    assert [json.loads(l)['point_uid'] for l in lines[:5]] == ['p0', 'p1', 'p2', 'p3', 'p4'] and len(lines) == N
    from query_router.cli import main
    assert main(['build', '--out', str(tmp_path/'back'), '--points', str(ex['points']), '--targets', str(ex['targets']),
                 '--candidates', str(ex['candidates']), '--index', 'ivf', '--nlist', '24', '--nprobe', '6', '--k', '10']) == 0
    a, b = KNNRouter(art, embedder), KNNRouter(tmp_path/'back', embedder)
    ix = b.manifest['settings']['index'] # the top-level build passes the ivf options on
    assert ix['kind'] == 'ivf' and (ix['nlist'], ix['nprobe']) == (24, 6) and a.targets == b.targets
    pa, pb = _input_pos(a), _input_pos(b)
    np.testing.assert_allclose(np.asarray(b.embeddings)[np.argsort(pb)], np.asarray(a.embeddings)[np.argsort(pa)], atol=2e-6)
    np.testing.assert_array_equal(b.scores_matrix[np.argsort(pb)], a.scores_matrix[np.argsort(pa)])
    ea, _ = a.search(x[:20], exact=True); eb, _ = b.search(x[:20], exact=True)
    assert np.mean([len(set(pa[p]) & set(pb[q])) / 10 for p, q in zip(ea, eb)]) >= 0.99 # the same neighbours

def _reseal(bad):
    "Recompute the manifest's checksum of the index file, as a buggy writer would: only the content checks can see the fault."
    m = json.loads((bad/'manifest.json').read_text())
    m['files']['index.ivf.npz'] = {'sha256': sha256(bad/'index.ivf.npz'), 'bytes': (bad/'index.ivf.npz').stat().st_size}
    m['integrity'] = manifest_digests(m); (bad/'manifest.json').write_text(json.dumps(m))

def test_damaged_ivf_is_refused(ivf, embedder, tmp_path):
    d, art, *_ = ivf
    bad = tmp_path/'cut'; shutil.copytree(art, bad)
    (bad/'index.ivf.npz').write_bytes((bad/'index.ivf.npz').read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=r'index\.ivf\.npz'): load_router(bad, embedder=embedder)
    _reseal(bad) # the sizes agree now: the file itself is unreadable
    with pytest.raises(ArtifactError, match=r'index\.ivf\.npz: not a readable ivf index'): load_router(bad, embedder=embedder)
    bad = tmp_path/'offsets'; shutil.copytree(art, bad)
    z = dict(np.load(bad/'index.ivf.npz')); z['offsets'] = z['offsets'].copy(); z['offsets'][-1] -= 1
    with open(bad/'index.ivf.npz', 'wb') as f: np.savez(f, **z)
    _reseal(bad)
    with pytest.raises(ArtifactError, match=r"offsets do not cover the 3000 points"): load_router(bad, embedder=embedder)
    bad = tmp_path/'flip'; shutil.copytree(art, bad)
    raw = bytearray((bad/'embeddings.npy').read_bytes()); raw[-3] ^= 1; (bad/'embeddings.npy').write_bytes(bytes(raw))
    KNNRouter(bad, embedder) # same size: the cheap checks pass...
    with pytest.raises(ArtifactError, match=r'checksum mismatch for embeddings\.npy'): KNNRouter(bad, embedder, verify=True) # ...--verify does not
