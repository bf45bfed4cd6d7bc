"""Does outcome-aware fine-tuning of the embedder (RouterDC's dual contrastive loss, `query-router dc-finetune`) raise routing quality on
LLMRouter outcomes? The default KNN router (`knn.DEFAULT_SETTINGS`, canonicalised as `query-router build` does) is fitted on train.jsonl
with the bundled all-MiniLM-L6-v2 and with the fine-tuned embedder, and both are measured on test.jsonl: AIQ, quality within 50% of the
best single model's cost, APGR, with bootstrap standard errors and the paired share of resamples in which the fine-tuned one wins.

    python bench/dc_finetune_eval.py --steps 600                 # fine-tune (about 25 min on 2 CPU cores), then measure
    python bench/dc_finetune_eval.py --model /tmp/dc600          # measure a model fine-tuned before

Writes bench/results/dc_finetune.json. Nothing is chosen on the test split: both routers use the default settings.
"""
import argparse, json, os, sys, time
from pathlib import Path
for v in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(v, '2')
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
import numpy as np
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/'bench'))
from query_router.core import has_shared_data, shared_data_dir
from query_router.evaluate import (CachedEmbedder, cache_root, load_eval_data, outcome_matrix, cost_basis, best_single, score_report, score_data,
                                   bootstrap_draws, bootstrap_summary)
from query_router.knn import DEFAULT_SETTINGS
from compare import MemoCanonicalizer, canon_spec, make_fitted

def measure(emb, tr, te, canon, n_boot):
    r = make_fitted('knn', dict(DEFAULT_SETTINGS), emb, canon, tr)
    S, O = score_data(r, te), outcome_matrix(te)
    pc, M, _ = cost_basis(te, tr.costs()); ref = best_single(outcome_matrix(tr), pc); pair = (int(np.argmin(pc)), ref)
    row, _ = score_report(S, O, M, ref, pair, budgets=(0.5,), policy_costs=pc)
    E = np.asarray(emb.encode(canon(list(te.queries[:200]))))
    F = np.asarray(emb.encode(canon(list(tr.queries))))
    top = np.sort(E @ F.T, 1)[:, -DEFAULT_SETTINGS['k']:] # how far apart the neighbours are: the temperature assumes MiniLM's spread
    d = bootstrap_draws(S, O, M, ref, pair, 0.5, None, pc, te.groups, n_boot)
    return {'aiq': row['aiq'], 'q@50%': row['q@50%'], 'apgr': row['apgr'], 'se': bootstrap_summary(d),
            'neighbour_similarity_p5_p50_p95': np.percentile(top, [5, 50, 95]).round(4).tolist()}, d

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='a model fine-tuned before (a folder); default: fine-tune now')
    p.add_argument('--steps', type=int, default=600); p.add_argument('--out', default='/tmp/qr-dc-finetuned')
    p.add_argument('--bootstrap', type=int, default=1000)
    a = p.parse_args()
    if not has_shared_data(): raise SystemExit(f'LLMRouter outcomes not found at {shared_data_dir()}')
    tr, _, te = load_eval_data('llmrouter')
    t0, load0 = time.time(), os.getloadavg()[0]
    model = a.model
    if not model:
        from query_router.dcfinetune import dc_finetune
        dc_finetune(tr, a.out, steps=a.steps); model = a.out
    rec = json.loads((Path(model)/'dc_metrics.json').read_text())
    canon = MemoCanonicalizer(canon_spec())
    base, d0 = measure(CachedEmbedder(cache_dir=cache_root()/'embeddings'), tr, te, canon, a.bootstrap)
    dc, d1 = measure(CachedEmbedder(model), tr, te, canon, a.bootstrap)
    out = {'command': 'python bench/dc_finetune_eval.py ' + ' '.join(sys.argv[1:]), 'loadavg_start': load0, 'loadavg_end': os.getloadavg()[0], 'wall_s': round(time.time() - t0, 1),
           'router': {'kind': 'knn', **DEFAULT_SETTINGS, 'canonicalize': True},
           'training': {k: rec[k] for k in ('steps', 'batch_size', 'lr', 'lam', 'n_clusters', 'tau', 'train_s', 'n_train')} | {'loss_first': rec['loss_history'][0]['loss'], 'loss_last10': float(np.mean([h['loss'] for h in rec['loss_history'][-10:]]))},
           'bundled_minilm': base, 'dc_finetuned': dc,
           'p_dc_above_bundled': {m: float((d1[m] > d0[m]).mean()) for m in ('aiq', 'q@budget', 'apgr')}}
    (ROOT/'bench'/'results').mkdir(parents=True, exist_ok=True)
    (ROOT/'bench'/'results'/'dc_finetune.json').write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps({k: out[k] for k in ('training', 'p_dc_above_bundled')}, indent=1, default=float))
    for n in ('bundled_minilm', 'dc_finetuned'): print(n, {k: round(out[n][k], 4) for k in ('aiq', 'q@50%', 'apgr')}, out[n]['neighbour_similarity_p5_p50_p95'])

if __name__ == '__main__': main()
