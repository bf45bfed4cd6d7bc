"""Fine-tuning benchmark: KNN routing (k=10, similarity-weighted vote, argmax) with the base embedder and with the
fine-tuned one, on held-out queries; the loss curve; the wall time. Writes bench/results/finetune.json (and a PNG per run).

    python bench/finetune_bench.py                       # both runs, full data (slow on 2 cores)
    python bench/finetune_bench.py --only default        # the embedded default dataset only
    python bench/finetune_bench.py --only llmrouter --llmrouter_max_train 1200 --max_seq_length 128

Runs (each updates its own key of the JSON, so they can run separately):
- default: the embedded default dataset, grouped split (whole topics): train on the train part, evaluate on the
  test part with the train part as the KNN index. Labels: the tiers.
- llmrouter: ../shared/data/llmrouter: train on train.jsonl (optionally a task-stratified sample of it), evaluate on
  test.jsonl with the training queries as the index. Labels: derived cheapest-good-enough model (score >= 0.5);
  reported: accuracy against those labels, mean quality (score of the chosen model) and mean cost (USD/Mtok) of
  the argmax routes, next to the single models and the oracle.
The fine-tuned default model is also built into a real artifact (`build_artifacts(model=FOLDER)`) and routed with
`KNNRouter` loading the model by the name in its manifest, to check the numbers carry over to the router.
"""
import argparse, json, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

def stratified(data, n, seed=0):
    "A sample of `n` rows of `data`, the same share of each group (task)."
    if n is None or n >= len(data): return data
    g = np.array(data.groups); rng = np.random.default_rng(seed); keep = []
    for k in sorted(set(g)):
        idx = np.flatnonzero(g == k)
        keep += rng.choice(idx, max(2, round(n * len(idx) / len(data))), replace=False).tolist()
    return data.subset(sorted(keep))

def summary(m):
    ev, lc = m['evaluations'], m['loss_curve']
    third = max(1, len(lc) // 3)
    return {'before': ev[0] if ev else None, 'after': ev[-1] if ev else None, 'per_epoch': ev,
            'loss_first': lc[0]['loss'], 'loss_last': lc[-1]['loss'],
            'loss_mean_first_third': float(np.mean([h['loss'] for h in lc[:third]])),
            'loss_mean_last_third': float(np.mean([h['loss'] for h in lc[-third:]])),
            'loss_curve': [(h['step'], round(h['loss'], 5)) for h in lc],
            'train_s': m['train_s'], 'wall_s': m['wall_s'], 'cpu_s': m.get('cpu_s'), 'steps': m['steps'],
            'settings': {k: m[k] for k in ('base_model', 'labels', 'n_classes', 'loss', 'distance', 'margin', 'epochs', 'batch_size', 'lr',
                                           'warmup', 'sampler', 'k', 'seed', 'max_seq_length', 'n_train', 'n_eval')}}

def reference_routes(test):
    "Quality and cost of always choosing one model, and of the oracle (cheapest model with the best score)."
    from query_router.router import decide
    s, c = test.scores(), test.costs()
    out = {t: {'quality': float(s[:, j].mean()), 'cost': float(c[j])} for j, t in enumerate(test.targets)}
    o = decide(s, 'argmax')
    out['oracle'] = {'quality': float(s[np.arange(len(s)), o].mean()), 'cost': float(c[o].mean())}
    return out

def held_out_triplets(model_dir, test, labels_mode, margin):
    "Triplet statistics of the held-out queries' embeddings, base model vs fine-tuned: what the logged loss hides."
    from query_router.embed import Embedder
    from query_router.finetune import training_labels, triplet_stats, DEFAULT_MARGIN
    ys = training_labels(test, labels_mode)
    m = json.loads((Path(model_dir)/'finetune_metrics.json').read_text())
    out = {}
    for name, model in (('base', None), ('finetuned', str(model_dir))):
        e = Embedder(model); e.model.max_seq_length = m['max_seq_length']
        out[name] = triplet_stats(e.encode(test.queries), ys, margin or DEFAULT_MARGIN)
    return out

def train_or_reuse(a, folder, *args, **kw):
    "Fine-tune into `folder`, or with --reuse take the metrics of the model already there."
    from query_router.finetune import finetune_embedder
    if a.reuse and (folder/'finetune_metrics.json').exists(): return json.loads((folder/'finetune_metrics.json').read_text())
    return finetune_embedder(*args, out=folder, **kw)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', choices=['default', 'llmrouter'], default=None)
    ap.add_argument('--default_max_train', type=int, default=None, help='sample of the default train split (default: all)')
    ap.add_argument('--llmrouter_max_train', type=int, default=None, help='task-stratified sample of LLMRouter train.jsonl (default: all 5,608)')
    ap.add_argument('--max_seq_length', type=int, default=None, help='truncate LLMRouter prompts (default: the model\'s 256 tokens)')
    ap.add_argument('--labels', default='auto', help="LLMRouter training labels: 'cheapest' (auto) or 'successes'")
    ap.add_argument('--loss', default='batch_all'); ap.add_argument('--margin', type=float, default=None)
    ap.add_argument('--epochs', type=int, default=2); ap.add_argument('--lr', type=float, default=2e-5)
    ap.add_argument('--wandb', action='store_true', help='also log to W&B (offline without WANDB_API_KEY)')
    ap.add_argument('--tag', default='', help='suffix for the result key, to keep variants apart')
    ap.add_argument('--models', default=None, help='where to keep the fine-tuned models (default: a temporary folder, deleted)')
    ap.add_argument('--reuse', action='store_true', help='with --models: skip training where a model is already there, measure it again')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'finetune.json')); a = ap.parse_args()
    import torch
    from query_router.core import has_shared_data, shared_data_dir
    from query_router.data import load_default_dataset, load_llmrouter, split_data
    from query_router.knn import build_artifacts, KNNRouter
    out = Path(a.out); res = json.loads(out.read_text()) if out.exists() else {}
    models = Path(a.models) if a.models else Path(tempfile.mkdtemp())
    machine = {'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'platform': platform.platform(),
               'load_avg_at_start': os.getloadavg(), 'note': '2-core machine shared with other jobs: wall times are upper bounds'}
    if a.reuse: # keep the machine of the run that trained
        prev = lambda key: res.get(key, {}).get('machine', machine)
    else: prev = lambda key: machine
    common = dict(loss=a.loss, margin=a.margin, epochs=a.epochs, lr=a.lr, use_wandb=a.wandb)

    if a.only in (None, 'default'):
        tr, _, te = split_data(load_default_dataset(), 'grouped')
        if a.default_max_train: tr = tr.subset(sorted(np.random.default_rng(0).choice(len(tr), a.default_max_train, replace=False)))
        m = train_or_reuse(a, models/'default', tr, eval_data=te, run_name='bench-default', **common)
        r = {'data': 'embedded default dataset, grouped split seed 0: train part = training data and KNN index, test part = evaluation',
             'n_index': len(tr), 'n_test': len(te), **summary(m), 'machine': prev('default' + a.tag),
             'held_out_triplets': held_out_triplets(models/'default', te, 'auto', a.margin)}
        # the saved folder as a model name: build a real artifact and route with KNNRouter loading the model from the manifest
        art = build_artifacts(models/'art-default', tr, str((models/'default').resolve()), n_trees=50)
        router = KNNRouter(art)
        routes = router.route_batch(te.queries)
        r['knn_router_with_finetuned_model'] = {'model_in_manifest': router.manifest['embedder']['name'],
                                                'accuracy_annoy': float(np.mean(np.array(routes) == np.array(te.labels)))}
        res['default' + a.tag] = r
        shutil.copy(models/'default'/'finetune_curve.png', out.parent/f'finetune_default{a.tag}.png')
        print(json.dumps({k: r[k] for k in ('before', 'after', 'loss_first', 'loss_last', 'train_s', 'wall_s', 'knn_router_with_finetuned_model', 'held_out_triplets')}, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(res, indent=1))

    if a.only in (None, 'llmrouter'):
        if not has_shared_data(): print(f'LLMRouter data not found at {shared_data_dir()}: skipped'); return
        full, te = load_llmrouter('train'), load_llmrouter('test')
        tr = stratified(full, a.llmrouter_max_train)
        m = train_or_reuse(a, models/'llmrouter', tr, eval_data=te, labels=a.labels, max_seq_length=a.max_seq_length, run_name='bench-llmrouter', **common)
        r = {'data': f'LLMRouter: {"all of" if len(tr) == len(full) else "a task-stratified sample of"} train.jsonl ({len(tr)} of {len(full)}) = training data '
                     'and KNN index, test.jsonl = evaluation; accuracy against the derived cheapest-good-enough label (score >= 0.5)',
             'n_index': len(tr), 'n_test': len(te), **summary(m), 'reference_routes_on_test': reference_routes(te), 'machine': prev('llmrouter' + a.tag),
             'held_out_triplets': held_out_triplets(models/'llmrouter', te, a.labels, a.margin)}
        res['llmrouter' + a.tag] = r
        shutil.copy(models/'llmrouter'/'finetune_curve.png', out.parent/f'finetune_llmrouter{a.tag}.png')
        print(json.dumps({k: r[k] for k in ('before', 'after', 'loss_first', 'loss_last', 'train_s', 'wall_s', 'held_out_triplets')}, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(res, indent=1))
    if not a.models: shutil.rmtree(models, ignore_errors=True)

if __name__ == '__main__': main()
