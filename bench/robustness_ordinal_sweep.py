"Sweep of tier decision rules for the canonicalised KNN k=30 on the default data (issue 19): accuracy on whole splits, flips under rewrites. Uses the robustness cache at /tmp/qr-robust-cache/emb (or edit the path)."
import sys, json, os, tempfile, numpy as np
sys.path.insert(0, 'bench'); import robustness as rb
from query_router.data import load_default_dataset, split_data
from query_router.router import decide, cumulative_shares
from query_router.canonical import load_canon_spec, load_rewrites, select_variants, rewrite
from query_router import evaluate as ev
tr, va, te = split_data(load_default_dataset(), 'grouped', seed=0)
emb = rb.MergingCache(cache_dir='/tmp/qr-robust-cache/emb'); emb.check_uncased()
fams = load_rewrites(); variants = []
for f in fams:
    seen = select_variants(fams, False, only=[f]); hv = select_variants(fams, True, only=[f])
    variants += seen[:rb.PER_FAMILY.get(f, 0) + 1] + (hv[:1] if f in rb.HELDOUT_FAMILIES.split(',') else [])
sample = rb._sample(te, 200, 0)
def clamped(S):
    a, m = decide(S), decide(S, 'ordinal'); return np.clip(a, m - 1, m + 1)
def mean_tier(S):
    p = np.clip(S, 0, None); p = p / np.maximum(p.sum(1, keepdims=True), 1e-12); return np.rint(p @ np.arange(S.shape[1])).astype(int)
rules = {'argmax': decide, **{f'ordinal {lv}': (lambda lv: lambda S: decide(S, 'ordinal', lv))(lv) for lv in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)}}
with tempfile.TemporaryDirectory() as w:
    r = rb.build_knn(tr, emb, 30, w, load_canon_spec())
    for name, d in (('valid', va), ('test', te)):
        S = r.score_batch(d.queries); y = ev.label_index(d)
        for k, f in rules.items(): p = f(S); print(name, k, 'acc %.3f' % (p == y).mean(), 'off2+ %.3f' % (np.abs(p - y) > 1).mean(), flush=True)
    S0 = r.score_batch(sample.queries)
    SV = {v['name']: r.score_batch([rewrite(q, v) for q in sample.queries]) for f, v in variants}
    for k, f in rules.items():
        i0 = f(S0); fl = [(f(S) != i0).mean() for S in SV.values()]; j = sum(int((np.abs(f(S) - i0) > 1).sum()) for S in SV.values())
        print('rewrites', k, 'mean flip %.3f' % np.mean(fl), 'jumps>1', j, flush=True)
