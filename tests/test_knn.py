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
