"""Dataset v2 (issue 16): the drift check's figures, then every default router on the normal (grouped) test split and on
the adversarial split, side by side, trained once on the same training split. Writes bench/results/dataset_v2.json and .md.

    python bench/dataset_v2.py [--v1 path/to/routing_dataset_v1.csv]   # --v1: also train on the old file and score the adversarial split

Embeddings go through a disk cache (`CachedEmbedder`, under `cache_root()/embeddings`), shared with tests/test_dataset.py."""
import argparse, json, os, sys, time, tempfile
from pathlib import Path
import numpy as np, pandas as pd

def length_figures(q, labels, groups):
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.model_selection import GroupKFold, cross_val_score
    q = pd.Series(q); X = np.c_[np.log1p(q.str.len()), np.log1p(q.str.split().str.len())]
    out = {}
    for name, m in [('logreg', LogisticRegression(max_iter=1000)), ('tree_depth3', DecisionTreeClassifier(max_depth=3, random_state=0))]:
        out[f'length_{name}_grouped_cv_acc'] = float(cross_val_score(m, X, labels, groups=groups, cv=GroupKFold(5)).mean())
    for k in (5, 10):
        ct = pd.crosstab(pd.qcut(q.str.len(), k, duplicates='drop'), np.asarray(labels))
        out[f'max_tier_share_per_length_band_{k}'] = float((ct.max(axis=1) / ct.sum(axis=1)).max())
    return out

def max_cross_topic_cos(v, topics):
    v = v / np.linalg.norm(v, axis=1, keepdims=True); topics = np.asarray(topics); best = (-1.0, 0, 0)
    for s in range(0, len(v), 512):
        sim = v[s:s + 512] @ v.T; sim[topics[s:s + 512, None] == topics[None, :]] = -1
        i, j = np.unravel_index(sim.argmax(), sim.shape)
        if sim[i, j] > best[0]: best = (float(sim[i, j]), int(s + i), int(j))
    return best

COLS = ['router', 'accuracy', 'macro_f1', 'under_routed', 'over_routed', 'cost_vs_largest', 'quality', 'cost_rel']

def side_by_side(a, b):
    rows = []
    by = {r['router']: r for r in b['rows']}
    for r in a['rows']:
        o = by.get(r['router'], {})
        rows.append({'router': r['router'], 'baseline': r.get('baseline'),
                     **{f'test_{c}': r.get(c) for c in COLS[1:]}, **{f'adv_{c}': o.get(c) for c in COLS[1:]},
                     'acc_drop': None if r.get('accuracy') is None or o.get('accuracy') is None else r['accuracy'] - o['accuracy'],
                     'error': r.get('error') or o.get('error')})
    return rows

def md_table(rows, cols):
    f = lambda v: '–' if v is None else f'{v:.3f}' if isinstance(v, float) else str(v)
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] + ['| ' + ' | '.join(f(r.get(c)) for c in cols) + ' |' for r in rows])

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--v1', default=None); ap.add_argument('--out', default='bench/results/dataset_v2')
    ap.add_argument('--artifact', default='/tmp/ds-art'); a = ap.parse_args()
    from query_router.core import default_dataset_path, default_candidates_path
    from query_router.data import load_default_dataset, load_routing_data, split_data
    from query_router.evaluate import CachedEmbedder, cache_root, default_routers, compare
    t0 = time.time(); res = {'loadavg_start': os.getloadavg(), 'cpus': os.cpu_count()}
    train_all = load_default_dataset()
    adv = load_routing_data(default_dataset_path().with_name('adversarial.csv'), default_candidates_path())
    raw = pd.read_csv(default_dataset_path(), keep_default_na=False)
    res['counts'] = {'rows': len(raw), 'topics': int(raw.topic.nunique()), 'per_tier': raw.label.value_counts().to_dict(),
                     'adversarial_per_tier': adv.frame.label.value_counts().to_dict(), 'non_english': int((raw.language != 'en').sum()),
                     'kinds': raw.kind.value_counts().to_dict()}
    res['check'] = length_figures(raw.question, raw.label.to_numpy(), raw.topic.to_numpy())
    emb = CachedEmbedder(cache_dir=cache_root()/'embeddings')
    t = time.time(); v = emb.encode(train_all.queries + adv.queries, progress=True); emb.save()
    res['embedding_s'] = round(time.time() - t, 1)
    c, i, j = max_cross_topic_cos(v, list(train_all.groups) + list(adv.groups))
    res['check']['max_cross_topic_cosine'] = {'cos': c, 'rows': [i, j]}
    print(json.dumps(res, indent=1), flush=True)
    from query_router.knn import build_artifacts
    t = time.time(); build_artifacts(a.artifact, train_all, emb, n_trees=50, settings={'k': 10}); res['artifact'] = {'path': a.artifact, 'build_s': round(time.time() - t, 1)}
    tr, va, te = split_data(train_all, 'grouped')
    work = tempfile.mkdtemp(prefix='dsv2-')
    routers = default_routers(embedder=emb, workdir=work)
    r_test = compare(routers, tr, te, valid=va, embedder=emb, n_latency=20, progress=False)
    r_adv = compare(routers, tr, adv, valid=va, embedder=emb, n_latency=0, progress=False)
    res['v2'] = {'test': r_test, 'adversarial': r_adv, 'side_by_side': side_by_side(r_test, r_adv)}
    write(res, a, te, adv)
    if a.v1:
        v1 = load_routing_data(a.v1, default_candidates_path())
        emb.encode(v1.queries, progress=True); emb.save()
        tr1, va1, te1 = split_data(v1, 'grouped')
        routers1 = default_routers(embedder=emb, workdir=work)
        r1_test = compare(routers1, tr1, te1, valid=va1, embedder=emb, n_latency=0, progress=False)
        r1_adv = compare(routers1, tr1, adv, valid=va1, embedder=emb, n_latency=0, progress=False)
        res['v1'] = {'test': r1_test, 'adversarial': r1_adv, 'side_by_side': side_by_side(r1_test, r1_adv)}
        res['v1_check'] = length_figures(pd.Series(v1.queries), np.array(v1.labels), np.array(v1.groups))
    res['seconds'] = round(time.time() - t0, 1); res['loadavg_end'] = os.getloadavg()
    write(res, a, te, adv)

def write(res, a, te, adv):
    "Write the JSON and the Markdown (again after each phase, so a slow later phase loses nothing)."
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.json.tmp'); tmp.write_text(json.dumps(res, indent=1, default=float)); os.replace(tmp, out.with_suffix('.json'))
    cols = ['router', 'test_accuracy', 'adv_accuracy', 'acc_drop', 'test_under_routed', 'adv_under_routed', 'test_cost_vs_largest', 'adv_cost_vs_largest', 'error']
    md = [f"# Dataset v2: routers on the normal test split and on the adversarial split",
          f"Trained once on the grouped training split of data/routing_dataset.csv (calibrated on its validation split); `test` = the grouped test split ({len(te)} rows), `adv` = data/adversarial.csv ({len(adv)} rows, topics unseen in training). Accuracy and under/over-routing use each router's argmax tier. Load average at start {res['loadavg_start']}.",
          '', '## Drift check', '', '```json', json.dumps(res['check'], indent=1), '```', '', '## v2 (this dataset)', '', md_table(res['v2']['side_by_side'], cols)]
    if 'v1' in res: md += ['', '## v1 (the old file), same adversarial split', '', md_table(res['v1']['side_by_side'], cols), '', '```json', json.dumps(res['v1_check'], indent=1), '```']
    out.with_suffix('.md').write_text('\n'.join(md) + '\n')
    print('\n'.join(md))

if __name__ == '__main__': main()
