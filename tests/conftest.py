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
