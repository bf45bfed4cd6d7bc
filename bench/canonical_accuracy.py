"""Does the version-2 canonicalisation cost routing quality? Tier accuracy of routers built with the version-1 spec
(the one artifacts stored before: tests/canonical_v1_spec.json) and with the package's current spec, on the whole
validation and test splits of the default data (v2, grouped split), in one run, with the same code and embeddings.

Writes bench/results/canonical_accuracy.json.  Usage: python bench/canonical_accuracy.py [--routers knn30,tfidf,linear]
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from robustness import build_routers, MergingCache, SoftKNN # the robustness benchmark's builders (read only)
from query_router.canonical import load_canon_spec
from query_router.data import load_default_dataset, split_data
from query_router.router import decide
import query_router.evaluate as ev

HERE = Path(__file__).parent

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--routers', default='knn10,knn30,tfidf,linear')
    ap.add_argument('--cache', default=str(Path(os.environ.get('QUERY_ROUTER_CACHE', Path.home()/'.cache'/'query_router'))/'robustness'))
    ap.add_argument('--out', default=str(HERE/'results'/'canonical_accuracy.json'))
    a = ap.parse_args()
    t0, load0 = time.time(), os.getloadavg()
    tr, va, te = split_data(load_default_dataset(), 'grouped', seed=0)
    specs = {'v1 (before)': json.loads((HERE.parent/'tests'/'canonical_v1_spec.json').read_text())['spec'], 'v2 (now)': load_canon_spec()}
    emb = MergingCache(cache_dir=a.cache); emb.check_uncased()
    res = {}
    with tempfile.TemporaryDirectory(prefix='qr-canon-acc-') as work:
        for sname, spec in specs.items():
            routers = build_routers(tr, emb, work, spec, [k for k in a.routers.split(',') if k != 'soft-knn'])
            if 'knn30' in routers: routers['soft-knn k50 T0.05'] = SoftKNN(routers['knn30'], 50, 0.05) # fixed, not re-tuned per spec
            for rname, r in routers.items():
                for split, d in (('validation', va), ('test', te)):
                    acc = float((decide(r.score_batch(d.queries)) == ev.label_index(d)).mean())
                    res.setdefault(rname, {}).setdefault(split, {})[sname] = round(acc, 4)
                print(f'{time.time() - t0:5.0f}s {sname:12} {rname:18} {res[rname]}', flush=True)
            emb.save()
    for r in res.values():
        for s in r.values(): s['change'] = round(s['v2 (now)'] - s['v1 (before)'], 4)
    out = {'what': 'tier accuracy (argmax) of routers built on the default data v2 training split, canonicalised with the v1 and the v2 spec',
           'n': {'train': len(tr), 'validation': len(va), 'test': len(te)}, 'results': res, 'loadavg_start': load0, 'loadavg_end': os.getloadavg(),
           'seconds': round(time.time() - t0), 'command': 'python bench/canonical_accuracy.py ' + ' '.join(sys.argv[1:])}
    tmp = Path(a.out).with_suffix('.tmp'); tmp.write_text(json.dumps(out, indent=1)); tmp.replace(a.out)
    print(json.dumps(res, indent=1))

if __name__ == '__main__': main()
