"""The measured comparison of routers, every one built through the build path (`query_router.build.make_router`: the code
`query-router build --router KIND` runs), saved as an artifact and loaded back the way `serve` loads it.

- LLMRouter outcomes (../shared/data/llmrouter): fit on train, calibrate λ on train only (out-of-fold scores), report on test;
  then k-fold cross-validation on train.jsonl with the same protocol (no choice tuned on the test split).
- the default tier dataset (grouped split): accuracy and cost as before.

Writes bench/results/compare.json, compare.md, and per dataset compare_<dataset>.json/.md/_curves.png.

    python bench/compare.py                          # both datasets, the standard line-up
    python bench/compare.py --only llmrouter --folds 5
    python bench/compare.py --routers hybrid,mf,logreg --folds 0
    python bench/compare.py --render                 # rewrite the Markdown from compare.json
    python bench/compare.py --part cv --routers stacked --merge   # add a router to an earlier run (same folds and seed)
    python bench/compare.py --part default --routers 'knn (default: k=75, T=0.15)' --n-latency 20   # one row, one part
    python bench/compare.py --no-canon                # the routers without canonicalisation (not what `build` serves)

Every router is canonicalised as `query-router build` does it (`build_router`: `r.canonicalize = load_canon_spec()`, the
package's rules, before `fit`): it learns from canonicalised training text, scores canonicalised queries, and its artifact
records the spec, so the loaded artifact canonicalises the same way. `--no-canon` switches that off; the JSON meta records
which (`meta.canonicalize`: the step names, spec version and the spec's SHA-256, or false).
"""
import argparse, json, os, platform, re, shutil, sys, tempfile, time
from pathlib import Path
for v in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(v, '1') # one thread: on a shared machine more only contend
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
from query_router.core import has_shared_data, shared_data_dir
from query_router.evaluate import (CachedEmbedder, cache_root, compare, load_eval_data, report_markdown, write_report, upper_hull,
                                   markdown_table, folder_bytes, latencies)
from query_router.build import make_router
from query_router.artifacts import load_router
from query_router.knn import DEFAULT_SETTINGS as KNN_DEFAULT

RESULTS = ROOT/'bench'/'results'

# name -> (kind for `query-router build --router`, its options)
LINEUP = {
    'knn (k=10)': ('knn', {'k': 10}),
    'knn (k=30)': ('knn', {'k': 30}),
    f"knn (default: k={KNN_DEFAULT['k']}, T={KNN_DEFAULT['temperature']})": ('knn', dict(KNN_DEFAULT)), # what `query-router build` writes by default (k, temperature, policy 'auto')
    'logreg': ('linear', {'features': 'embedding', 'C': 1.0}),
    'tfidf': ('tfidf', {'C': 3.0}),
    'hybrid': ('hybrid', {'k': 30, 'combine': 'stack', 'folds': 3}),
    'stacked': ('stacked', {'k': 100, 'folds': 3}),
    'mf': ('mf', {'dim': 64, 'epochs': 400}),
}

def split_names(s:str|None)->list[str]|None:
    "Router names from a comma-separated list; commas inside parentheses belong to the name ('knn (default: k=75, T=0.15)')."
    if not s: return None
    out, cur, depth = [], '', 0
    for ch in s:
        depth += (ch == '(') - (ch == ')')
        if ch == ',' and depth <= 0: out.append(cur); cur = ''
        else: cur += ch
    return [n.strip() for n in out + [cur] if n.strip()]

def canon_spec(no_canon:bool=False):
    "The canonicalisation `build_router` applies by default (`load_canon_spec()`), or None with `--no-canon`."
    if no_canon: return None
    from query_router.canonical import load_canon_spec
    return load_canon_spec()

def canon_meta(spec)->dict|bool:
    "What the JSON records about the canonicalisation: step names, version, min_chars and the spec's SHA-256 (false when off)."
    if not spec: return False
    import hashlib
    return {'steps': [s[0] for s in spec['steps']], 'version': spec.get('version'), 'min_chars': spec.get('min_chars'),
            'sha256': hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(), 'source': 'query_router.canonical.load_canon_spec()'}

from query_router.canonical import Canonicalizer

class MemoCanonicalizer(Canonicalizer):
    """`Canonicalizer(spec)` that remembers each text's canonical form for batches: the same spec, the same output and the same
    `describe()` (what an artifact records), but the k-fold runs canonicalise the same training queries dozens of times.
    A single query (the latency timing: one `route` call per query) is canonicalised afresh, as `serve` does it."""
    def __init__(self, spec:dict):
        super().__init__(spec); self.memo = {}
    def __call__(self, texts):
        if isinstance(texts, str) or len(texts) < 2: return super().__call__(texts)
        m, out = self.memo, []
        for t in texts:
            v = m.get(t) if isinstance(t, str) else None
            if v is None:
                v = self.one(t)
                if isinstance(t, str): m[t] = v
            out.append(v)
        return out

def make_fitted(kind:str, opts:dict, emb, canon, d):
    "A router of `kind` fitted on `d` as `query_router.build.build_router` fits it: `make_router`, then the canonicalisation, then `fit`."
    r = make_router(kind, emb, **opts)
    r.canonicalize = canon or False # as build_router (`r.canonicalize = spec or False`): fit learns from canonicalised text, scoring canonicalises, save records the spec
    return r.fit(d)

def factories(names, emb, spec=None):
    "name -> factory `train_data -> fitted router`, every router canonicalised with `spec` (a spec dict from `canon_spec`, or None: off)."
    canon = MemoCanonicalizer(spec) if spec else None # one per line-up: the routers share the remembered forms
    return {n: (lambda kind, opts: (lambda d: make_fitted(kind, opts, emb, canon, d)))(*LINEUP[n]) for n in names}

def warm_embeddings(emb, spec, *datas):
    "Embed the canonical forms of the datasets' queries once, before the routers fit: `compare` embeds the raw queries first, and `fit_s` assumes the embeddings are cached."
    if not spec: return
    c = MemoCanonicalizer(spec)
    emb.encode(sorted({q for d in datas if d is not None for q in c(list(d.queries))}))

def through_artifacts(res, names, test, emb, work, n_latency, spec=None):
    "Save each fitted router as an artifact, load it back as `serve` does, and measure: size on disk, load time, p50 per query, same scores (and the same canonicalisation)."
    out, loaded = {}, {}
    for n in names:
        r = res.routers.get(n)
        if r is None: continue
        p = Path(work)/re.sub(r'[^A-Za-z0-9_.-]+', '_', n).strip('_')
        t = time.perf_counter(); r.save(p); save_s = time.perf_counter() - t
        t = time.perf_counter(); lr = load_router(p, embedder=emb); load_s = time.perf_counter() - t
        m = json.loads((p/'manifest.json').read_text())
        if sorted(lr.targets) != sorted(r.targets): raise SystemExit(f'{n}: the artifact lists targets {lr.targets}, the fitted router {r.targets}')
        cols = [list(lr.targets).index(t) for t in r.targets] # by name: a KNN artifact orders its targets by cost
        q = test.queries[:200]; fitted = r.score_batch(q)
        diff = float(np.abs(lr.score_batch(q)[:, cols] - fitted).max())
        exact = {}
        if m['kind'] == 'knn': # the artifact's approximate index aside: exact search must give the fitted scores (k, temperature, canonicalisation)
            lr.exact = True; exact = {'max_score_diff_exact_search': float(np.abs(lr.score_batch(q)[:, cols] - fitted).max())}; lr.exact = False
        stored = m['settings'].get('canonicalize') or False
        if json.loads(json.dumps(stored)) != json.loads(json.dumps(spec or False)):
            raise SystemExit(f"{n}: the artifact records canonicalisation {canon_meta(stored)}, the router was fitted with {canon_meta(spec)}")
        out[n] = {'kind': m['kind'], 'artifact_mb': folder_bytes(p) / 2**20, 'files': len(m['files']), 'save_s': save_s, 'load_s': load_s,
                  'max_score_diff_vs_fitted': diff, **exact, 'fit_s': next((row['fit_s'] for row in res['rows'] if row['router'] == n), None),
                  'canonicalize_steps': lr.canonicalizer().names if lr.canonicalizer() else [],
                  **{k: m['settings'].get(k) for k in ('k', 'temperature', 'policy', 'param') if k in m['settings']}}
        loaded[n] = lr
    lat = latencies(loaded, test.queries, n_latency) if n_latency else {}
    for n, v in lat.items(): out[n].update(p50_ms=v['p50_ms'], p99_ms=v['p99_ms'])
    return out

def bar_check(res:dict, cv:dict|None=None)->dict:
    "The issue's bars on LLMRouter test."
    rows = [r for r in res['rows'] if not r.get('baseline') and not r.get('simple_baseline') and not r.get('error')]
    rc = next(t['cost'] for t in res['meta']['targets'] if t['name'] == res['meta']['reference'])
    def at(name, b):
        c = res['curves'][name]; x = np.array(c['cost']) / rc; q = np.array(c['quality'])
        ok = x <= b + 1e-12
        return (float(q[ok].max()), float(x[ok][q[ok].argmax()])) if ok.any() else (None, None)
    simple = {r['router']: r for r in res['rows'] if r.get('simple_baseline')}
    out = {'reference': res['meta']['reference'], 'pair': res['meta']['pair'], 'routers': {}}
    for r in rows:
        q50, c50 = at(r['router'], 0.5)
        out['routers'][r['router']] = {
            'q_at_50pct_sweep': q50, 'cost_rel_of_that_point': c50, 'calibrated_quality': r.get('cal_quality'), 'calibrated_cost_rel': r.get('cal_cost_rel'),
            'apgr': r.get('apgr'), 'aiq': r.get('aiq'),
            **{f'{m}_se': r.get(f'{m}_se') for m in ('aiq', 'apgr', 'cal_quality') if r.get(f'{m}_se') is not None},
            **{k: r[k] for k in r if k.startswith('p_aiq_above_')},
            'meets_0.600_at_50pct_calibrated': bool(r.get('cal_quality') is not None and r['cal_quality'] >= 0.600 and r['cal_cost_rel'] <= 0.5 + 1e-9),
            'meets_0.600_at_50pct_sweep': bool(q50 is not None and q50 >= 0.600),
            'meets_apgr_0.90': bool((r.get('apgr') or 0) >= 0.90), 'meets_aiq_0.60': bool((r.get('aiq') or 0) >= 0.60),
            **{f'aiq_above_{k}': bool((r.get('aiq') or 0) > (v.get('aiq') or 1)) for k, v in simple.items()}}
    best = max(rows, key=lambda r: r.get('aiq') or 0)['router']
    out['best_by_aiq'] = best
    out['simple_baselines_aiq'] = {k: v.get('aiq') for k, v in simple.items()}
    if cv: out['cv'] = {r['router']: {k: r.get(k) for k in ('aiq', 'aiq_sd', 'apgr', 'apgr_sd', 'q@50%', 'q@50%_sd', 'cal_quality', 'cal_quality_sd', 'cal_cost_rel', 'cal_cost_rel_sd', 'cal_spent_share')}
                        for r in cv['rows'] if not r.get('baseline') or r.get('simple_baseline')}
    if res['meta'].get('bootstrap'):
        bt = res['meta']['bootstrap']
        out['bootstrap'] = bt
        out['note_bootstrap'] = (f"`*_se`: standard errors from {bt['n']} bootstrap resamples of the test queries ({bt['how']}); `p_aiq_above_X`: the share of "
                                 "the same resamples in which the router's AIQ beats X's (a paired test).")
    out['note'] = ('q_at_50pct_sweep is the best point of the utility curve (λ swept on the test split) within the budget, an upper bound; the calibrated point uses the λ '
                   'chosen on training data only (out-of-fold scores), the honest figure.')
    return out

def run(dataset, args, emb, work):
    tr, va, te = load_eval_data(dataset)
    names = split_names(args.routers) or list(LINEUP)
    unknown = [n for n in names if n not in LINEUP]
    if unknown: raise SystemExit(f'unknown routers {unknown}; choose from {list(LINEUP)}')
    t = time.time()
    spec = canon_spec(args.no_canon)
    warm_embeddings(emb, spec, tr, va, te)
    res = compare(factories(names, emb, spec), tr, te, va, budgets=(0.5, 0.12), embedder=emb, n_latency=args.n_latency, calibration='cv', cal_folds=args.cal_folds, progress=False,
                  bootstrap=args.bootstrap if dataset == 'llmrouter' else 0)
    res['meta']['wall_s'] = round(time.time() - t, 1)
    res['meta']['lineup'] = {n: {'kind': LINEUP[n][0], 'options': LINEUP[n][1]} for n in names}
    res['meta']['canonicalize'] = canon_meta(spec)
    res['artifacts'] = through_artifacts(res, names, te, emb, work, args.n_latency, spec)
    cv = None
    if args.folds and dataset == 'llmrouter':
        cv_names = [n for n in (split_names(args.cv_routers) or names) if n in LINEUP]
        t = time.time()
        cv = compare(factories(cv_names, emb, spec), tr, None, va, budgets=(0.5, 0.12), embedder=emb, n_latency=0, calibration='cv',
                     cal_folds=args.cal_folds, folds=args.folds, progress=True)
        cv['meta']['wall_s'] = round(time.time() - t, 1)
        cv['meta']['canonicalize'] = canon_meta(spec)
    return res, cv

TITLES = {'default': 'Default dataset (grouped split: train / valid / test)', 'llmrouter': 'LLMRouter outcomes (train → test)', 'llmrouter_cv': 'LLMRouter train.jsonl, k-fold cross-validation'}

def artifacts_table(a:dict)->str:
    rows = [{'router': n, **v} for n, v in a.items()]
    return markdown_table(rows, ['router', 'kind', 'fit_s', 'artifact_mb', 'files', 'load_s', 'p50_ms', 'p99_ms', 'max_score_diff_vs_fitted', 'max_score_diff_exact_search'] + (['temperature'] if any('temperature' in v for v in a.values()) else []))

def order_rows(res:dict)->dict:
    "Baselines first, then the routers in `LINEUP` order (others after), then the simple baselines: merged runs read like one."
    rank = {n: i for i, n in enumerate(LINEUP)}
    key = lambda r: (0, 0) if r.get('baseline') else (2, 0) if r.get('simple_baseline') else (1, rank.get(r['router'], len(rank)))
    res['rows'] = sorted(res['rows'], key=key) # stable: baselines keep their order
    return res

def merge_part(new:dict, old:dict)->dict:
    "Add to `new` (this run's result) the routers of an earlier run of the same part that this run left out: same data, folds and seed, so the rows compare."
    from query_router.evaluate import _vs_baselines, _agg_rows
    have = {r['router'] for r in new['rows']}
    keep = [r for r in old['rows'] if r['router'] not in have and not r.get('baseline') and not r.get('simple_baseline')]
    if not keep: return new
    names = {r['router'] for r in keep}
    pos = next((i for i, r in enumerate(new['rows']) if r.get('simple_baseline')), len(new['rows']))
    new['rows'][pos:pos] = keep
    new['curves'].update({n: c for n, c in old['curves'].items() if n in names})
    if old.get('artifacts'): new.setdefault('artifacts', {}).update({n: a for n, a in old['artifacts'].items() if n in names})
    if old.get('fold_rows') and new.get('fold_rows'):
        for fr_new, fr_old in zip(new['fold_rows'], old['fold_rows']): fr_new.extend(r for r in fr_old if r['router'] in names)
    new['meta']['lineup'] = {**{n: v for n, v in old['meta'].get('lineup', {}).items() if n in names}, **new['meta'].get('lineup', {})}
    new['meta']['vs_baselines'] = _vs_baselines(new['rows'], new['meta']['simple_baselines'])
    new['meta']['merged'] = {'routers': sorted(names), 'from': old['meta'].get('wall_s') and 'an earlier run of this part (same data, folds and seed)'}
    return new

def render(out):
    md = ['# Router comparison (measured)', '', f"Command: `{out['command']}`. Machine: {out['machine']['cpus']} CPUs, shared "
          f"(load average {out['machine']['loadavg_start']:.1f} at the start, {out['machine'].get('loadavg_end', float('nan')):.1f} at the end): timings are comparable within a table, not across machines.", '']
    for d in ('default', 'llmrouter', 'llmrouter_cv'):
        if d not in out: continue
        order_rows(out[d])
        write_report(out[d], RESULTS, f'compare_{d}', TITLES[d])
        md += [report_markdown(out[d], TITLES[d]), f'![cost-quality curves](compare_{d}_curves.png)', '']
        cm = out[d]['meta'].get('canonicalize')
        if cm is not None: # runs before issue 17 did not record it
            md += [(f"Canonicalisation as `query-router build` applies it (`load_canon_spec()`, spec version {cm['version']}, sha256 {cm['sha256'][:12]}): "
                    f"steps {', '.join(cm['steps'])}; every router learns from canonicalised training text and scores canonicalised queries.") if cm else
                   'Canonicalisation off (`--no-canon`): the routers fit and score the text as it is, which is not what `query-router build` serves by default.', '']
        if out[d].get('artifacts'):
            md += ['Through the build path: each fitted router saved as an artifact (`save`, the last step of `query-router build`), loaded back with `load_router` '
                   '(as `serve` does) and timed one query at a time in process (embedding included); the artifact must record the canonicalisation the router was fitted with (`canonicalize_steps`; a mismatch stops the run); `max_score_diff_vs_fitted` checks that the artifact serves what was fitted (exactly, for every kind but `knn`, whose artifact searches the approximate Annoy index while the in-memory fit searches exactly, so some queries get other neighbours; `max_score_diff_exact_search` loads the same knn artifact searching exactly, which must match the fit: same k, temperature and canonicalisation).', '',
                   artifacts_table(out[d]['artifacts']), '']
    if 'bar' in out:
        b = out['bar']
        rows = [{'router': n, **v} for n, v in b['routers'].items()]
        first = next(iter(b['routers'].values()))
        cols = ['router', 'q_at_50pct_sweep', 'calibrated_quality', 'cal_quality_se', 'calibrated_cost_rel', 'apgr', 'apgr_se', 'aiq', 'aiq_se',
                'meets_0.600_at_50pct_calibrated', 'meets_0.600_at_50pct_sweep', 'meets_apgr_0.90', 'meets_aiq_0.60'] + \
               [k for k in first if k.startswith('aiq_above_') or k.startswith('p_aiq_above_')]
        cols = [c for c in cols if c in first or not c.endswith('_se')]
        md += ['## The bars (LLMRouter test)', '', f"Best router by AIQ: **{b['best_by_aiq']}**; simple baselines' AIQ: {b['simple_baselines_aiq']}.", '', markdown_table(rows, cols), '', b['note'], *( [b['note_bootstrap']] if b.get('note_bootstrap') else []), '']
    (RESULTS/'compare.md').write_text('\n'.join(md))
    print('\n'.join(md))

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--part', choices=['default', 'llmrouter', 'cv'], action='append',
                   help='what to run (repeatable; default: all three): the default dataset, LLMRouter train -> test, k-fold CV on LLMRouter train; '
                        'each part writes bench/results/compare_part_<part>.json, so parts can run as separate processes')
    p.add_argument('--routers', help=f'comma-separated subset of {list(LINEUP)} (commas inside parentheses are part of a name)')
    p.add_argument('--cv-routers', help='routers for the k-fold run (default: the same)')
    p.add_argument('--folds', type=int, default=5, help='k of the cross-validation on LLMRouter train')
    p.add_argument('--cal-folds', type=int, default=5, help='folds of the out-of-fold calibration')
    p.add_argument('--n-latency', type=int, default=100)
    p.add_argument('--bootstrap', type=int, default=1000, help='resamples of the LLMRouter test queries (within each task) for standard errors and paired tests (0: none)')
    p.add_argument('--no-canon', action='store_true', help="fit and score the text as it is (default: canonicalise as `query-router build` does, the package's rules)")
    p.add_argument('--merge', action='store_true', help="keep the routers of the part's earlier result that this run leaves out (same data, folds, seed)")
    p.add_argument('--render', action='store_true', help='only collect the parts into compare.json and rewrite the Markdown and PNGs')
    args = p.parse_args()
    if not args.render:
        RESULTS.mkdir(parents=True, exist_ok=True)
        emb = CachedEmbedder(cache_dir=cache_root()/'embeddings')
        for part in args.part or ['default', 'llmrouter', 'cv']:
            if part in ('llmrouter', 'cv') and not has_shared_data():
                print(f'LLMRouter outcomes not found at {shared_data_dir()}: {part} skipped'); continue
            out = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'loadavg_start': os.getloadavg()[0]},
                   'command': 'python bench/compare.py ' + ' '.join(sys.argv[1:]), 'args': vars(args)}
            with tempfile.TemporaryDirectory(prefix='qr-bench-') as work:
                if part == 'cv':
                    tr, va, _ = load_eval_data('llmrouter')
                    names = [n for n in (split_names(args.cv_routers) or split_names(args.routers) or list(LINEUP)) if n in LINEUP]
                    spec = canon_spec(args.no_canon)
                    warm_embeddings(emb, spec, tr, va)
                    t = time.time()
                    res = compare(factories(names, emb, spec), tr, None, va, budgets=(0.5, 0.12), embedder=emb, n_latency=0, calibration='cv',
                                  cal_folds=args.cal_folds, folds=args.folds, progress=True)
                    res['meta']['wall_s'] = round(time.time() - t, 1)
                    res['meta']['lineup'] = {n: {'kind': LINEUP[n][0], 'options': LINEUP[n][1]} for n in names}
                    res['meta']['canonicalize'] = canon_meta(spec)
                else: res, _ = run(part, argparse.Namespace(**{**vars(args), 'folds': 0}), emb, work)
            emb.save()
            prev = RESULTS/f'compare_part_{part}.json'
            if args.merge and prev.exists():
                old = json.loads(prev.read_text())
                res = merge_part(json.loads(json.dumps(res, default=float)), old['result'])
                out['command'] += f" (merged with: {old['command']})"
            out['machine']['loadavg_end'] = os.getloadavg()[0]
            out['result'] = res
            (RESULTS/f'compare_part_{part}.json').write_text(json.dumps(out, indent=1, default=float))
            print(f'wrote compare_part_{part}.json', flush=True)
    parts = {q: json.loads((RESULTS/f'compare_part_{q}.json').read_text()) for q in ('default', 'llmrouter', 'cv') if (RESULTS/f'compare_part_{q}.json').exists()}
    if not parts: raise SystemExit('no results yet: run a part first')
    key = {'default': 'default', 'llmrouter': 'llmrouter', 'cv': 'llmrouter_cv'}
    first = next(iter(parts.values()))
    out = {'machine': {**first['machine'], 'loadavg_start': max(v['machine']['loadavg_start'] for v in parts.values()), 'loadavg_end': max(v['machine']['loadavg_end'] for v in parts.values())},
           'command': '; '.join(v['command'] for v in parts.values()), **{key[q]: v['result'] for q, v in parts.items()}}
    if 'llmrouter' in out: out['bar'] = bar_check(out['llmrouter'], out.get('llmrouter_cv'))
    (RESULTS/'compare.json').write_text(json.dumps(out, indent=1, default=float))
    render(out)

if __name__ == '__main__': main()
