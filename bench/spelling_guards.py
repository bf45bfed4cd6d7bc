"""The spelling step's version-3 guards, alone and together: how many real prompts nobody rewrote it changes, and how many typos it restores.

A guard that protects names and terms also protects some typos; this is the trade-off behind `known_wordfreq`'s 2.2.

    python bench/spelling_guards.py   ->  bench/results/spelling_guards.json
"""
import json, os, random, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from query_router.canonical import load_canon_spec, make_step, typos
from query_router.core import has_shared_data, shared_data_dir
from query_router.data import load_default_dataset

def main():
    t0 = time.time()
    base = {k: v for k, v in dict(load_canon_spec()['steps'])['spelling'].items() if k not in ('known_wordfreq', 'skip_digit_tokens')}
    default = list(load_default_dataset().queries); llm = {}
    if has_shared_data(): llm = {f: [json.loads(l)['prompt'] for l in (shared_data_dir()/f).read_text().splitlines()] for f in ('train.jsonl', 'test.jsonl')}
    real = default + sum(llm.values(), [])
    rng = random.Random(0)
    sample = rng.sample(default, 300) + (rng.sample(llm['test.jsonl'], 200) if llm else [])
    configs = {'version 2 (no guards)': base, 'skip_digit_tokens': {**base, 'skip_digit_tokens': True}}
    for z in (2.0, 2.2, 2.5): configs[f'skip_digit_tokens + known_wordfreq {z}'] = {**base, 'skip_digit_tokens': True, 'known_wordfreq': {'lang': 'en', 'min_zipf': z}}
    out = {'meta': {'command': ' '.join(sys.argv), 'n_real': len(real), 'n_typo_sample': len(sample), 'loadavg': os.getloadavg()}, 'configs': {}}
    for name, p in configs.items():
        run = make_step('spelling', p)
        restored = {}
        for n in (1, 2, 3):
            pairs = [(t, typos(t, n=n, seed=0)) for t in sample]
            pairs = [(t, tt) for t, tt in pairs if tt != t]
            restored[f'{n}_edits'] = round(sum(run(tt) == run(t) for t, tt in pairs) / len(pairs), 3) # the typo'd text canonicalises like the original
        out['configs'][name] = {'real_texts_changed': sum(run(t) != t for t in real), 'typos_restored': restored}
        print(f"{name:42s} real texts changed {out['configs'][name]['real_texts_changed']:4d}  typos restored {restored}", flush=True)
    out['meta']['wall_s'] = round(time.time() - t0, 1)
    p = ROOT/'bench'/'results'/'spelling_guards.json'; tmp = p.with_name(f'.{p.name}.tmp'); tmp.write_text(json.dumps(out, indent=1)); os.replace(tmp, p)
    print('wrote', p)

if __name__ == '__main__': main()
