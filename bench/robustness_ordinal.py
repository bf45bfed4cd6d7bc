"""Tier accuracy of KNN routers on the default dataset's whole validation and whole test splits (routers built on the training
split, canonicalised as the default artifact), for each decision: argmax, ordinal (median tier) and smooth (argmax of the
votes smoothed along the tiers). Issue 19's bar: tier accuracy within 0.01 of the router before. Routers: knn30 (the default
artifact before issue 19), the default artifact's settings (`knn.DEFAULT_SETTINGS`) and a few (k, T) pairs.
The settings were chosen on the training side (bench/knn_temperature.py, bench/route_jumps.py); this file only reports.
Robustness is in bench/robustness.py.

    python bench/robustness_ordinal.py --cache /tmp/qr-robust-cache/emb   # writes bench/results/robustness_ordinal.json
"""
import argparse, sys, json, os, tempfile, time, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import robustness as rb
from query_router.data import load_default_dataset, split_data
from query_router.router import decide
from query_router.canonical import load_canon_spec
from query_router.knn import KNNRouter, DEFAULT_K, DEFAULT_TEMPERATURE
from query_router import evaluate as ev

ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
ap.add_argument('--cache', default=str(Path(ev.cache_root())/'robustness'))
ap.add_argument('--out', default=str(rb.RESULTS/'robustness_ordinal.json'))
args = ap.parse_args()
t0 = time.time()
tr, va, te = split_data(load_default_dataset(), 'grouped', seed=0)
emb = rb.MergingCache(cache_dir=args.cache); emb.check_uncased()
spec = load_canon_spec(); out = {'command': 'python bench/robustness_ordinal.py ' + ' '.join(sys.argv[1:]), 'n_train': len(tr), 'n_valid': len(va), 'n_test': len(te),
                                 'default_settings': {'k': DEFAULT_K, 'temperature': DEFAULT_TEMPERATURE}, 'loadavg_start': os.getloadavg(), 'results': {}}
rules = {'argmax': lambda S: decide(S), 'ordinal': lambda S: decide(S, 'ordinal', 0.5), **{f'smooth {a:g}': (lambda a: lambda S: decide(S, 'smooth', a))(a) for a in (0.2, 0.3, 0.4, 0.5)}}
with tempfile.TemporaryDirectory() as w:
    base = rb.build_knn(tr, emb, 100, w, spec)
    for k, T in dict.fromkeys(((30, None), (DEFAULT_K, DEFAULT_TEMPERATURE), (50, None), (50, 0.1), (75, 0.15))):
        r = KNNRouter(base.path, emb, k=k, temperature=T)
        for name, d in (('valid', va), ('test', te)):
            S = r.score_batch(d.queries); y = ev.label_index(d)
            for rn, f in rules.items():
                p = f(S); key = f"k={k} T={T}/{name}/{rn}"
                out['results'][key] = {'accuracy': float((p == y).mean()), 'mean_abs_tier_error': float(np.abs(p - y).mean()), 'off_by_2plus': float((np.abs(p - y) > 1).mean())}
                print(key, {kk: round(v, 3) for kk, v in out['results'][key].items()}, flush=True)
    emb.save()
out.update(loadavg_end=os.getloadavg(), wall_s=round(time.time() - t0, 1))
p = Path(args.out); tmp = p.with_name(f'.{p.name}.tmp'); tmp.write_text(json.dumps(out, indent=1)); os.replace(tmp, p)
