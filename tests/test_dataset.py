"""Checks on the embedded default dataset (data/routing_dataset.csv, v2), its adversarial split (data/adversarial.csv)
and the splits on it. The `test_length_*`, `test_long_and_short_*`, `test_no_near_duplicates_*` and `test_adversarial_*`
tests are the drift check of issue 16: they fail when the dataset slides back to "long means hard"."""
import json, re, numpy as np, pandas as pd, pytest
from query_router.core import default_dataset_path, load_candidates, default_candidates_path
from query_router.data import load_default_dataset, load_routing_data, split_data

TIERS = ['3B', '7B', '30B', '70B']
MAX_LENGTH_ACC = 0.45 # length-only classifiers under topic-grouped CV may not beat this
MAX_BAND_SHARE = 0.40 # within any length decile, no tier may hold more than this share
MAX_CROSS_TOPIC_COS = 0.95

def adversarial_path(): return default_dataset_path().with_name('adversarial.csv')

@pytest.fixture(scope='module')
def raw(): return pd.read_csv(default_dataset_path(), keep_default_na=False)

@pytest.fixture(scope='module')
def adv(): return pd.read_csv(adversarial_path(), keep_default_na=False)

def test_schema_and_size(raw):
    assert {'id', 'question', 'label', 'topic', 'area', 'domain', 'language', 'kind', 'messages'} <= set(raw.columns)
    assert len(raw) >= 2700 and raw.topic.nunique() >= 650
    assert raw.id.is_unique

def test_no_duplicate_or_near_empty_queries(raw):
    norm = raw.question.str.lower().str.replace(r'\W+', ' ', regex=True).str.strip()
    assert not norm.duplicated().any(), raw.question[norm.duplicated()].tolist()[:5]
    assert (raw.question.str.strip().str.len() >= 10).all()
    assert (raw.question.str.count(r'\w') >= 8).all() # words, in any script

def test_tiers_balanced_and_topics_span_tiers(raw):
    "Tiers within 10% of each other. v2 corrected 11 one-tier-too-high labels (7B -> 3B), so a few v1 topics now hold 3B twice and no 7B; every topic still spans at least three tiers."
    counts = raw.label.value_counts()
    assert sorted(counts.index) == sorted(TIERS) and counts.max() / counts.min() <= 1.1, counts.to_dict()
    assert (raw.groupby('topic').label.nunique() >= 3).all()

def test_broad_coverage(raw):
    assert raw.area.nunique() >= 8 and raw.domain.nunique() >= 40
    other = raw[raw.language != 'en']
    assert len(other) >= 200 and other.language.nunique() >= 10
    assert other.area.nunique() >= 7 # not only the multilingual area
    assert set(other.label) == set(TIERS)

def test_datasheet_counts_match(raw):
    "The datasheet's row and non-English counts are the file's."
    sheet = (default_dataset_path().parent/'README.md').read_text()
    assert f"| rows (queries) | {len(raw):,} |" in sheet
    assert f"| non-English queries | {int((raw.language != 'en').sum())} " in sheet

def test_conversations_read_as_the_proxy_reads_them(raw):
    "`question` of a row with `messages` is exactly what the proxy routes on (`routing_text` with its defaults)."
    from query_router.proxy import routing_text
    conv = raw[raw.messages != '']
    assert len(conv) >= 40
    roles = conv.messages.apply(lambda m: [x['role'] for x in json.loads(m)])
    assert (roles.apply(lambda r: 'system' in r)).sum() >= 30 and (roles.apply(lambda r: r.count('user') > 1)).sum() >= 15
    for q, m in zip(conv.question, conv.messages): assert q == routing_text(json.loads(m))

def test_default_loader_reads_v2(raw):
    d = load_default_dataset()
    assert len(d) == len(raw) and d.targets == TIERS and d.kind == 'tiers'
    assert d.queries == raw.question.tolist() and d.ids == raw.id.tolist()

def _length_features(q):
    q = pd.Series(q)
    return np.c_[np.log1p(q.str.len()), np.log1p(q.str.split().str.len())] # what `LengthRouter` reads

def test_length_alone_cannot_guess_the_tier(raw):
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.model_selection import GroupKFold, cross_val_score
    X, y, g = _length_features(raw.question), raw.label.to_numpy(), raw.topic.to_numpy()
    for model in (LogisticRegression(max_iter=1000), DecisionTreeClassifier(max_depth=3, random_state=0)):
        acc = cross_val_score(model, X, y, groups=g, cv=GroupKFold(5)).mean()
        assert acc <= MAX_LENGTH_ACC, f'{type(model).__name__} on length alone: {acc:.3f} > {MAX_LENGTH_ACC}'

def test_length_bands_are_mixed(raw):
    bands = pd.qcut(raw.question.str.len(), 10, duplicates='drop')
    ct = pd.crosstab(bands, raw.label)
    share = ct.max(axis=1) / ct.sum(axis=1)
    assert share.max() <= MAX_BAND_SHARE, share.round(3).to_dict()

def test_long_and_short_items_in_every_tier(raw):
    n = raw.question.str.len()
    for t in ('3B', '7B'):
        assert ((raw.label == t) & (n >= 400)).sum() >= 120, t
        assert ((raw.label == t) & (n >= 1000)).sum() >= 25, t
    for t in ('30B', '70B'):
        assert ((raw.label == t) & (n <= 80)).sum() >= 90, t
    for t in TIERS: # varied casing in every tier
        first = raw.question[raw.label == t].str[0]
        assert first.str.islower().mean() >= 0.05 and first.str.isupper().mean() >= 0.3, t

def test_adversarial_split_valid(raw, adv):
    assert (adv.split == 'adversarial').all() and adv.id.is_unique
    assert not set(adv.topic) & set(raw.topic), 'adversarial topics must not appear in the training rows'
    assert (adv.label.value_counts().reindex(TIERS) >= 50).all()
    n = adv.question.str.len()
    easy, hard = adv.label.isin(['3B', '7B']), adv.label.isin(['30B', '70B'])
    assert (n[easy] >= 400).all() and (n[easy] >= 1000).mean() >= 0.5
    assert (n[hard] <= 80).all()
    d = load_routing_data(adversarial_path(), default_candidates_path())
    assert len(d) == len(adv) and d.targets == TIERS

@pytest.fixture(scope='module')
def vectors(raw, adv):
    "Embeddings of every row with the bundled model, cached on disk between runs (first run: a few CPU minutes)."
    from query_router.evaluate import CachedEmbedder, cache_root
    emb = CachedEmbedder(cache_dir=cache_root()/'embeddings')
    texts = raw.question.tolist() + adv.question.tolist()
    v = np.asarray(emb.encode(texts), dtype=np.float32)
    emb.save()
    return v / np.linalg.norm(v, axis=1, keepdims=True)

def test_no_near_duplicates_across_topics(raw, adv, vectors):
    topics = np.array(raw.topic.tolist() + adv.topic.tolist())
    worst = []
    for s in range(0, len(vectors), 512): # blocks keep memory small
        sim = vectors[s:s + 512] @ vectors.T
        same = topics[s:s + 512, None] == topics[None, :]
        sim[same] = -1
        i, j = np.unravel_index(sim.argmax(), sim.shape)
        worst.append((sim[i, j], s + i, j))
    c, i, j = max(worst)
    assert c <= MAX_CROSS_TOPIC_COS, f'rows {i} and {j} of different topics have cosine {c:.3f}'

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
