"""How much canonicalisation changes text it should leave alone, and how much of a typo it undoes (issue 19).

Measures, for the `spelling` step of `query_router/canonical.json` (and variants of its cut-offs) and for the whole
default canonicalisation:
- the share of unmodified requests it changes (the default data's training split, and ../shared/data/llmrouter/train.jsonl
  when present), with examples of what it changes;
- the share of the benchmark's *seen* typo variants (`rewrites.json`, typos family, not held out) restored exactly;
- time per request (p50/p99), and the dictionary's load time and memory (in a fresh process).

Writes bench/results/canonical_spelling.json.  Usage: python bench/canonical_spelling.py [--n 2000]
"""
import argparse, json, os, re, subprocess, sys, time, difflib
from pathlib import Path
import numpy as np

from query_router.canonical import load_canon_spec, Canonicalizer, make_step, load_rewrites, select_variants, rewrite, package_file
from query_router.core import has_shared_data
from query_router.data import load_default_dataset, load_llmrouter, split_data

RESULTS = Path(__file__).parent/'results'

LOAD = r'''
import json, os, time, sys
from query_router.canonical import make_step, package_file
def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
p = json.loads(package_file('canonical.json').read_text())['steps']['spelling']
f = make_step('spelling', p); r0 = rss(); t = time.perf_counter()
f('Wirte a fucntion')
print(json.dumps({'load_s': round(time.perf_counter() - t, 3), 'rss_mb': round(rss() - r0, 1)}))
'''

def word_changes(a:str, b:str)->list:
    "The words that differ between a text and its canonical form."
    ta, tb = re.findall(r'\S+', a), re.findall(r'\S+', b)
    sm = difflib.SequenceMatcher(None, ta, tb, autojunk=False)
    return [(' '.join(ta[i1:i2]), ' '.join(tb[j1:j2])) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != 'equal']

def changed(f, texts, same=lambda t: t):
    return [(t, f(t)) for t in texts if same(f(t)) != same(t)]

def examples(pairs, n=12, width=90):
    step = max(1, len(pairs) // n)
    out = []
    for a, b in pairs[::step][:n]:
        d = word_changes(a, b)
        out.append([[x[:width], y[:width]] for x, y in d[:3]])
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=0, help='at most this many texts per dataset (0: all)')
    ap.add_argument('--out', default=str(RESULTS/'canonical_spelling.json'))
    a = ap.parse_args()
    t0 = time.time()
    data = {'default (train split)': split_data(load_default_dataset(), 'grouped', seed=0)[0].frame['query'].tolist()}
    if has_shared_data(): data['llmrouter (train.jsonl)'] = load_llmrouter('train').frame['query'].tolist()
    if a.n: data = {k: v[:a.n] for k, v in data.items()}
    base = json.loads(package_file('canonical.json').read_text())['steps']['spelling']
    configs = {
        'shipped (edit distance 1)': base,
        'edit distance 2 for words of 8+ letters': {**base, 'long_word': 8},
        'without the embedder vocabulary': {k: v for k, v in base.items() if k != 'protect_vocab'},
        'without the protect list': {**base, 'protect': []},
        'without the unknown-word share rule': {**base, 'max_unknown': 10**6},
        'any suggestion, however rare (min_count 0)': {**base, 'min_count': 0},
        'case-sensitive (ALL-CAPS, inner capitals, names mid-sentence left alone)': {**base, 'case_sensitive': True},
    }
    typo_vs = select_variants(load_rewrites(), False, only=['typos'])
    ws = Canonicalizer(load_canon_spec(steps=['whitespace']))
    canon = Canonicalizer(load_canon_spec())
    res = {'loadavg_start': os.getloadavg(), 'spelling': {}, 'canonicalize': {}}
    default_texts = data['default (train split)']
    for name, p in configs.items():
        f = make_step('spelling', p)
        r = {'changes_unmodified': {}, 'typos_restored': {}}
        for dn, texts in data.items():
            ch = changed(f, texts)
            r['changes_unmodified'][dn] = round(len(ch) / len(texts), 4)
            if name.startswith('shipped'): r.setdefault('examples', {})[dn] = examples(ch)
        for _, v in typo_vs:
            ty = [rewrite(t, v) for t in default_texts]
            hit = [t != x for t, x in zip(ty, default_texts)]
            r['typos_restored'][v['name']] = round(sum(f(t) == x for t, x, h in zip(ty, default_texts, hit) if h) / max(1, sum(hit)), 4)
        res['spelling'][name] = r
        print(f'{time.time() - t0:6.0f}s {name}: {r["changes_unmodified"]} restored {r["typos_restored"]}', flush=True)
    # the whole default canonicalisation: what it changes in unmodified text, by step (whitespace aside)
    for dn, texts in data.items():
        ch = changed(canon, texts, ws)
        by_step = {}
        for s in canon.names:
            if s == 'whitespace': continue
            c1 = Canonicalizer(load_canon_spec(steps=[s]))
            by_step[s] = round(len(changed(c1, texts, ws)) / len(texts), 4)
        res['canonicalize'][dn] = {'changes_unmodified': round(len(ch) / len(texts), 4), 'by_step': by_step, 'examples': examples(ch, 20)}
        print(f'{time.time() - t0:6.0f}s canonicalize {dn}: {len(ch) / len(texts):.4f} {by_step}', flush=True)
    # seen typo variants: canonical form of the rewrite equals the canonical form of the original
    res['canonicalize']['typos_same_canonical_form'] = {v['name']: round(float(np.mean([canon(rewrite(t, v)) == canon(t) for t in default_texts])), 4) for _, v in typo_vs}
    # time per request, warm (the dictionary loaded, the lookup caches cold for these texts: llmrouter text, not seen above when absent)
    texts = [rewrite(t, typo_vs[0][1]) for t in default_texts[:1000]]
    f = make_step('spelling', base); f('warm up')
    for name, fn in (('spelling', f), ('canonicalize', canon)):
        ts = []
        for t in texts:
            s = time.perf_counter(); fn(t); ts.append(time.perf_counter() - s)
        res.setdefault('time_per_request_ms', {})[name] = {'p50': round(1e3 * float(np.percentile(ts, 50)), 3), 'p99': round(1e3 * float(np.percentile(ts, 99)), 3), 'n': len(ts)}
    out = subprocess.run([sys.executable, '-c', LOAD], capture_output=True, text=True, env={**os.environ})
    res['dictionary_load'] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {'error': out.stderr[-500:]}
    res['dictionary'] = base['dictionary']; res['loadavg_end'] = os.getloadavg(); res['seconds'] = round(time.time() - t0)
    res['note'] = ('changes_unmodified: share of unmodified requests whose text the step changes (for canonicalize: other than whitespace); '
                   'typos_restored: share of the seen typo variants (that changed the text) that the spelling step turns back into the original exactly.')
    tmp = Path(a.out).with_suffix('.tmp'); tmp.write_text(json.dumps(res, indent=1, ensure_ascii=False)); tmp.replace(a.out)
    print(json.dumps({k: res[k] for k in ('time_per_request_ms', 'dictionary_load')}))

if __name__ == '__main__': main()
