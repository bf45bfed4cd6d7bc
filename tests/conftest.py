import os, pytest
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

@pytest.fixture(scope='session')
def embedder():
    from query_router.embed import Embedder
    return Embedder()

@pytest.fixture(scope='session')
def default_data():
    from query_router.data import load_default_dataset
    return load_default_dataset()

@pytest.fixture(scope='session')
def small_artifacts(tmp_path_factory, embedder, default_data):
    "A KNN artifact built from 300 queries of the default dataset."
    from query_router.knn import build_artifacts
    return build_artifacts(tmp_path_factory.mktemp('art')/'small', default_data.subset(range(300)), embedder, n_trees=10)

def need_shared():
    from query_router.core import has_shared_data, shared_data_dir
    if not has_shared_data(): pytest.skip(f'LLMRouter outcomes not found at {shared_data_dir()} (../shared/data/llmrouter): skipped')

@pytest.fixture(scope='module')
def small_router(small_artifacts, embedder):
    "The small KNN artifact, loaded (one per test module)."
    from query_router.serve import load_router
    return load_router(small_artifacts, embedder=embedder)

@pytest.fixture(scope='module')
def mock_backends(small_router):
    "One loopback `MockBackend` server per target of `small_router`: (mocks, urls)."
    import contextlib
    from query_router.proxy import MockBackend
    from query_router.serve import ServerThread
    mocks = {t: MockBackend(f'mock-{t}') for t in small_router.targets}
    with contextlib.ExitStack() as stack:
        yield mocks, {t: stack.enter_context(ServerThread(m.app())).url for t, m in mocks.items()}

@pytest.fixture(scope='session')
def clustered_points():
    "3,000 clustered 384-d unit vectors with graded scores for three targets, their metadata and candidates: `write_artifacts`' inputs, no embedding needed (routers are searched with vectors)."
    import numpy as np
    from query_router.core import Candidate
    rng = np.random.default_rng(0); n = 3000
    c = rng.normal(size=(60, 384)); x = (c[rng.integers(0, 60, n)] + rng.normal(scale=0.6, size=(n, 384))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = rng.random((n, 3)).round(3).astype(np.float32); scores[::5, 1] = 0
    meta = [{'point_uid': f'p{i}', 'category': ['x', 'y', None][i % 3], 'utterance': f'query number {i} ü'} for i in range(n)]
    cands = [Candidate('big', 70, 5, 5), Candidate('small', 3, 0.1, 0.1), Candidate('mid', 8, 1, 1)]
    return x, scores, meta, cands
