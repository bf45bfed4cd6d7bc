"""Tier accuracy of the default router (KNN k=30, canonicalised or not; and a soft KNN) with the arg-max and the ordinal (median tier)
decision, on the default dataset's whole validation split and whole test split: whether the ordinal decision may become the default
(issue 19: tier accuracy within 0.01). Its robustness side is in bench/robustness.py (--ordinal-levels).

    python bench/robustness_ordinal.py   # writes bench/results/robustness_ordinal.json
"""
import sys, json, os, tempfile, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent)); import robustness as rb
from query_router.data import load_default_dataset, split_data
from query_router.router import decide
from query_router.canonical import load_canon_spec
from query_router import evaluate as ev
tr, va, te = split_data(load_default_dataset(), 'grouped', seed=0)
emb = rb.MergingCache(cache_dir=os.environ.get('QR_ROBUST_CACHE', str(rb.Path(rb.ev.cache_root())/'robustness'))); emb.check_uncased()
spec = load_canon_spec(); out = {'n_train': len(tr), 'n_valid': len(va), 'n_test': len(te), 'loadavg': os.getloadavg()}
with tempfile.TemporaryDirectory() as w:
    for canon in (None, spec):
        r = rb.build_knn(tr, emb, 30, w, canon)
        for name, d in (('valid', va), ('test', te)):
            S = r.score_batch(d.queries); y = ev.label_index(d)
            for k, T in ((30, None), (50, 0.05)):
                Sx = S if T is None else rb.SoftKNN(r, k, T).score_batch(d.queries)
                for pol in ('argmax', 'ordinal'):
                    p = decide(Sx, pol)
                    key = f"{'canon' if canon else 'raw'}/{name}/{'knn30' if T is None else f'soft k={k} T={T}'}/{pol}"
                    out[key] = {'accuracy': float((p == y).mean()), 'mean_abs_tier_error': float(np.abs(p - y).mean()), 'off_by_2plus': float((np.abs(p - y) > 1).mean())}
                    print(key, out[key], flush=True)
        emb.save()
json.dump(out, open(rb.RESULTS/'robustness_ordinal.json', 'w'), indent=1)
