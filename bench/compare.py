"""The measured comparison of routers, on the default dataset (grouped split) and on the LLMRouter outcomes
(train on its train split, calibrate on a held-out fifth of it, report on its test split).

Writes bench/results/compare.json and compare.md (both datasets, plus the LLMRouter bar check) and PNGs
(compare_<dataset>_curves.png, compare_default_confusion.png; per-dataset JSON/Markdown beside them).

    python bench/compare.py                      # both datasets, every router whose module exists
    python bench/compare.py --only llmrouter     # one dataset
    python bench/compare.py --no-extra           # without the fine-tuned KNN and the classifier (slow to train on CPU)
    python bench/compare.py --finetuned-default DIR   # a fine-tuned embedder already trained on that dataset's training split
    python bench/compare.py --extra-max-train 2000   # train the extras here on at most 2,000 training queries (CPU budget)
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
from query_router.core import has_shared_data, shared_data_dir
from query_router.evaluate import (CachedEmbedder, cache_root, compare, default_routers, extra_routers, load_eval_data,
                                   report_markdown, write_report, upper_hull, markdown_table)

RESULTS = ROOT/'bench'/'results'

def bar_check(res:dict)->dict:
    "The issue's bar on LLMRouter test: 0.59 at <= 50% of the best single model's cost, and 0.535 at <= 12%."
    rows = [r for r in res['rows'] if not r.get('baseline') and not r.get('error')]
    best = max(rows, key=lambda r: r.get('q@50%') or 0)
    ref = next(r for r in res['rows'] if r['router'].endswith('(best single)'))
    rc = next(t['cost'] for t in res['meta']['targets'] if t['name'] == res['meta']['reference'])
    cv = res['curves']['oracle']
    hx, hy = upper_hull(np.array(cv['cost']) / rc, cv['quality'])
    def at(name, b):
        c = res['curves'][name]; x = np.array(c['cost']) / rc; q = np.array(c['quality'])
        ok = x <= b + 1e-12
        return (float(q[ok].max()), float(x[ok][q[ok].argmax()])) if ok.any() else (None, None)
    q50, c50 = at(best['router'], 0.5); q12, c12 = at(best['router'], 0.12)
    return {'reference': res['meta']['reference'], 'reference_quality': ref['quality'], 'oracle_quality': next(r['quality'] for r in res['rows'] if r['router'] == 'oracle'),
            'best_router': best['router'], 'q_at_50pct': q50, 'cost_rel_of_that_point': c50, 'meets_0.59_at_50pct': bool(q50 is not None and q50 >= 0.59),
            'q_at_12pct': q12, 'meets_0.535_at_12pct': bool(q12 is not None and q12 >= 0.535),
            'cost_rel_for_0.535': best.get('cost_rel@95%best'), 'calibrated_lambda': best.get('cal_param'),
            'calibrated_test_quality': best.get('cal_quality'), 'calibrated_test_cost_rel': best.get('cal_cost_rel'),
            'oracle_hull_at_12pct': float(np.interp(0.12, hx, hy)) if 0.12 >= hx[0] else None,
            'note': 'q_at_x is the best point of the utility curve (λ swept on the test split) within the budget; the calibrated λ was chosen on held-out training queries. '
                    'oracle_hull_at_12pct is the most any router can reach at 12% of the cost (the oracle\'s convex hull, randomised mixtures allowed).'}

def provenance(path, what):
    "Where a model given on the command line came from, from the metrics its trainer saved beside it."
    if not path: return None
    mf = Path(path)/'finetune_metrics.json'
    if mf.exists():
        m = json.loads(mf.read_text())
        return (f"fine-tuned by `query-router finetune` on {m['n_train']} training queries of {Path(m['data']).name} (labels {m['labels']}, {m['epochs']} epochs, "
                f"loss {m['loss']}, {m['train_s']:.0f} s of training, not counted in fit_s, which is the KNN build with its embeddings)")
    mf = Path(path)/'manifest.json'
    if mf.exists():
        m = json.loads(mf.read_text())
        return f"{what} artifact trained on {m.get('training', {}).get('n_train')} queries of {m.get('source', {}).get('data')}"
    return str(path)

def run(dataset, args, emb, work):
    tr, va, te = load_eval_data(dataset)
    rs = default_routers(emb, work, 10)
    ft, clf = getattr(args, f'finetuned_{dataset}'), getattr(args, f'classifier_{dataset}')
    extra = {} if args.no_extra else extra_routers(emb, work, 10, ft, clf, train=True, epochs=1, max_train=args.extra_max_train)
    rs.update(extra)
    slow = [n for n in extra if (n.startswith('knn-finetuned') and not ft) or (n.startswith('classifier') and not clf)]
    t = time.time()
    res = compare(rs, tr, te, va, cal_frac=0.2 if va is None else 0, budgets=(0.5, 0.12), embedder=emb, n_latency=args.n_latency, no_calibration=slow)
    res['meta']['wall_s'] = round(time.time() - t, 1)
    res['meta']['not_calibrated'] = slow
    res['meta']['extras'] = {'finetuned': provenance(ft, 'embedder') or (f'trained here, 1 epoch, on at most {args.extra_max_train} training queries' if not args.no_extra else None),
                             'classifier': provenance(clf, 'classifier') or (f'trained here (minilm base, LoRA), 1 epoch, on at most {args.extra_max_train} training queries' if not args.no_extra else None)}
    return res

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', choices=['default', 'llmrouter'])
    p.add_argument('--no-extra', action='store_true', help='leave out the fine-tuned KNN and the classifier')
    for d in ('default', 'llmrouter'):
        p.add_argument(f'--finetuned-{d}', help=f'fine-tuned embedder folder trained on the {d} training split (no test queries)')
        p.add_argument(f'--classifier-{d}', help=f'classifier artifact trained on the {d} training split (no test queries)')
    p.add_argument('--extra-max-train', type=int, default=None, help='train the fine-tuned embedder and the classifier on at most this many queries')
    p.add_argument('--n-latency', type=int, default=200)
    p.add_argument('--render', action='store_true', help='only rewrite the Markdown and PNGs from bench/results/compare.json')
    args = p.parse_args()
    if args.render: return render(json.loads((RESULTS/'compare.json').read_text()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'loadavg_start': os.getloadavg()[0]},
           'command': 'python bench/compare.py ' + ' '.join(sys.argv[1:])}
    prev = RESULTS/'compare.json'
    if args.only and prev.exists(): out = {**json.loads(prev.read_text()), **{k: v for k, v in out.items()}}
    emb = CachedEmbedder(cache_dir=cache_root()/'embeddings')
    todo = [args.only] if args.only else ['default', 'llmrouter']
    if 'llmrouter' in todo and not has_shared_data():
        print(f'LLMRouter outcomes not found at {shared_data_dir()}: skipped'); todo.remove('llmrouter')
    titles = TITLES
    for d in todo:
        with tempfile.TemporaryDirectory(prefix='qr-bench-') as work:
            res = run(d, args, emb, work)
        write_report(res, RESULTS, f'compare_{d}', titles[d])
        out[d] = res
        if d == 'llmrouter': out['bar'] = bar_check(res)
        emb.save()
    out['machine']['loadavg_end'] = os.getloadavg()[0]
    (RESULTS/'compare.json').write_text(json.dumps(out, indent=1, default=float))
    render(out)

TITLES = {'default': 'Default dataset (grouped split: train / valid / test)', 'llmrouter': 'LLMRouter outcomes (train → test)'}

def render(out):
    "compare.md (and each dataset's Markdown and PNGs) from the results."
    titles = TITLES
    for d in ('default', 'llmrouter'):
        if d in out: write_report(out[d], RESULTS, f'compare_{d}', titles[d])
    md = ['# Router comparison (measured)', '', f"Command: `{out['command']}`. Machine: {out['machine']['cpus']} CPUs, shared "
          f"(load average {out['machine']['loadavg_start']:.1f} at the start): timings are comparable within a table, not across machines.", '']
    for d in ('default', 'llmrouter'):
        if d in out:
            ex = out[d]['meta'].get('extras') or {}
            md += [report_markdown(out[d], titles[d]), f"Fine-tuned embedder: {ex.get('finetuned') or 'not included'}. Classifier: {ex.get('classifier') or 'not included'}. "
                   f"Not calibrated (trained once, on all training queries): {out[d]['meta'].get('not_calibrated') or 'none'}.", '',
                   f'![cost-quality curves](compare_{d}_curves.png)', '']
            if d == 'default': md += ['![confusion matrices](compare_default_confusion.png)', '']
    if 'bar' in out:
        b = out['bar']
        md += ['## The bar (LLMRouter test)', '', markdown_table([b], ['best_router', 'q_at_50pct', 'cost_rel_of_that_point', 'meets_0.59_at_50pct',
               'q_at_12pct', 'meets_0.535_at_12pct', 'cost_rel_for_0.535', 'oracle_hull_at_12pct', 'calibrated_lambda', 'calibrated_test_quality', 'calibrated_test_cost_rel']), '', b['note'], '']
    (RESULTS/'compare.md').write_text('\n'.join(md))
    print('\n'.join(md))

if __name__ == '__main__': main()
