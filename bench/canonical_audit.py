"""What canonicalisation does to real prompts that were never rewritten: per step, how many texts it changes, and what it removed or replaced.

Rules are written from how people write; this reads them against real text, where a change is usually a mistake
(a question dropped, an acronym "corrected"). Run it after changing `query_router/canonical.json` and read the examples.

    python bench/canonical_audit.py [--spec FILE] [--examples 40]   ->  bench/results/canonical_audit.json
"""
import argparse, collections, difflib, json, os, platform, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from query_router.canonical import Canonicalizer, load_canon_spec
from query_router.core import has_shared_data, shared_data_dir
from query_router.data import load_default_dataset

def texts():
    "(source, text) for every prompt: the default dataset, and LLMRouter's train and test where ../shared has them."
    out = [('default', q) for q in load_default_dataset().queries]
    if has_shared_data():
        for f in ('train.jsonl', 'test.jsonl'):
            out += [(f"llmrouter:{json.loads(l)['task']}", json.loads(l)['prompt']) for l in (shared_data_dir()/f).read_text().splitlines()]
    return out

def edits(a:str, b:str)->list:
    "What changed between `a` and `b`: (removed, inserted) pieces."
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(a[i1:i2], b[j1:j2]) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != 'equal']

def audit(c:Canonicalizer, items, n_examples=40)->dict:
    "Apply each step in turn (as `Canonicalizer.one` does, one pass) and count the texts each step changes, per source."
    counts, examples = collections.Counter(), collections.defaultdict(list)
    for src, t in items:
        for name, run in c.steps:
            t2 = run(t)
            if t2 != t and len(t2.strip()) >= min(c.min_chars, len(t.strip())):
                counts[(name, src.split(':')[0])] += 1
                if len(examples[name]) < n_examples and name not in ('end_punctuation', 'whitespace'): examples[name].append({'source': src, 'edits': edits(t, t2)[:6]})
                t = t2
    n = collections.Counter(src.split(':')[0] for src, _ in items)
    return {'n_texts': dict(n), 'changed': {f'{s}/{src}': {'texts': k, 'share': round(k / n[src], 4)} for (s, src), k in sorted(counts.items())}, 'examples': dict(examples)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--spec', help='a canonical.json-style file (default: the package\'s)')
    ap.add_argument('--examples', type=int, default=40, help='examples kept per step')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'canonical_audit.json'))
    a = ap.parse_args()
    spec = load_canon_spec(a.spec); t = time.time()
    res = {'meta': {'command': ' '.join(sys.argv), 'spec_version': spec['version'], 'steps': [s for s, _ in spec['steps']], 'python': platform.python_version(), 'loadavg': os.getloadavg()},
           **audit(Canonicalizer(spec), texts(), a.examples)}
    res['meta']['wall_s'] = round(time.time() - t, 1)
    p = Path(a.out); p.parent.mkdir(parents=True, exist_ok=True); tmp = p.with_name(f'.{p.name}.tmp'); tmp.write_text(json.dumps(res, indent=1, ensure_ascii=False)); os.replace(tmp, p)
    for k, v in res['changed'].items(): print(f"{k:32s} {v['texts']:5d} ({v['share']:.1%})")
    print('wrote', p)

if __name__ == '__main__': main()
