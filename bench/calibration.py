"""Does the calibrated λ spend the budget it was asked for? The old protocol (λ chosen on one held-out fifth of the
training split, best quality within the budget) against the new one (λ chosen on 5-fold out-of-fold scores of the
whole training split, aimed at the largest spend within the budget), on the LLMRouter outcomes (train -> test), with
the task-only and length-only baselines' AIQ beside the routers'.

    python bench/calibration.py                    # knn (k=30), logreg, task-only, length-only
    python bench/calibration.py --routers knn,length --seeds 3

Writes bench/results/calibration.json (with os.getloadavg()) and prints a Markdown table.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
from query_router.data import load_llmrouter, split_data
from query_router.evaluate import *
from query_router.router import decide

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--routers', default='knn,logreg,task-only,length-only')
    p.add_argument('--budgets', default='0.3,0.5')
    p.add_argument('--seeds', type=int, default=3, help='hold-out splits for the old protocol (the spread of its λ)')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--max_train', type=int, default=None)
    a = p.parse_args()
    t0, load0 = time.time(), os.getloadavg()
    tr, te = load_llmrouter('train'), load_llmrouter('test')
    if a.max_train: tr = tr.subset(sorted(np.random.default_rng(0).choice(len(tr), a.max_train, replace=False)))
    names = a.routers.split(','); budgets = [float(b) for b in a.budgets.split(',')]
    emb = CachedEmbedder(cache_dir=cache_root()/'embeddings') if any(n in ('knn', 'logreg') for n in names) else None
    if emb is not None: emb.encode(tr.queries + te.queries); emb.save()
    work = tempfile.mkdtemp(prefix='qr-cal-')
    make = {'knn': lambda d: fit_knn(d, emb, 30, work, n_trees=20), 'logreg': lambda d: LogRegRouter(emb).fit(d),
            'task-only': lambda d: GroupRouter().fit(d), 'length-only': lambda d: LengthRouter().fit(d)}
    pc, M_te, _ = cost_basis(te, tr.costs()); O_te, O_tr = outcome_matrix(te), outcome_matrix(tr)
    ref = best_single(O_tr, pc); rc_te, rc_tr = M_te[:, ref].mean(), tr.costs()[ref]
    out = {'data': 'llmrouter train -> test', 'n_train': len(tr), 'n_test': len(te), 'reference': tr.targets[ref], 'folds': a.folds, 'seeds': a.seeds,
           'loadavg_start': load0, 'routers': {}}
    for n in names:
        t = time.time(); f = make[n]
        full = f(tr); S_te = score_data(full, te)
        sw = sweep(S_te, O_te, M_te, policy_costs=pc)
        r = {'aiq': aiq(sw['cost'], sw['quality'], pc.min(), pc.max()), 'argmax_quality': route_value(decide(S_te), O_te, M_te)[0]}
        S_oof = oof_scores(f, tr, a.folds, 'random', 0)
        vals = []
        for s in range(a.seeds):
            fit_part, val = split_data(tr, 'random', (0.8, 0.2), s)
            vals.append((val, score_data(f(fit_part), val)))
        for b in budgets:
            new = calibrate(S_oof, O_tr, tr.costs(), max_cost=b * rc_tr)
            qn, cn = route_value(decide(S_te, 'utility', new['param'], pc), O_te, M_te)
            olds = []
            for val, S_val in vals:
                old = calibrate(S_val, outcome_matrix(val), tr.costs(), max_cost=b * rc_tr, aim='quality')
                qo, co = route_value(decide(S_te, 'utility', old['param'], pc), O_te, M_te)
                olds.append({'lambda': old['param'], 'test_quality': qo, 'test_spent': co / rc_te})
            r[f'budget_{b:g}'] = {'new': {'lambda': new['param'], 'train_oof_spent': new['calibration']['cost'] / rc_tr, 'test_spent': cn / rc_te, 'test_quality': qn},
                                  'old': {'per_seed': olds, 'lambda_range': [min(o['lambda'] for o in olds), max(o['lambda'] for o in olds)],
                                          'test_spent_mean': float(np.mean([o['test_spent'] for o in olds])), 'test_quality_mean': float(np.mean([o['test_quality'] for o in olds]))}}
        r['seconds'] = round(time.time() - t, 1)
        out['routers'][n] = r
        print(n, json.dumps(r, default=float)[:400], flush=True)
    out['loadavg_end'] = os.getloadavg(); out['wall_s'] = round(time.time() - t0, 1)
    res = ROOT/'bench'/'results'; res.mkdir(parents=True, exist_ok=True)
    (res/'calibration.json').write_text(json.dumps(out, indent=1, default=float))
    rows = []
    for n, r in out['routers'].items():
        for b in budgets:
            x = r[f'budget_{b:g}']
            rows.append(f"| {n} | {r['aiq']:.3f} | {b:.0%} | {x['old']['lambda_range'][0]:.3g}–{x['old']['lambda_range'][1]:.3g} | {x['old']['test_spent_mean']:.1%} | {x['old']['test_quality_mean']:.3f} | "
                        f"{x['new']['lambda']:.3g} | {x['new']['test_spent']:.1%} | {x['new']['test_quality']:.3f} |")
    print('| router | AIQ (test) | budget | λ old (range over seeds) | spent old | quality old | λ new | spent new | quality new |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n' + '\n'.join(rows))

if __name__ == '__main__': main()
