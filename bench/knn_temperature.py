"""Choose the default KNN artifact's neighbours `k` and similarity temperature `T` on training data only (issue 19).

The default data (v2) is split as everywhere else (`split_data(..., 'grouped', seed=0)`: train / validation / test).
Only the training and validation splits are read here; the test split is left to `bench/robustness.py`.

* **Cross-validation on the training split**: 5 folds (3 repeats) grouped by the data's groups (each fold's queries are routed by
  the other four folds' points: exact cosine search, the artifact's score rule `knn_scores(sims, scores, temperature)`
  and the argmax decision). The objective is the mean tier accuracy over folds.
* **Validation split** beside it: the routers are fitted on the whole training split and route the validation split:
  tier accuracy, and robustness on the *seen* rewrite variants of `query_router/rewrites.json` (the same selection as
  `bench/robustness.py`): 1 - mean over families of the share of validation routes that flip, and how many flips jump
  more than one tier.
* Text is canonicalised as the default artifact does (`load_canon_spec()`), index and queries alike.

    python bench/knn_temperature.py --cache /tmp/qr-robust-cache/emb

Writes bench/results/knn_temperature.json (grid, per-fold accuracies, the choice and the rule it follows).
"""
import argparse, json, os, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/'bench'))
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
from query_router.data import load_default_dataset, split_data
from query_router.router import decide
from query_router.knn import knn_scores
from query_router.canonical import load_rewrites, rewrite, load_canon_spec, as_canonicalizer

KS = (10, 20, 30, 50, 75, 100)
TS = (None, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1e6) # None: the seed's rule (weights = similarity); 1e6: the plain mean

def unit(x): return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

def topk(q, x, k):
    "Indices and similarities of the k most similar rows of x (exact), most similar first."
    s = q @ x.T; k = min(k, len(x))
    idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    ss = np.take_along_axis(s, idx, 1); o = np.argsort(-ss, 1)
    return np.take_along_axis(idx, o, 1), np.take_along_axis(ss, o, 1)

def scores_for(idx, sims, S, k, T):
    return knn_scores(sims[:, :k], S[idx[:, :k]], T)

def tname(T): return 'seed' if T is None else ('mean' if T >= 1e5 else f'{T:g}')

def variant_selection(fams):
    "The seen variants `bench/robustness.py` measures by default (one per family, two for greetings and politeness)."
    from robustness import default_variants
    return [(f, v) for f, v in default_variants(fams) if not v.get('heldout')]

def robustness(i0, iv_by_variant, fam_of):
    fams = {}
    jumps = 0
    for vn, iv in iv_by_variant.items():
        fams.setdefault(fam_of[vn], []).append(float((iv != i0).mean()))
        jumps += int((np.abs(iv - i0) > 1).sum())
    return 1 - float(np.mean([np.mean(v) for v in fams.values()])), jumps

def prepare(cache, folds=5, repeats=3, seed=0, log=print, pool='train', cv_rewrites=False):
    "Everything both benchmarks need: canonicalised embeddings of the training and validation splits and of the validation split's seen rewrites, the grouped folds."
    from robustness import MergingCache
    t0 = time.time()
    emb = MergingCache(cache_dir=cache); emb.check_uncased()
    canon = as_canonicalizer(load_canon_spec())
    tr, va, _ = split_data(load_default_dataset(), 'grouped', seed=seed) # the test split is not used
    fams = load_rewrites(); variants = variant_selection(fams)
    vnames = [f"{f}/{v['name']}" for f, v in variants]; fam_of = {f"{f}/{v['name']}": f for f, v in variants}
    Xtr = unit(emb.encode(canon(tr.queries), progress=False)); Xva = unit(emb.encode(canon(va.queries), progress=False))
    rew = {vn: canon([rewrite(q, v) for q in va.queries]) for vn, (f, v) in zip(vnames, variants)}
    allr = list(dict.fromkeys(t for ts in rew.values() for t in ts))
    for i in range(0, len(allr), 400): emb.encode(allr[i:i + 400], progress=False); emb.save()
    Xv = {vn: unit(emb.encode(ts, progress=False)) for vn, ts in rew.items()}
    Xcv_rw = None
    if cv_rewrites: # the seen rewrites of every cross-validated query (train, and validation in the pool): jumps counted over ~4x more requests
        qs = tr.queries + (va.queries if pool == 'train+validation' else [])
        rw = {vn: canon([rewrite(q, v) for q in qs]) for vn, (f, v) in zip(vnames, variants)}
        allr = list(dict.fromkeys(t for ts in rw.values() for t in ts))
        for i in range(0, len(allr), 400): emb.encode(allr[i:i + 400], progress=False); emb.save()
        Xcv_rw = {vn: unit(emb.encode(ts, progress=False)) for vn, ts in rw.items()}
    log(f'embedded ({time.time() - t0:.0f}s)')
    groups = tr.frame['group'].astype(str).to_numpy()
    Xcv, Scv = Xtr, tr.scores().astype(np.float32)
    if pool == 'train+validation': # cross-validate over both training-side splits (the test split still unused)
        groups = np.concatenate([groups, va.frame['group'].astype(str).to_numpy()]); Xcv = np.concatenate([Xtr, Xva]); Scv = np.concatenate([Scv, va.scores().astype(np.float32)])
    fold_sets = []
    for r in range(repeats): # grouped folds, a new assignment of groups to folds per repeat
        ug = np.random.default_rng(seed + r).permutation(np.unique(groups))
        fog = {g: i % folds for i, g in enumerate(ug)}
        fold_sets.append(np.array([fog[g] for g in groups]))
    kmax = max(KS)
    cvnb = [[(f == i, f != i, *topk(Xcv[f == i], Xcv[f != i], kmax)) for i in range(folds)] for f in fold_sets]
    cvrw = [[{vn: topk(x[f == i], Xcv[f != i], kmax) for vn, x in Xcv_rw.items()} for i in range(folds)] for f in fold_sets] if Xcv_rw else None
    return dict(tr=tr, va=va, pool=pool, Scv=Scv, ycv=Scv.argmax(1), Str=tr.scores().astype(np.float32), yva=va.scores().argmax(1),
                vnames=vnames, fam_of=fam_of, va0=topk(Xva, Xtr, kmax), vav={vn: topk(x, Xtr, kmax) for vn, x in Xv.items()}, cv=cvnb, cv_rewrites=cvrw,
                folds=folds, repeats=repeats, n_train=len(tr), n_validation=len(va))

def evaluate(P, k, T, rule=lambda S: decide(S)):
    "CV accuracy (mean over repeats × folds), validation accuracy, validation robustness on seen variants and flips more than one tier apart."
    Str = P['Str']
    acc = [float((rule(scores_for(i, s, P['Scv'][fi], k, T)) == P['ycv'][te]).mean()) for rep in P['cv'] for te, fi, i, s in rep]
    ch0 = rule(scores_for(*P['va0'], Str, k, T))
    chv = {vn: rule(scores_for(i, s, Str, k, T)) for vn, (i, s) in P['vav'].items()}
    rob, jumps = robustness(ch0, chv, P['fam_of'])
    out = {'cv_accuracy': float(np.mean(acc)), 'cv_folds': acc, 'validation_accuracy': float((ch0 == P['yva']).mean()),
           'validation_robustness_seen': rob, 'validation_flips_over_1_apart': jumps}
    if P.get('cv_rewrites'): # every cross-validated query's seen rewrites, routed by the other folds (per repeat; jumps summed over repeats)
        robs, js = [], 0
        for rep, rrw in zip(P['cv'], P['cv_rewrites']):
            for (te, fi, i, s), nb in zip(rep, rrw):
                c0 = rule(scores_for(i, s, P['Scv'][fi], k, T))
                r_, j_ = robustness(c0, {vn: rule(scores_for(ii, ss, P['Scv'][fi], k, T)) for vn, (ii, ss) in nb.items()}, P['fam_of'])
                robs.append(r_); js += j_
        out.update(cv_robustness_seen=float(np.mean(robs)), cv_flips_over_1_apart=js)
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cache', default=str(Path.home()/'.cache'/'query_router'/'robustness'))
    ap.add_argument('--folds', type=int, default=5)
    ap.add_argument('--repeats', type=int, default=3, help='CV repeats, each with a new grouped fold assignment')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--pool', default='train', choices=['train', 'train+validation'], help='the splits cross-validated')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'knn_temperature.json'))
    args = ap.parse_args()
    t0, load0 = time.time(), os.getloadavg()
    P = prepare(args.cache, args.folds, args.repeats, args.seed, pool=args.pool)
    grid = [{'k': k, 'temperature': tname(T), **evaluate(P, k, T)} for k in KS for T in TS]
    for g in sorted(grid, key=lambda g: -g['cv_accuracy'])[:15]:
        print(f"k={g['k']:3} T={g['temperature']:>5}  cv {g['cv_accuracy']:.3f}  val {g['validation_accuracy']:.3f}  rob {g['validation_robustness_seen']:.3f}  jumps {g['validation_flips_over_1_apart']}")
    base = next(g for g in grid if g['k'] == 30 and g['temperature'] == 'seed')
    soft = [g for g in grid if g['temperature'] != 'seed']
    best = max(soft, key=lambda g: (round(g['cv_accuracy'], 3), g['validation_robustness_seen']))
    out = {'what': "k and similarity temperature of the default KNN artifact, chosen on the default data's training split (grouped CV; validation split beside it; the test split unused)",
           'command': 'python bench/knn_temperature.py ' + ' '.join(sys.argv[1:]), 'folds': args.folds, 'repeats': args.repeats, 'cv_pool': args.pool, 'split': 'grouped, seed %d' % args.seed,
           'n_train': P['n_train'], 'n_validation': P['n_validation'], 'canonicalize': True, 'seen_variants': P['vnames'],
           'grid_k': list(KS), 'grid_temperature': [tname(T) for T in TS],
           'rule': 'the soft setting (T a number) with the best mean CV tier accuracy (rounded to 0.001), ties to the higher validation robustness; adopted as the default if its CV accuracy is at least knn30 (seed rule) and its validation robustness is higher',
           'baseline_knn30': base, 'best_soft': best,
           'adopted': bool(best['cv_accuracy'] >= base['cv_accuracy'] - 1e-9 and best['validation_robustness_seen'] > base['validation_robustness_seen']),
           'grid': grid, 'loadavg_start': load0, 'loadavg_end': os.getloadavg(), 'wall_s': round(time.time() - t0, 1)}
    p = Path(args.out); tmp = p.with_name(f'.{p.name}.tmp'); tmp.write_text(json.dumps(out, indent=1)); os.replace(tmp, p)
    print('baseline', base['cv_accuracy'], base['validation_robustness_seen'], 'best', best['k'], best['temperature'], best['cv_accuracy'], best['validation_robustness_seen'], 'adopted', out['adopted'])

if __name__ == '__main__': main()
