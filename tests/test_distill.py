"Static (model2vec) embedders distilled from the bundled model: distil, build, route, serve, and refuse a mismatched index."
import contextlib, io, json
import numpy as np, pytest
from conftest import need_shared

@pytest.fixture(scope='module')
def corpus(tmp_path_factory, default_data):
    "A small dataset file (150 queries of the default data) for the vocabulary and the build."
    p = tmp_path_factory.mktemp('corpus')/'small.csv'
    default_data.subset(range(150)).frame[['id', 'query', 'label']].rename(columns={'query': 'question'}).to_csv(p, index=False)
    return p

def run_cli(*args):
    from query_router.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()

@pytest.fixture(scope='module')
def static_dir(tmp_path_factory, corpus):
    "`query-router distill` on the bundled model: only the word pieces of the corpus, 24 dimensions."
    out = tmp_path_factory.mktemp('static')/'m'
    rc, o, e = run_cli('distill', '--out', str(out), '--vocab_data', str(corpus), '--prune', '--pca_dims', '24', '--add_words', '20')
    assert rc == 0, e
    assert 'distilled bundled:all-MiniLM-L6-v2' in o
    return out

@pytest.fixture(scope='module')
def static_emb(static_dir):
    from query_router.embed import Embedder
    return Embedder(static_dir)

@pytest.fixture(scope='module')
def static_art(tmp_path_factory, static_dir, corpus):
    "`query-router build --model STATIC` on the corpus."
    out = tmp_path_factory.mktemp('art')/'static'
    rc, o, e = run_cli('build', '--out', str(out), '--data', str(corpus), '--model', str(static_dir), '--n_trees', '5')
    assert rc == 0, e
    return out

@pytest.fixture(scope='module')
def transformer_art(tmp_path_factory, embedder, default_data):
    from query_router.knn import build_artifacts
    return build_artifacts(tmp_path_factory.mktemp('art')/'transformer', default_data.subset(range(40)), embedder, n_trees=5)

def test_distilled_folder(static_dir, static_emb):
    info = json.loads((static_dir/'distill.json').read_text())
    assert info['base_model'] == 'bundled:all-MiniLM-L6-v2' and info['dim'] == 24 and info['pruned_to_corpus']
    assert 500 < info['vocab_size'] < 10000 # the corpus's pieces, not the model's 30k
    assert json.loads((static_dir/'config.json').read_text())['model_type'] == 'model2vec'
    assert (static_emb.kind, static_emb.dim) == ('static', 24)
    from model2vec import StaticModel # model2vec reads what we wrote, and embeds the same way (it stores float16)
    qs = ['What is the capital of France?', 'Explain quicksort', 'hello']
    np.testing.assert_allclose(static_emb.encode(qs), StaticModel.from_pretrained(static_dir).encode(qs), atol=5e-3)

def test_single_and_batch_agree(static_emb, default_data):
    qs = default_data.queries[:50] + ['\U0001F600\U0001F600', '']
    many = static_emb.encode(qs)
    one = np.stack([static_emb.encode(q) for q in qs])
    np.testing.assert_allclose(many, one, atol=1e-5)
    n = np.linalg.norm(many, axis=1)
    assert np.allclose(n[:50], 1, atol=1e-5) and n[-1] == 0 and np.isfinite(many).all() # nothing known: zeros, not NaN

def test_similar_queries_closer(static_emb):
    a, b, c = static_emb.encode(['How do I sort a list in Python?', 'sorting a python list', 'Who won the football world cup in 1998?'])
    assert a @ b > a @ c

def test_manifest_records_static_and_routes(static_art, static_dir, default_data):
    from query_router.knn import load_manifest, KNNRouter, DEFAULT_K
    from query_router.router import respond
    m = load_manifest(static_art)
    assert m['embedder']['kind'] == 'static' and m['embedder']['dim'] == 24 and m['embedder']['name'] == str(static_dir)
    r = KNNRouter(static_art) # the embedder named in the manifest loads as static
    assert r.embedder.kind == 'static' and r.describe()['embedder'] == 'static'
    small = default_data.subset(range(150))
    ans = respond(r, small.queries[:20])
    assert all(a['hits'][0]['similarity'] > 0.99 and len(a['hits']) == m['settings']['k'] == DEFAULT_K for a in ans) # every indexed query finds itself
    assert [a['route'] for a in respond(r, small.queries[:20], k=1)] == small.labels[:20] # its own label, alone

def test_mismatch_refused_both_ways(static_art, transformer_art, static_emb, embedder):
    from query_router.knn import KNNRouter, ArtifactError
    with pytest.raises(ArtifactError, match='built with a transformer embedder.*is a static embedder'): KNNRouter(transformer_art, static_emb)
    with pytest.raises(ArtifactError, match='built with a static embedder.*is a transformer embedder'): KNNRouter(static_art, embedder)

def test_old_manifest_without_kind_is_transformer(tmp_path, transformer_art, static_emb, embedder):
    "Artifacts built before embedders had a kind were all built by transformers."
    import shutil
    from query_router.knn import KNNRouter, ArtifactError
    old = tmp_path/'old'; shutil.copytree(transformer_art, old)
    from query_router.artifacts import manifest_digests
    m = json.loads((old/'manifest.json').read_text()); del m['embedder']['kind']
    m['integrity'] = manifest_digests(m) # as a manifest written before kinds existed would be consistent with itself
    (old/'manifest.json').write_text(json.dumps(m))
    assert KNNRouter(old, embedder).embedder.kind == 'transformer'
    with pytest.raises(ArtifactError, match='kind mismatch'): KNNRouter(old, static_emb)

def test_served_over_http(static_art):
    import httpx
    from query_router.serve import load_router, make_app, ServerThread
    from query_router.knn import DEFAULT_K
    with ServerThread(make_app(load_router(static_art))) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post('/', json={'query': 'Write a haiku about autumn'})
        assert r.status_code == 200 and len(r.json()['hits']) == DEFAULT_K # the CLI's default k
        assert c.get('/health').json()['embedder'] == 'static'
        r = c.post('/', json={'query': '\U0001F600\U0001F600'}) # no known token: a zero vector, an even vote, still an answer
        assert r.status_code == 200 and all(h['similarity'] == 0 for h in r.json()['hits']) and abs(sum(s['score'] for s in r.json()['scores']) - 1) < 1e-3

def test_distill_bad_options(tmp_path):
    from query_router.distill import distill_static
    for kw, msg in [({'add_words': 5}, 'need a corpus'), ({'dtype': 'float8'}, 'dtype must be'), ({'pca_dims': -3}, 'pca_dims'),
                    ({'model': str(tmp_path/'nope')}, 'not a local folder'), ({'sif': 2.0}, 'sif must be')]:
        with pytest.raises(ValueError, match=msg): distill_static(tmp_path/'x', **kw)
    assert not (tmp_path/'x').exists()

def test_refuses_to_distill_a_static_model(tmp_path, static_dir):
    from query_router.distill import distill_static
    with pytest.raises(ValueError, match='already a static'): distill_static(tmp_path/'x', model=str(static_dir))

def test_llmrouter_outcomes(static_emb, tmp_path):
    "On real outcomes, a static KNN router chooses better models than a blind pick, even with this tiny pruned vocabulary."
    need_shared()
    from query_router.data import load_llmrouter
    from query_router.knn import build_artifacts, KNNRouter
    from query_router.router import decide
    tr, te = load_llmrouter('train'), load_llmrouter('test')
    r = KNNRouter(build_artifacts(tmp_path/'llm', tr, static_emb, n_trees=10), static_emb)
    assert r.targets == te.targets
    chosen = decide(r.score_batch(te.queries))
    s = te.scores()
    quality = s[np.arange(len(te)), chosen].mean()
    assert quality > s.mean() + 0.02, (quality, s.mean()) # better than picking a model at random
