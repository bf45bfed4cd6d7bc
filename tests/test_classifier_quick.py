"""`train-classifier`'s quick path: with --max_steps it measures a seeded sample of the held-out queries, not all of them
(predicting ~920 queries took most of a 5-step run's 12 minutes); --max_eval sets the sample, 0 skips measuring."""
import io, contextlib, pytest
from query_router.classifier import train_classifier_cli, tiny_causal_lm
from query_router.knn import load_manifest

@pytest.fixture(scope='module')
def tiny(tmp_path_factory, default_data):
    return str(tiny_causal_lm(tmp_path_factory.mktemp('tiny')/'lm', default_data.queries))

def _run(out, tiny, **kw):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): p = train_classifier_cli.__wrapped__(out=str(out), model=tiny, lr=3e-3, **kw)
    return load_manifest(p), buf.getvalue()

def test_quick_run_measures_a_sample(tmp_path, tiny):
    m, out = _run(tmp_path/'a', tiny, max_steps=2)
    assert m['split']['measured'] == [64, 64] and m['split']['sizes'][1] > 64 and m['valid']['n'] == 64
    assert 'measuring 64 valid / 64 test queries' in out and 'test: accuracy' in out

def test_max_eval_sets_the_sample_and_zero_skips(tmp_path, tiny):
    m, out = _run(tmp_path/'b', tiny, max_steps=2, max_eval=10)
    assert m['split']['measured'] == [10, 10] and m['valid']['n'] == 10
    m, out = _run(tmp_path/'c', tiny, max_steps=2, max_eval=0)
    assert m['split']['measured'] == [0, 0] and m['valid'] is None and 'test: accuracy' not in out
