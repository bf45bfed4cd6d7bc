"Checks on the embedded default dataset itself (data/routing_dataset.csv) and the splits on it."
import re, pandas as pd, pytest
from query_router.core import default_dataset_path, load_candidates, default_candidates_path
from query_router.data import load_default_dataset, split_data

TIERS = ['3B', '7B', '30B', '70B']

@pytest.fixture(scope='module')
def raw(): return pd.read_csv(default_dataset_path())

def test_schema_and_size(raw):
    assert {'question', 'label', 'topic'} <= set(raw.columns)
    assert len(raw) >= 2000 and raw.topic.nunique() >= 500

def test_no_duplicate_or_near_empty_queries(raw):
    norm = raw.question.str.lower().str.replace(r'\W+', ' ', regex=True).str.strip()
    assert not norm.duplicated().any(), raw.question[norm.duplicated()].tolist()[:5]
    assert (raw.question.str.strip().str.len() >= 10).all()
    assert (raw.question.str.count(r'\w') >= 8).all() # words, in any script

def test_tiers_balanced_and_every_topic_has_all_four(raw):
    counts = raw.label.value_counts()
    assert sorted(counts.index) == sorted(TIERS) and counts.max() == counts.min()
    per_topic = raw.groupby('topic').label.apply(lambda s: sorted(s, key=TIERS.index))
    assert (per_topic.apply(lambda l: l == TIERS)).all()

def test_broad_coverage(raw):
    assert raw.area.nunique() >= 8 and raw.domain.nunique() >= 40
    non_ascii = raw.question.apply(lambda q: bool(re.search(r'[^\x00-\x7f]', q)))
    assert non_ascii.sum() >= 100 # multilingual requests

def test_candidates_file_matches_tiers():
    cands = load_candidates(default_candidates_path())
    assert [c.name for c in cands] == TIERS
    assert all(a.cost < b.cost for a, b in zip(cands, cands[1:]))

@pytest.mark.parametrize('how', ['chronological', 'random', 'grouped'])
def test_splits_cover_everything_once_and_are_deterministic(how):
    d = load_default_dataset()
    a, b = split_data(d, how, seed=3), split_data(d, how, seed=3)
    assert [x.ids for x in a] == [x.ids for x in b]
    ids = sum([x.ids for x in a], [])
    assert sorted(ids) == sorted(d.ids) and len(set(ids)) == len(ids)
    assert abs(len(a[0]) / len(d) - 0.6) < 0.02

def test_grouped_split_keeps_topics_whole():
    tr, va, te = split_data(load_default_dataset(), 'grouped')
    g = [set(x.groups) for x in (tr, va, te)]
    assert not (g[0] & g[1]) and not (g[0] & g[2]) and not (g[1] & g[2])
