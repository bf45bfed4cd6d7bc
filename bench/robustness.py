"""Same request, same route? The robustness benchmark of issue 19.

Every router kind is built on a training split; each test request is rewritten harmlessly (families and variants
from `query_router/rewrites.json`: typos, casing, greetings and sign-offs, politeness, whitespace, markdown,
punctuation, chat templates) and routed again. Reported per router, remedy and family: the share of routes that
flip, how far they jump (targets apart, cheapest first), and what the flips cost in quality and money; robustness
is 1 - the mean over families of the share of flips, on the seen variants and, separately, on the held-out ones
(which no remedy was written or tuned on).

Remedies, alone and together: canonicalisation before embedding (`query_router.canonical`, index and queries),
smoother KNN scores (more neighbours, similarity temperature), the margin rule of `decide` (near-ties settled by a
fixed rule), an embedder fine-tuned with rewrites as positives (`--finetuned-default`). Their settings are tuned
on training data only (the default data's validation split; a held-out fifth of LLMRouter's train.jsonl).

    python bench/robustness.py                          # both datasets, 400 test requests each
    python bench/robustness.py --only default --n 100   # a quick look
    python bench/robustness.py --all-variants           # every variant of rewrites.json (FULL; slow on a CPU)
    python bench/robustness.py --fresh FILE             # also a blind rewrites file: its variants are a third column, "fresh" (blind the first time it is run)

Routers: `default` is the default artifact exactly as `query-router build` writes it (k, similarity temperature and, on tier
data, the smooth decision: `knn.DEFAULT_SETTINGS`), measured with its own decision; `soft-knn` is a KNN artifact with a
similarity temperature whose k and T are chosen on the tuning split. On LLMRouter the margin rule (band and tie-break) of
each router is chosen on the calibration split (`choose_margin`), never on the test table.

Writes bench/results/robustness.json. Embeddings are cached (--cache, default ~/.cache/query_router/robustness).
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
from query_router.core import has_shared_data
from query_router.data import load_default_dataset, load_llmrouter, split_data
from query_router.router import Router, decide
from query_router.canonical import load_rewrites, select_variants, rewrite, load_canon_spec, canonicalize_data
from query_router import evaluate as ev # routers may move to their own modules (issue 17): looked up defensively below

RESULTS = ROOT/'bench'/'results'
MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
LAMBDA_STRIDE = 1 # every λ of evaluate.param_grid (--lambda-stride 4: a quarter of them, on a busy CPU)
PER_FAMILY = {'greetings': 2, 'politeness': 2} # seen variants per family (others: --per-family)
HELDOUT_FAMILIES = 'typos,greetings,politeness,markdown,chat' # families whose first held-out variant runs by default (--all-variants: every one)

def default_variants(fams:dict, per_family:int=1, heldout_per_family:int=1, heldout_families:str=HELDOUT_FAMILIES)->list:
    "The (family, variant) pairs measured by default: the first seen variants of each family (greetings and politeness: one more) and the first held-out one of some families."
    variants = []
    for f in fams:
        seen = select_variants(fams, False, only=[f]); hv = select_variants(fams, True, only=[f])
        hf = heldout_families == 'all' or f in heldout_families.split(',')
        variants += seen[:PER_FAMILY.get(f, 0) + per_family] + (hv[:heldout_per_family] if hf else [])
    return variants

def _find(name):
    "A router class or helper from its module of the day (query_router.linear, .tfidf, .hybrid ... or evaluate)."
    import importlib
    for mod in ('evaluate', 'linear', 'tfidf', 'hybrid', 'knn', 'routers'):
        try: m = importlib.import_module(f'query_router.{mod}')
        except ImportError: continue
        if hasattr(m, name): return getattr(m, name)
    return None

class MergingCache(ev.CachedEmbedder):
    "A `CachedEmbedder` that picks up, and keeps, what other processes wrote to the same cache meanwhile."
    _seen_mtime = None
    def _merge(self):
        if not (self.cache_dir and self.file.exists()): return
        mt = self.file.stat().st_mtime
        if mt == self._seen_mtime: return
        try:
            z = np.load(self.file)
            for k, v in zip(z['keys'].tolist(), z['vecs']): self._mem.setdefault(k, v)
            self._seen_mtime = mt
        except Exception: pass
    same_tokens = False # set by `check_uncased`: texts equal up to case and whitespace share one embedding
    def encode(self, texts, progress=None):
        self._merge()
        if not self.same_tokens or isinstance(texts, str): return super().encode(texts, progress)
        rep = self.__dict__.setdefault('_rep', {})
        return super().encode([rep.setdefault(' '.join(t.lower().split()), t) for t in texts], progress)
    def check_uncased(self, probe=('Explain  the TCP handshake.\nBriefly', 'Écris un poème sur la mer')):
        "Whether the model's tokenizer ignores case and whitespace (all-MiniLM-L6-v2 lower-cases and splits on whitespace): then casing and whitespace rewrites need no new embeddings. Checked, not assumed."
        a = self.base.encode(list(probe)); b = self.base.encode([' '.join(t.lower().split()) for t in probe])
        self.same_tokens = bool(np.abs(a - b).max() < 1e-5)
        return self.same_tokens
    def save(self):
        if not (self.cache_dir and self._dirty): return
        self._merge(); super().save()
        if self.file.exists(): self._seen_mtime = self.file.stat().st_mtime

def build_knn(data, emb, k, work, canon=None, settings=None):
    "A KNN artifact from `data` (canonicalised, with the spec recorded in the manifest, when `canon`; `settings` as `query-router build` stores them), loaded as the server would."
    from query_router.knn import build_artifacts, KNNRouter
    out = Path(tempfile.mkdtemp(prefix='knn-', dir=work))/'artifact'
    build_artifacts(out, data, emb, settings={'k': k, **(settings or {})}, canonicalize=canon or False, progress=False)
    return KNNRouter(out, emb)

KINDS = 'default,knn10,knn30,soft-knn,linear,tfidf,hybrid,mf,length' # every kind `query-router build` makes but the classifier (a fine-tuned transformer: hours on this CPU)
SOFT_GRID = [(kk, T) for kk in (30, 50, 75) for T in (0.05, 0.1, 0.15, 0.2)] # soft-knn: k and temperature chosen on the tuning split

def build_routers(data, emb, work, canon=None, kinds=tuple(KINDS.split(',')), soft=None):
    """name -> fitted router. Canonicalisation goes through the generic path every artifact kind uses
    (`router.canonicalize = spec`: `fit` learns from canonicalised text, `score_batch` canonicalises the queries, `save` records it).
    `default` is the default artifact (`query-router build` with no options: `knn.DEFAULT_SETTINGS`, its decision resolved by the data's kind);
    `soft-knn` is a KNN artifact with the similarity temperature `soft` = (k, T) (chosen on the tuning split by `choose_soft`)."""
    from query_router.build import make_router
    from query_router.knn import DEFAULT_SETTINGS
    makers = {'linear': lambda: make_router('linear', emb), 'logreg': lambda: make_router('linear', emb), 'tfidf': lambda: make_router('tfidf'),
              'hybrid': lambda: make_router('hybrid', emb), 'mf': lambda: make_router('mf', emb), 'length': lambda: make_router('length')}
    out = {}
    for kind in kinds:
        if kind == 'default': out[kind] = build_knn(data, emb, DEFAULT_SETTINGS['k'], work, canon, DEFAULT_SETTINGS); continue
        if kind == 'soft-knn':
            if soft: out[kind] = build_knn(data, emb, soft[0], work, canon, {'temperature': soft[1]})
            continue
        if kind.startswith('knn'): out[kind] = build_knn(data, emb, int(kind[3:]), work, canon); continue
        if kind not in makers: raise SystemExit(f"unknown router {kind!r}; use some of {KINDS}")
        r = makers[kind](); r.canonicalize = canon or False
        out[kind] = r.fit(data)
    return out

def choose_soft(fit, tune, emb, work, canon, kind, costs, budget, Ot):
    "(k, T) of soft-knn: the best tuning-split value (tier accuracy; calibrated quality for outcomes) of a KNN artifact built on `fit`, over `SOFT_GRID`."
    from query_router.knn import KNNRouter
    base = build_knn(fit, emb, max(k for k, _ in SOFT_GRID), work, canon)
    def val(kk, T):
        S = KNNRouter(base.path, emb, k=kk, temperature=T).score_batch(tune.queries)
        if kind == 'tiers': return float((decide(S) == ev.label_index(tune)).mean())
        lam = calibrate_lambda(S, Ot, costs, budget)
        return ev.route_value(decide(S, 'utility', lam, costs), Ot, costs)[0] if lam is not None else -1
    return max(SOFT_GRID, key=lambda p: val(*p))

def outcomes(data):
    return ev.outcome_matrix(data)

def calibrate_lambda(S, O, costs, budget, margin=0.0, tie_break='cheaper'):
    "The utility λ with the best quality within `budget` (mean cost) on calibration scores, for this margin rule."
    best = None
    for lam in ev.param_grid('utility')[::LAMBDA_STRIDE]:
        ch = decide(S, 'utility', float(lam), costs, margin, tie_break)
        q, c = ev.route_value(ch, O, costs)
        if c <= budget + 1e-12 and (best is None or q > best[1] + 1e-12): best = (float(lam), q, c)
    return best[0] if best else None

def flip_stats(i0, iv, O, costs):
    "Flips between the original routes `i0` and the rewritten ones `iv`: share, jumps, quality and cost change."
    f = iv != i0; jump = np.abs(iv - i0)[f]; r = np.arange(len(i0))
    dq = O[r, iv] - O[r, i0]; dc = costs[iv] - costs[i0]
    return {'flip_share': float(f.mean()), 'flips': int(f.sum()), 'mean_jump': float(jump.mean()) if f.any() else 0.0,
            'max_jump': int(jump.max()) if f.any() else 0, 'flips_over_1_apart': int((jump > 1).sum()),
            'delta_quality': float(dq.mean()), 'delta_cost': float(dc.mean()), 'mean_abs_delta_cost': float(np.abs(dc).mean())}

PARTS = ('seen', 'heldout', 'fresh') # variants tuned on / never used to choose anything / a blind file of rewrites (`--fresh`)
PART_TITLE = {'seen': 'seen', 'heldout': 'held-out', 'fresh': 'fresh'}

def part_of(v:dict)->str: return 'fresh' if v.get('fresh') else 'heldout' if v.get('heldout') else 'seen'

def summarise(per_variant:dict, fam_of:dict, part:dict)->dict:
    "Per family means and robustness (1 - mean over families of the flip share), for each part: seen, held-out and fresh variants."
    out = {}
    for want in PARTS:
        fams = {}
        for v, s in per_variant.items():
            if part[v] == want: fams.setdefault(fam_of[v], []).append(s)
        if not fams and want == 'fresh': continue
        fam = {f: {k: (float(np.mean([x[k] for x in xs])) if k not in ('max_jump', 'flips', 'flips_over_1_apart') else int(max(x[k] for x in xs) if k == 'max_jump' else sum(x[k] for x in xs)))
                   for k in xs[0]} for f, xs in fams.items()}
        out[want] = {'robustness': 1 - float(np.mean([f['flip_share'] for f in fam.values()])) if fam else None,
                     'max_jump': max([f['max_jump'] for f in fam.values()] or [0]), 'flips_over_1_apart': sum(f['flips_over_1_apart'] for f in fam.values()),
                     'families': fam}
    return out

def _sample(d, n, seed=0):
    "The first n of a seeded permutation, in file order: a smaller n gives a subset of a larger one."
    if not n or n >= len(d): return d
    return d.subset(sorted(np.random.default_rng(seed).permutation(len(d))[:n]))

def dataset(name, n, seed=0):
    "(fit, tune, full_train, test, whole_test) for a dataset: the test requests to rewrite are a seeded sample of n of the whole test split."
    if name == 'default':
        tr, va, te = split_data(load_default_dataset(), 'grouped', seed=seed)
        return tr, va, tr, _sample(te, n, seed), te
    tr, te = load_llmrouter('train'), load_llmrouter('test')
    fit, tune = split_data(tr, 'random', (0.8, 0.2), seed)[:2]
    return fit, tune, tr, _sample(te, n, seed), te

def run_dataset(name, args, emb, variants, spec, work, log):
    fit, tune, full, test, whole = dataset(name, args.n_default if name == 'default' else args.n, args.seed)
    costs = np.asarray(test.costs(), dtype=float); O = outcomes(test); Ot = outcomes(tune); Ow = outcomes(whole)
    tiers = ev.label_index(test) if test.kind == 'tiers' else None
    ref = ev.best_single(outcomes(full), costs); budget = 0.5 * costs[ref]
    vn_of = lambda f, v: f"{f}/{v['name']}" + (' (fresh)' if v.get('fresh') else '')
    vnames = [vn_of(f, v) for f, v in variants]; fam_of = {vn_of(f, v): f for f, v in variants}; part = {vn_of(f, v): part_of(v) for f, v in variants}
    texts = {vn: [rewrite(q, v) for q in test.queries] for vn, (f, v) in zip(vnames, variants)}
    seen_v = [(vn, v) for vn, (f, v) in zip(vnames, variants) if part[vn] == 'seen']
    tune_rw = _sample(tune, args.n_tune_rewrites, args.seed) if test.kind == 'outcomes' else None # the calibration split's requests, rewritten by the seen variants only: to choose the margin rule
    tune_texts = {vn: [rewrite(q, v) for q in tune_rw.queries] for vn, v in seen_v} if tune_rw is not None else {}
    t0 = time.time()
    todo = list(dict.fromkeys(full.queries + fit.queries + tune.queries + test.queries + [t for ts in list(texts.values()) + list(tune_texts.values()) for t in ts]))
    for i in range(0, len(todo), 400): # in chunks, saved as they go: a killed run keeps what it embedded
        emb.encode(todo[i:i + 400], progress=False); emb.save()
    log(f'{name}: embedded {len(emb._mem)} texts in cache ({time.time() - t0:.0f}s)')
    kinds = [k.strip() for k in args.routers.split(',')]
    configs = {}
    for canon_on in ([True] if args.only_canon else [False, True] if spec else [False]):
        canon = spec if canon_on else None
        t = time.time()
        soft = choose_soft(fit, tune, emb, work, canon, test.kind, costs, budget, Ot) if 'soft-knn' in kinds else None # never on the test split
        main = build_routers(full, emb, work, canon, kinds, soft)
        tuner = build_routers(fit, emb, work, canon, kinds, soft) if test.kind == 'outcomes' else main
        if args.finetuned and name == 'default':
            fe = MergingCache(ev.Embedder(args.finetuned), cache_dir=args.cache)
            main['knn10-finetuned'] = build_knn(full, fe, 10, work, canon)
            from query_router.knn import DEFAULT_SETTINGS
            main['default-finetuned'] = build_knn(full, fe, DEFAULT_SETTINGS['k'], work, canon, DEFAULT_SETTINGS) # the default artifact's settings on the fine-tuned embedder
            fe.encode(list(dict.fromkeys(test.queries + [t for ts in texts.values() for t in ts]))); fe.save()
        log(f'{name}: built {list(main)} (canon={canon_on}, soft-knn k, T = {soft}) in {time.time() - t:.0f}s')
        for rname, r in main.items():
            t = time.time()
            S0 = r.score_batch(test.queries); SV = {vn: r.score_batch(texts[vn]) for vn in vnames}
            Sw = r.score_batch(whole.queries) # tier accuracy and calibrated quality on the whole test split too (the 200 rewritten are a noisy sample)
            tr_ = tuner.get(rname) if test.kind == 'outcomes' else None
            Sv_tune = tr_.score_batch(tune.queries) if tr_ is not None else None
            cfg = {'router': rname, 'canonicalize': canon_on, 'margins': {},
                   'settings': {k: v for k, v in ((getattr(r, 'manifest', None) or {}).get('settings') or {}).items() if k in ('k', 'temperature', 'policy', 'param')}}
            if rname == 'soft-knn': cfg['smooth'] = {'k': soft[0], 'temperature': soft[1], 'chosen_on': 'tuning split'}
            rules = [(f'{m:g}' + ('' if m == 0 else f'/{tb}'), 'argmax', None, m, tb) for m in args.margins for tb in (('cheaper', 'capable') if m > 0 else ('cheaper',))]
            if tiers is not None:
                rules += [(f'ordinal {lv:g}' if lv != 0.5 else 'ordinal', 'ordinal', lv, 0.0, 'cheaper') for lv in args.ordinal_levels]
                rules += [(f'smooth {a:g}', 'smooth', a, 0.0, 'cheaper') for a in args.smooth]
            if r.default_policy != 'argmax' or r.default_param is not None: rules.append(('default', r.default_policy, r.default_param, 0.0, 'cheaper')) # the artifact's own decision
            for key, pol, par, m, tb in rules:
                i0 = decide(S0, pol, par, costs, m, tb)
                res = {'policy': pol, 'param': par, 'quality': ev.route_value(i0, O, costs)[0], 'cost_rel': ev.route_value(i0, O, costs)[1] / costs[ref]}
                if tiers is not None: res['accuracy'] = float((i0 == tiers).mean()); res['accuracy_whole_test'] = float((decide(Sw, pol, par, costs, m, tb) == ev.label_index(whole)).mean())
                pv = {vn: flip_stats(i0, decide(SV[vn], pol, par, costs, m, tb), O, costs) for vn in vnames}
                res['argmax'] = summarise(pv, fam_of, part)
                if Sv_tune is not None and pol == 'argmax': # the calibrated policy: λ for half the best single's cost, on the tuning split
                    lam = calibrate_lambda(Sv_tune, Ot, costs, budget, m, tb)
                    if lam is not None:
                        c0 = decide(S0, 'utility', lam, costs, m, tb)
                        q, c = ev.route_value(c0, O, costs)
                        res.update({'cal_lambda': lam, 'cal_quality': q, 'cal_cost_rel': c / costs[ref]})
                        qw, cw = ev.route_value(decide(Sw, 'utility', lam, costs, m, tb), Ow, costs)
                        res.update({'cal_quality_whole_test': qw, 'cal_cost_rel_whole_test': cw / costs[ref]})
                        res['calibrated'] = summarise({vn: flip_stats(c0, decide(SV[vn], 'utility', lam, costs, m, tb), O, costs) for vn in vnames}, fam_of, part)
                        # the same rule on the tuning side: quality on the calibration split, robustness of its rewritten requests
                        ct = decide(Sv_tune, 'utility', lam, costs, m, tb); St0 = tr_.score_batch(tune_rw.queries)
                        i_t = decide(St0, 'utility', lam, costs, m, tb); Ot_rw = outcomes(tune_rw)
                        flips = {vn: flip_stats(i_t, decide(tr_.score_batch(ts), 'utility', lam, costs, m, tb), Ot_rw, costs) for vn, ts in tune_texts.items()}
                        res['tune'] = {'cal_quality': ev.route_value(ct, Ot, costs)[0], 'robustness_seen': summarise(flips, fam_of, part)['seen']['robustness']}
                cfg['margins'][key] = res
            if Sv_tune is not None: cfg['chosen_margin'] = choose_margin(cfg['margins'])
            if args.tag: cfg['tag'] = args.tag
            configs[f"{rname}{' +canon' if canon_on else ''}{args.tag}"] = cfg
            b = cfg['margins'].get('default', cfg['margins']['0'])
            log(f"  {rname:16} canon={canon_on!s:5} robustness {b['argmax']['seen']['robustness']:.3f} (held-out {b['argmax']['heldout']['robustness']:.3f}"
                + (f", fresh {b['argmax']['fresh']['robustness']:.3f}" if 'fresh' in b['argmax'] else '') + f") jumps>1 {b['argmax']['seen']['flips_over_1_apart']}/{b['argmax']['heldout']['flips_over_1_apart']} "
                f"{'acc %.3f' % b['accuracy'] if 'accuracy' in b else 'q %.3f cal_q %s' % (b['quality'], round(b.get('cal_quality', float('nan')), 4))}"
                + (f" chosen margin {cfg['chosen_margin']['rule']}" if cfg.get('chosen_margin') else '') + f" ({time.time() - t:.0f}s)")
    emb.save()
    return {'n_test': len(test), 'n_whole_test': len(whole), 'n_fit': len(full), 'tune': {'n': len(tune), 'what': 'validation split' if name == 'default' else 'a random fifth of train.jsonl (routers for tuning fitted on the other four fifths)',
                                                           **({'n_rewritten': len(tune_rw)} if tune_rw is not None else {})},
            'targets': [{'name': t, 'cost': float(c)} for t, c in zip(test.targets, costs)], 'reference': test.targets[ref], 'budget_for_calibration': float(budget),
            'kind': test.kind, 'configs': configs}

QUALITY_SLACK = 0.005 # the margin rule may cost at most this much calibrated quality (on the calibration split)

def choose_margin(margins:dict)->dict|None:
    "The margin and tie-break chosen on the calibration split only: the best seen-variant robustness of the calibration split's rewritten requests, among the rules whose calibrated quality there is within `QUALITY_SLACK` of the no-margin router's."
    tuned = {k: v['tune'] for k, v in margins.items() if 'tune' in v}
    if '0' not in tuned: return None
    ok = {k: t for k, t in tuned.items() if t['cal_quality'] >= tuned['0']['cal_quality'] - QUALITY_SLACK - 1e-12}
    key = max(ok, key=lambda k: (round(ok[k]['robustness_seen'], 6), k == '0'))
    v = margins[key]
    return {'rule': key, 'how': f'calibration split: max robustness (seen variants) s.t. calibrated quality >= no-margin - {QUALITY_SLACK}', 'tune': tuned[key], 'tune_no_margin': tuned['0'],
            'test': {'cal_quality': v['cal_quality'], 'cal_quality_no_margin': margins['0']['cal_quality'],
                     **({'cal_quality_whole_test': v['cal_quality_whole_test'], 'cal_quality_whole_test_no_margin': margins['0']['cal_quality_whole_test']} if 'cal_quality_whole_test' in v else {}),
                     **{f'robustness_{p}': v['calibrated'][p]['robustness'] for p in PARTS if p in v['calibrated']}}}

def pick(res:dict, name:str)->dict:
    "Per configuration and rule: robustness on each part, the largest jump, accuracy or quality."
    out = {}
    for key, c in res['configs'].items():
        out[key] = {m: {**{('robustness' if p == 'seen' else f'robustness_{p}'): v['argmax'][p]['robustness'] for p in PARTS if p in v['argmax']},
                        **{f'flips_over_1_apart_{p}': v['argmax'][p]['flips_over_1_apart'] for p in PARTS if p in v['argmax']},
                        'max_jump': max(v['argmax'][p]['max_jump'] for p in PARTS if p in v['argmax']), **{k: v[k] for k in ('accuracy', 'accuracy_whole_test', 'quality', 'cal_quality', 'cost_rel', 'cal_cost_rel', 'cal_quality_whole_test', 'cal_cost_rel_whole_test') if k in v},
                        **({f'robustness_calibrated_{p}': v['calibrated'][p]['robustness'] for p in PARTS if p in v['calibrated']} if 'calibrated' in v else {})}
                    for m, v in c['margins'].items()}
        if c.get('chosen_margin'): out[key]['chosen_margin'] = c['chosen_margin']
    return out

def headline(out:dict)->dict:
    "The issue's bars: the default artifact on the default data (its own decision), and each router on LLMRouter with the margin rule chosen on the calibration split."
    h = {}
    d = out['datasets'].get('default')
    if d:
        for key, c in d['configs'].items():
            if c['router'] != 'default' or not c['canonicalize']: continue
            v = c['margins'].get('default', c['margins']['0'])
            h['default_router'] = {'config': key, 'settings': c.get('settings'), 'accuracy': v['accuracy'], 'accuracy_whole_test': v.get('accuracy_whole_test'),
                                   **{f'robustness_{p}': v['argmax'][p]['robustness'] for p in PARTS if p in v['argmax']},
                                   **{f'flips_over_1_apart_{p}': v['argmax'][p]['flips_over_1_apart'] for p in PARTS if p in v['argmax']}}
        for key, c in d['configs'].items():
            if c['router'] == 'knn30' and c['canonicalize']:
                v = c['margins']['0']
                h['knn30_before'] = {'accuracy': v['accuracy'], 'accuracy_whole_test': v.get('accuracy_whole_test'), **{f'robustness_{p}': v['argmax'][p]['robustness'] for p in PARTS if p in v['argmax']},
                                     **{f'flips_over_1_apart_{p}': v['argmax'][p]['flips_over_1_apart'] for p in PARTS if p in v['argmax']}}
    l = out['datasets'].get('llmrouter')
    if l:
        rows = {key: c['chosen_margin'] for key, c in l['configs'].items() if c.get('chosen_margin')}
        h['llmrouter'] = rows
        q = lambda r: r['test'].get('cal_quality_whole_test_no_margin', r['test']['cal_quality_no_margin']) # the whole test split where measured (the 200 rewritten are a noisy sample)
        canon = {k: v for k, v in rows.items() if l['configs'][k]['canonicalize']} or rows
        if canon:
            best = max(canon, key=lambda k: q(canon[k]))
            h['llmrouter_best'] = {'config': best, 'chosen_by': 'calibrated quality, no margin, whole test split where measured', **canon[best]}
        raw = {k: v for k, v in rows.items() if not l['configs'][k]['canonicalize']}
        if raw and canon: # the bar: quality no worse than before canonicalisation
            before = max(raw, key=lambda k: q(raw[k]))
            h['llmrouter_before'] = {'config': before, **raw[before]}
    return h

SHOWN = ('0', '0.1/cheaper', '0.1/capable', 'ordinal', 'smooth 0.5', 'default')

def markdown(out:dict)->str:
    "The headline tables: robustness (seen / held-out / fresh variants), worst family, jumps and quality, per router and remedy; then per family."
    lines = []
    for name, res in out['datasets'].items():
        q = 'accuracy' if res['kind'] == 'tiers' else 'cal_quality'
        parts = [p for p in PARTS if any(p in v['argmax'] for c in res['configs'].values() for v in c['margins'].values())]
        lines += [f"### {name} ({res['n_test']} test requests rewritten, routers fitted on {res['n_fit']}; {len(out['meta']['variants'])} rewrite variants)", '',
                  '| router | remedies | ' + ' | '.join(f'robustness, {PART_TITLE[p]}' for p in parts) + f" | worst family, seen (flips) | flips > 1 target apart ({' / '.join(PART_TITLE[p] for p in parts)}) | max jump | {q if q != 'accuracy' else 'accuracy, rewritten sample (whole test split)'}{' (whole test split)' if q == 'cal_quality' else ''} |",
                  '|---|---|' + '---:|' * len(parts) + '---|---:|---:|---:|']
        for key, c in res['configs'].items():
            for m, v in c['margins'].items():
                if m not in SHOWN: continue
                a = v['argmax']['seen']
                worst = max(a['families'].items(), key=lambda kv: kv[1]['flip_share'])
                dec = '' if m == '0' else (f"own decision ({v['policy']} {v['param']})" if m == 'default' else 'ordinal decision' if m.startswith('ordinal') else m if m.startswith('smooth') else f"margin {m}")
                rem = ' + '.join(x for x in [('canonicalise' + (c.get('tag') or '') if c['canonicalize'] else ''), dec] if x) or '–'
                rb = lambda p: '–' if p not in v['argmax'] or v['argmax'][p]['robustness'] is None else f"{v['argmax'][p]['robustness']:.3f}"
                lines.append(f"| {c['router']} | {rem} | " + ' | '.join(rb(p) for p in parts) + f" | {worst[0]} ({worst[1]['flip_share']:.1%}) | "
                             + ' / '.join(str(v['argmax'][p]['flips_over_1_apart']) if p in v['argmax'] else '–' for p in parts)
                             + f" | {max(v['argmax'][p]['max_jump'] for p in parts if p in v['argmax'])} | {v.get(q, float('nan')):.3f}"
                             + (f" ({v['accuracy_whole_test']:.3f})" if 'accuracy_whole_test' in v else f" ({v['cal_quality_whole_test']:.3f})" if 'cal_quality_whole_test' in v else '') + ' |')
        lines.append('')
        chosen = [(k, c) for k, c in res['configs'].items() if c.get('chosen_margin')]
        if chosen:
            lines += [f'Margin rule chosen on the calibration split ({name}: max seen robustness of the rewritten calibration requests, calibrated quality within {QUALITY_SLACK} of no margin there), and its test result:', '',
                      '| router | rule | calibration: quality (no margin) | calibration: robustness | test: cal_quality (no margin) | whole test split: cal_quality (no margin) | test: robustness ' + ' / '.join(PART_TITLE[p] for p in parts) + ' |',
                      '|---|---|---:|---:|---:|---:|---:|']
            for k, c in chosen:
                ch = c['chosen_margin']; t = ch['test']
                lines.append(f"| {k} | {ch['rule']} | {ch['tune']['cal_quality']:.4f} ({ch['tune_no_margin']['cal_quality']:.4f}) | {ch['tune']['robustness_seen']:.3f} | "
                             f"{t['cal_quality']:.4f} ({t['cal_quality_no_margin']:.4f}) | "
                             + (f"{t['cal_quality_whole_test']:.4f} ({t['cal_quality_whole_test_no_margin']:.4f}) | " if 'cal_quality_whole_test' in t else '– | ') + ' / '.join(f"{t[f'robustness_{p}']:.3f}" if f'robustness_{p}' in t else '–' for p in parts) + ' |')
            lines.append('')
        fams = list(dict.fromkeys(f['family'] for f in out['meta']['variants']))
        lines += [f"Flip share per family, {' / '.join(PART_TITLE[p] for p in parts)} variants ({name}):", '',
                  '| router | remedies | ' + ' | '.join(fams) + ' |', '|---|---|' + '---:|' * len(fams)]
        for key, c in res['configs'].items():
            for m in ('0', 'default'):
                v = c['margins'].get(m)
                if v is None: continue
                cell = lambda f: '/'.join('–' if p not in v['argmax'] or f not in v['argmax'][p]['families'] else f"{v['argmax'][p]['families'][f]['flip_share']:.1%}" for p in parts)
                rem = ' + '.join(x for x in [('canonicalise' if c['canonicalize'] else ''), (f"{v['policy']} {v['param']}" if m == 'default' else '')] if x) or '–'
                lines.append(f"| {c['router']} | {rem} | " + ' | '.join(cell(f) for f in fams) + ' |')
        lines.append('')
    return '\n'.join(lines)

def merge(paths:list, out:str):
    "One results file from several runs (e.g. the default data and LLMRouter run apart on a busy machine): datasets and configurations joined, each run's meta kept."
    res = {'meta': None, 'datasets': {}, 'runs': []}
    for p in paths:
        d = json.loads(Path(p).read_text())
        res['meta'] = res['meta'] or dict(d['meta'])
        res['runs'].append({k: d['meta'].get(k) for k in ('command', 'n', 'margins', 'lambda_stride', 'loadavg_start', 'loadavg_end', 'wall_s', 'canonicalize')} | {'datasets': list(d['datasets'])})
        for name, r in d['datasets'].items():
            if name not in res['datasets']: res['datasets'][name] = r
            else:
                for k, c in r['configs'].items(): c['canonicalize_spec'] = d['meta'].get('canonicalize'); res['datasets'][name]['configs'].setdefault(k, c)
    for k in ('command', 'loadavg_start', 'loadavg_end', 'wall_s'): res['meta'].pop(k, None)
    res['headline'] = headline(res)
    p = Path(out); tmp = p.with_name(f'.{p.name}.tmp'); tmp.write_text(json.dumps(res, indent=1)); os.replace(tmp, p)
    p.with_suffix('.md').write_text(markdown(res))
    return res

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', choices=['default', 'llmrouter'], help='one dataset')
    ap.add_argument('--n', type=int, default=200, help='test requests to rewrite (LLMRouter; the issue used 400: --n 400 on a quiet machine)')
    ap.add_argument('--n-default', type=int, default=200, help='test requests to rewrite (default data; its test split has 456)')
    ap.add_argument('--per-family', type=int, default=1, help='seen variants per family (greetings and politeness: one more)')
    ap.add_argument('--heldout-per-family', type=int, default=1)
    ap.add_argument('--heldout-families', default=HELDOUT_FAMILIES, help="families with held-out variants to run ('all' for every family)")
    ap.add_argument('--all-variants', action='store_true', help='every variant in rewrites.json')
    ap.add_argument('--routers', default=KINDS)
    ap.add_argument('--ordinal-levels', default='0.5', help='tier data: cumulative levels of the ordinal decision to measure (0.5: the median tier)')
    ap.add_argument('--smooth', default='0.5', help='tier data: neighbour weights of the smooth decision to measure')
    ap.add_argument('--fresh', help='an extra rewrites file (the format of query_router/rewrites.json) whose every variant is reported apart, as "fresh" (blind the first time it is run)')
    ap.add_argument('--n-tune-rewrites', type=int, default=200, help='LLMRouter: calibration-split requests rewritten (seen variants) to choose the margin rule')
    ap.add_argument('--no-canon', action='store_true')
    ap.add_argument('--canon-steps', help='canonicalisation steps (default: canonical.json\'s default_steps), e.g. without end_punctuation')
    ap.add_argument('--only-canon', action='store_true', help='skip the routers without canonicalisation')
    ap.add_argument('--margins', default=','.join(f'{m:g}' for m in MARGINS), help='margin-rule bands to measure')
    ap.add_argument('--lambda-stride', type=int, default=1, help='use every n-th λ of the calibration grid (faster)')
    ap.add_argument('--tag', default='', help='suffix for the configuration names (to merge runs)')
    ap.add_argument('--finetuned', help='an embedder fine-tuned (06_finetune, --rewrites) on the default data\'s training split')
    ap.add_argument('--cache', default=str(Path(os.environ.get('QUERY_ROUTER_CACHE', Path.home()/'.cache'/'query_router'))/'robustness'))
    ap.add_argument('--out', default=str(RESULTS/'robustness.json'))
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--merge', nargs='+', help='join these result files into --out instead of running')
    args = ap.parse_args()
    if args.merge: return merge(args.merge, args.out)
    args.margins = [float(m) for m in args.margins.split(',')]; args.ordinal_levels = [float(x) for x in args.ordinal_levels.split(',')]; args.smooth = [float(x) for x in args.smooth.split(',') if x]
    global LAMBDA_STRIDE; LAMBDA_STRIDE = args.lambda_stride
    t0, load0 = time.time(), os.getloadavg()
    log = lambda s: print(f'[{time.time() - t0:6.0f}s] {s}', flush=True)
    fams = load_rewrites()
    if args.all_variants: variants = select_variants(fams, None)
    else: variants = default_variants(fams, args.per_family, args.heldout_per_family, args.heldout_families)
    if args.fresh: variants += [(f, {**v, 'fresh': True}) for f, v in select_variants(load_rewrites(args.fresh), None)] # every variant of the blind file
    spec = None if args.no_canon else load_canon_spec(steps=args.canon_steps.split(',') if args.canon_steps else None)
    emb = MergingCache(cache_dir=args.cache)
    emb.check_uncased()
    names = [args.only] if args.only else ['default'] + (['llmrouter'] if has_shared_data() else [])
    out = {'meta': {'what': 'share of routes that flip when a test request is rewritten harmlessly; robustness = 1 - mean over families of that share (seen variants; held-out and fresh (blind, --fresh) variants separately)',
                    'variants': [{'family': f, 'name': v['name'], 'heldout': bool(v.get('heldout')), 'part': part_of(v)} for f, v in variants], 'fresh_file': args.fresh,
                    'canonicalize': spec, 'margins': args.margins, 'lambda_stride': args.lambda_stride, 'n': args.n, 'seed': args.seed, 'embedder': str(emb.name),
                    'command': 'python bench/robustness.py ' + ' '.join(sys.argv[1:]), 'embedding_shared_up_to_case_and_whitespace': emb.same_tokens, 'host': platform.node(), 'cpu_count': os.cpu_count(), 'loadavg_start': load0},
           'datasets': {}}
    if 'llmrouter' not in names: out['meta']['skipped'] = 'llmrouter: ../shared/data/llmrouter not found'
    p = Path(args.out)
    if p.exists(): # another dataset's results from an earlier invocation stay
        try:
            old = json.loads(p.read_text())
            if old.get('meta', {}).get('variants') == out['meta']['variants']:
                kept = {k: v for k, v in old.get('datasets', {}).items() if k not in names}
                out['datasets'].update(kept)
                if kept: out['meta']['earlier_runs'] = old['meta'].get('earlier_runs', []) + [{k: old['meta'].get(k) for k in ('command', 'loadavg_start', 'loadavg_end', 'wall_s')} | {'datasets': list(kept)}]
        except (json.JSONDecodeError, AttributeError): pass
    with tempfile.TemporaryDirectory(prefix='qr-robust-') as work:
        for name in names:
            res = run_dataset(name, args, emb, variants, spec, work, log)
            res['summary'] = pick(res, name)
            out['datasets'][name] = res
            out['headline'] = headline(out)
            out['meta'].update(loadavg_end=os.getloadavg(), wall_s=round(time.time() - t0, 1))
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f'.{p.name}.tmp'); tmp.write_text(json.dumps(out, indent=1)); os.replace(tmp, p)
            p.with_suffix('.md').write_text(markdown(out))
            log(f'wrote {p}')

if __name__ == '__main__': main()
