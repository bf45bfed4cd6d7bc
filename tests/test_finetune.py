"Fine-tuning the embedder: a few real training steps on tiny data, through the command line, then the model in a router."
import contextlib, io, json, os, pytest
import numpy as np
from pathlib import Path
from conftest import need_shared

N_TRAIN, N_EVAL = 48, 16

@pytest.fixture(scope='module')
def tiny(tmp_path_factory, default_data):
    "48 training and 16 held-out queries of the default dataset (whole topics apart), as CSV files."
    from query_router.data import split_data
    d = tmp_path_factory.mktemp('ft')
    tr, _, te = split_data(default_data, 'grouped')
    cols = lambda x: x.frame.rename(columns={'query': 'question', 'group': 'topic'})[['question', 'label', 'topic']]
    cols(tr.subset(range(N_TRAIN))).to_csv(d/'train.csv', index=False); cols(te.subset(range(N_EVAL))).to_csv(d/'eval.csv', index=False)
    return d, tr.subset(range(N_TRAIN)), te.subset(range(N_EVAL))

def cli(*args):
    from query_router.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()

@pytest.fixture(scope='module')
def trained(tiny):
    "`query-router finetune` on the tiny data: 2 epochs of 3 steps, W&B on and offline (no API key)."
    d, tr, te = tiny
    saved = {v: os.environ.pop(v, None) for v in ('WANDB_API_KEY', 'WANDB_MODE', 'WANDB_DIR')}
    from query_router.core import default_candidates_path
    try: rc, out, err = cli('finetune', '--data', str(d/'train.csv'), '--eval_data', str(d/'eval.csv'), '--candidates', str(default_candidates_path()),
                            '--out', str(d/'model'), '--lr', '1e-4')
    finally:
        for v, x in saved.items():
            if x is not None: os.environ[v] = x
    assert rc == 0, err
    return d/'model', out

def test_training_steps_lower_the_loss(trained, tiny):
    from query_router.embed import Embedder
    from query_router.finetune import batch_loss
    model, out = trained; _, tr, _ = tiny
    m = json.loads((model/'finetune_metrics.json').read_text())
    assert m['steps'] == 2 * N_TRAIN // 16 and m['loss'] == 'batch_all' and m['margin'] == 0.25 and m['sampler'] == 'no_duplicates'
    assert len(m['loss_curve']) >= 3 and all(np.isfinite(h['loss']) for h in m['loss_curve'])
    # the loss over all the training queries at once, base model vs fine-tuned: steadier than the per-step losses
    before, after = batch_loss(Embedder(), tr.queries, tr.labels), batch_loss(str(model), tr.queries, tr.labels)
    assert after < before - 1e-3, (before, after)
    assert 'saved' in out and 'epoch 0: accuracy' in out

def test_evaluator_ran_before_and_after_each_epoch(trained):
    m = json.loads((trained[0]/'finetune_metrics.json').read_text())
    assert [e['epoch'] for e in m['evaluations']] == [0, 1, 2]
    for e in m['evaluations']: assert 0 <= e['accuracy'] <= 1 and e['cost'] > 0
    assert m['n_train'] == N_TRAIN and m['n_eval'] == N_EVAL and m['wall_s'] > 0
    assert (trained[0]/'finetune_curve.png').stat().st_size > 1000

def test_wandb_logged_offline(trained):
    runs = list((trained[0]/'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and any(runs[0].rglob('*.wandb'))
    assert os.environ.get('WANDB_DIR') is None or 'model' not in os.environ['WANDB_DIR'] # settings restored

def test_saved_model_loads_builds_and_routes(trained, tiny, tmp_path, default_data):
    "The folder is a model name: `query-router build --model FOLDER`, then KNNRouter loads the model from the manifest."
    from query_router.embed import Embedder
    from query_router.knn import KNNRouter
    from query_router.router import respond
    model, _ = trained; d, tr, te = tiny
    ft, base = Embedder(str(model)), Embedder()
    assert ft.dim == 384 and not np.allclose(ft.encode(te.queries[:4]), base.encode(te.queries[:4]), atol=1e-4) # it did change
    rc, out, err = cli('build', '--model', str(model), '--data', str(d/'train.csv'), '--out', str(tmp_path/'art'), '--n_trees', '5')
    assert rc == 0, err
    m = json.loads((tmp_path/'art'/'manifest.json').read_text())
    assert m['embedder']['name'] == str(model) and m['embedder']['fingerprint'] == ft.fingerprint
    r = KNNRouter(tmp_path/'art') # loads the fine-tuned model by the name in the manifest
    q = te.queries[:4]
    assert np.allclose(r.embedder.encode(q), ft.encode(q), atol=1e-5) and not np.allclose(r.embedder.encode(q), base.encode(q), atol=1e-4)
    ans = respond(r, te.queries[:3])
    assert [a['route'] in {'3B', '7B', '30B', '70B'} for a in ans] == [True] * 3
    assert ans[0]['hits'][0]['similarity'] > 0

def test_bad_settings_are_refused_with_a_message(tiny, tmp_path):
    d, _, _ = tiny
    rc, _, err = cli('finetune', '--data', str(d/'train.csv'), '--split', 'none', '--out', str(tmp_path/'m'), '--loss', 'nope', '--no_wandb')
    assert rc == 1 and "unknown loss 'nope'" in err and 'Traceback' not in err
    rc, _, err = cli('finetune', '--data', str(d/'train.csv'), '--split', 'none', '--out', str(tmp_path/'m'), '--margin', '5', '--no_wandb')
    assert rc == 1 and 'does not fit cosine distance' in err
    assert not (tmp_path/'m').exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.m.tmp')]

def test_outcome_data_evaluates_quality_and_cost(embedder):
    "On LLMRouter outcomes: labels from outcomes, and the evaluator's quality and cost of the argmax routes."
    need_shared()
    from query_router.data import load_llmrouter
    from query_router.finetune import RoutingEvaluator, route_metrics, training_labels
    tr, te = load_llmrouter('train').subset(range(0, 5608, 140)), load_llmrouter('test').subset(range(0, 500, 25))
    ys = training_labels(tr)
    assert set(ys) <= set(tr.targets) and len(set(training_labels(tr, 'successes'))) >= len(set(ys))
    ev = RoutingEvaluator(tr, te)
    r = ev(embedder.model)
    c = te.costs()
    assert set(r) == {'routing_accuracy', 'routing_quality', 'routing_cost'}
    assert 0 <= r['routing_quality'] <= 1 and c.min() <= r['routing_cost'] <= c.max()
    by_hand = route_metrics(embedder.encode(tr.queries), tr.scores(), embedder.encode(te.queries), te.targets, training_labels(te), te.scores(), c)
    assert abs(by_hand['quality'] - r['routing_quality']) < 1e-6
