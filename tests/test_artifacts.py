"Artifacts are validated, not trusted: every manifest fault is refused at load naming the file and the field; format 2 round trips; builds swap recoverably under a lock."
import json, os, shutil, threading, time, numpy as np, pytest
from pathlib import Path
from query_router.artifacts import (ArtifactError, load_manifest, load_router, manifest_digests, write_artifact, artifact_lock, recover)
from query_router.knn import KNNRouter, write_artifacts, build_artifacts, export_artifact, upgrade_artifact

def _edit(art, tmp_path, change, consistent=False, name='bad'):
    "A copy of `art` whose manifest went through `change(m)`; `consistent` recomputes the digests, as a buggy writer would."
    bad = tmp_path/name; shutil.copytree(art, bad)
    m = json.loads((bad/'manifest.json').read_text())
    r = change(m); m = r if isinstance(r, list) else m # a change returns a replacement only to make the manifest a non-object
    if consistent and isinstance(m, dict): m['integrity'] = manifest_digests(m)
    (bad/'manifest.json').write_text(json.dumps(m))
    return bad

def _refused(path, *words, **kw):
    "Loading `path` (as the server does) is refused with a message containing every word."
    with pytest.raises(ArtifactError) as e: load_router(path, **kw)
    msg = str(e.value)
    for w in words: assert w in msg, msg
    return msg

# ---- issue 13: each manifest fault ----

def test_no_files_field(small_artifacts, tmp_path):
    bad = _edit(small_artifacts, tmp_path, lambda m: m.pop('files'))
    _refused(bad, 'manifest.json', "field 'files'")

def test_truncated_index(small_artifacts, tmp_path):
    bad = tmp_path/'bad'; shutil.copytree(small_artifacts, bad)
    (bad/'index.ann').write_bytes((bad/'index.ann').read_bytes()[:4096]) # would crash Annoy (SIGSEGV) if it were opened
    _refused(bad, 'index.ann', "field 'files.index.ann'", 'truncated')

def test_target_removed(small_artifacts, tmp_path):
    drop = lambda m: m.update(targets=m['targets'][:-1])
    _refused(_edit(small_artifacts, tmp_path, drop), 'manifest.json', "field 'targets' changed after the build")
    _refused(_edit(small_artifacts, tmp_path, drop, consistent=True, name='bad2'), 'scores.npy', 'shape (300, 4), expected (300, 3)', "field 'targets'")

@pytest.mark.parametrize('field,value', [('k', -5), ('k', 'ten'), ('k', 2.5), ('policy', 'bogus'), ('param', 'high'), ('param', float('nan'))])
def test_bad_settings(small_artifacts, tmp_path, field, value):
    bad = _edit(small_artifacts, tmp_path, lambda m: m['settings'].update({field: value}))
    _refused(bad, 'manifest.json', f"field 'settings.{field}'")

def test_utility_policy_without_costs(small_artifacts, tmp_path):
    def f(m): m['targets'][0]['cost'] = None; m['settings']['policy'] = 'utility'
    _refused(_edit(small_artifacts, tmp_path, f, consistent=True), "field 'settings.policy'", 'cost')

def test_nan_scores(small_artifacts, tmp_path):
    bad = tmp_path/'bad'; shutil.copytree(small_artifacts, bad)
    s = np.load(bad/'scores.npy'); s[7, 2] = np.nan; np.save(bad/'scores.npy', s) # same size: only the content check can see it
    _refused(bad, 'scores.npy', 'NaN', 'point 7')

def test_manifest_is_a_list(small_artifacts, tmp_path):
    _refused(_edit(small_artifacts, tmp_path, lambda m: []), 'manifest.json', 'JSON object', 'list')

def test_missing_embedder(small_artifacts, tmp_path):
    _refused(_edit(small_artifacts, tmp_path, lambda m: m.pop('embedder'), consistent=True), 'manifest.json', "field 'embedder' is missing")

def test_wrong_dim(small_artifacts, tmp_path):
    _refused(_edit(small_artifacts, tmp_path, lambda m: m.update(dim=385)), 'manifest.json', "field 'dim' changed")
    _refused(_edit(small_artifacts, tmp_path, lambda m: m.update(dim=385), consistent=True, name='b2'), "field 'dim' is 385", "'embedder.dim' is 384")
    def both(m): m['dim'] = 385; m['embedder']['dim'] = 385
    _refused(_edit(small_artifacts, tmp_path, both, consistent=True, name='b3'), 'embeddings.npy', 'shape (300, 384), expected (300, 385)')

def test_bad_types_in_embedder_and_targets(small_artifacts, tmp_path):
    _refused(_edit(small_artifacts, tmp_path, lambda m: m['embedder'].update(dim='384')), "field 'embedder.dim'")
    _refused(_edit(small_artifacts, tmp_path, lambda m: m['targets'][1].update(cost=-1), name='b2'), "field 'targets[1].cost'")
    _refused(_edit(small_artifacts, tmp_path, lambda m: m.update(kind='bogus'), name='b3'), "field 'kind'")
    _refused(_edit(small_artifacts, tmp_path, lambda m: m['settings']['index'].update(search_k='lots'), name='b4'), "field 'settings.index.search_k'")

def test_unreadable_files(small_artifacts, tmp_path, monkeypatch):
    bad = tmp_path/'bad'; shutil.copytree(small_artifacts, bad)
    (bad/'scores.npy').unlink(); (bad/'scores.npy').mkdir() # a folder where a file should be
    _refused(bad, 'scores.npy', 'is a folder')
    bad2 = tmp_path/'bad2'; shutil.copytree(small_artifacts, bad2)
    real_open = open
    def deny(p, *a, **k): # root reads anything, so chmod cannot make a file unreadable here: deny the open instead
        if str(p).endswith('embeddings.npy'): raise PermissionError(13, 'Permission denied')
        return real_open(p, *a, **k)
    monkeypatch.setattr('builtins.open', deny)
    _refused(bad2, 'embeddings.npy', 'cannot read', 'Permission denied')
    monkeypatch.setattr(Path, 'read_bytes', lambda self: (_ for _ in ()).throw(PermissionError(13, 'Permission denied')))
    _refused(bad2, 'manifest.json', 'cannot read', 'Permission denied')

def test_invalid_json_names_the_file(small_artifacts, tmp_path, embedder):
    bad = tmp_path/'bad'; shutil.copytree(small_artifacts, bad)
    (bad/'manifest.json').write_text('{"format_version": 2, "kind": ')
    _refused(bad, 'manifest.json', 'not valid JSON')
    ex = export_artifact(small_artifacts, tmp_path/'ex', progress=False)
    lines = Path(ex['points']).read_text().splitlines(); lines[3] = lines[3][:40]; Path(ex['points']).write_text('\n'.join(lines) + '\n')
    with pytest.raises(ValueError, match=r'points.jsonl:4: malformed JSON'):
        build_artifacts(tmp_path/'x', points=ex['points'], targets=ex['targets'], model=embedder, progress=False)
    assert not (tmp_path/'x').exists()

def test_unreachable_hub_id_fails_fast(small_artifacts, tmp_path, monkeypatch):
    bad = _edit(small_artifacts, tmp_path, lambda m: m['embedder'].update(name='no-such-org/no-such-model'), consistent=True)
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False); monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    monkeypatch.setenv('HF_ENDPOINT', 'https://hub.invalid') # nothing answers there, online or not
    _refused(bad, 'manifest.json', "embedder.name 'no-such-org/no-such-model'", 'cannot be reached')

def test_format_1_is_refused_with_the_way_out(small_artifacts, tmp_path):
    _refused(_edit(small_artifacts, tmp_path, lambda m: m.update(format_version=1)), "field 'format_version' is 1", 'query-router upgrade')

def test_good_artifact_loads_and_verifies(small_artifacts, embedder):
    r = load_router(small_artifacts, embedder=embedder, verify=True)
    assert r.route('hello') in r.targets and r.describe()['index'] == 'annoy'

def test_calibrated_settings_may_change(small_artifacts, tmp_path, embedder):
    "Only `settings` may be edited after the build (query-router calibrate does), and it is still validated."
    from query_router.artifacts import update_settings
    a = tmp_path/'a'; shutil.copytree(small_artifacts, a)
    update_settings(a, policy='threshold', param=0.3)
    assert load_router(a, embedder=embedder).default_policy == 'threshold'
    with pytest.raises(ArtifactError, match="field 'settings.param'"): update_settings(a, param='high')

# ---- builds: recoverable swap, stale temporary folders, the lock ----

def _toy(out, payload=b'x', delay=0.0, **kw):
    def files(tmp):
        time.sleep(delay); (tmp/'w.bin').write_bytes(payload)
    return write_artifact(out, 'classifier', files, targets=[{'name': 'a', 'cost': 1.0}, {'name': 'b', 'cost': 2.0}], settings={}, **kw)

def test_killed_between_the_renames_is_recovered(tmp_path, monkeypatch):
    out = _toy(tmp_path/'art', b'old')
    real = os.replace; calls = []
    def crash_on_second(a, b):
        calls.append((a, b))
        if len(calls) == 2: raise KeyboardInterrupt('killed') # after `art` -> `.art.old-*`, before the new folder -> `art`
        return real(a, b)
    monkeypatch.setattr(os, 'replace', crash_on_second)
    with pytest.raises(KeyboardInterrupt): _toy(out, b'new')
    monkeypatch.setattr(os, 'replace', real)
    assert not out.exists() and [p.name for p in tmp_path.glob('.art.old-*')]
    m = load_manifest(out) # the next load brings the old copy back
    assert (out/'w.bin').read_bytes() == b'old' and m['files']['w.bin']['bytes'] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['art']

def test_stale_temporary_folders_are_cleaned(tmp_path):
    (tmp_path/'.art.tmp-killed1').mkdir(); (tmp_path/'.art.tmp-killed1'/'big.npy').write_bytes(b'0' * 100)
    (tmp_path/'.art.old-123-4').mkdir()
    _toy(tmp_path/'art')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['art']

def test_a_build_waits_for_the_lock_or_fails_naming_it(tmp_path):
    out = tmp_path/'art'; held = threading.Event(); release = threading.Event()
    def holder():
        with artifact_lock(out): held.set(); release.wait(30)
    t = threading.Thread(target=holder); t.start(); held.wait(10)
    try:
        with pytest.raises(ArtifactError, match=r'another build \(pid \d+\) is writing'): _toy(out, lock_timeout=0.2)
        assert not out.exists() and not list(tmp_path.glob('.art.tmp-*'))
    finally: release.set(); t.join()

def test_two_builds_at_once_leave_one_complete_artifact(tmp_path):
    out, errs = tmp_path/'art', []
    def build(p):
        try: _toy(out, p, delay=0.3)
        except Exception as e: errs.append(e)
    ts = [threading.Thread(target=build, args=(p,)) for p in (b'first', b'second!')]
    for t in ts: t.start()
    for t in ts: t.join()
    assert not errs
    m = load_manifest(out, verify=True)
    assert (out/'w.bin').read_bytes() in (b'first', b'second!') and m['files']['w.bin']['bytes'] == len((out/'w.bin').read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ['art'] # no orphaned old copy, no temporary folder, no lock file

# ---- issue 14: format 2 round trip at a few thousand points ----

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory, embedder, clustered_points):
    "The clustered points of `conftest.clustered_points` in an Annoy artifact."
    x, scores, meta, cands = clustered_points
    d = tmp_path_factory.mktemp('syn')
    art = write_artifacts(d/'art', meta, x, ['big', 'small', 'mid'], scores, embedder, cands, n_trees=20, progress=False)
    return d, art, x, scores, meta

def test_format_2_layout_and_round_trip(synthetic, embedder):
    d, art, x, scores, meta = synthetic
    m = load_manifest(art, verify=True)
    assert m['format_version'] == 2 and m['n_points'] == 3000 and [t['name'] for t in m['targets']] == ['small', 'mid', 'big']
    assert {'embeddings.npy', 'scores.npy', 'ids.utf8', 'ids.offsets.npy', 'text.utf8', 'category.utf8', 'index.ann'} <= set(m['files'])
    r = KNNRouter(art, embedder)
    assert isinstance(r.embeddings, np.memmap) # mapped, not read
    np.testing.assert_allclose(r.embeddings[123], x[123], atol=1e-6)
    np.testing.assert_array_equal(r.scores_matrix, scores[:, [1, 2, 0]])
    assert r.point(4) == {'point_uid': 'p4', 'category': 'y', 'utterance': 'query number 4 ü'} and r.point(2)['category'] is None
    q = x[:50] + np.random.default_rng(1).normal(scale=0.02, size=(50, 384)).astype(np.float32); q /= np.linalg.norm(q, axis=1, keepdims=True)
    ia, _ = r.search(q); ie, se = r.search(q, exact=True)
    np.testing.assert_array_equal(ie[:, 0], np.arange(50)) # each query finds its own point
    ref = np.argsort(-(q @ np.asarray(r.embeddings).T), axis=1, kind='stable')[:, :10]
    np.testing.assert_array_equal(ie, ref) # blocked argpartition = the full stable sort
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ia, ie)]) > 0.9

def test_export_and_build_back(synthetic, embedder, tmp_path):
    d, art, x, scores, meta = synthetic
    ex = export_artifact(art, tmp_path/'ex', progress=False)
    first = json.loads(Path(ex['points']).read_text().splitlines()[0])
    assert set(first) == {'point_uid', 'category', 'utterance', 'embedding'} and len(first['embedding']) == 384
    back = build_artifacts(tmp_path/'back', points=ex['points'], targets=ex['targets'], candidates=ex['candidates'], model=embedder, n_trees=20, progress=False)
    a, b = KNNRouter(art, embedder), KNNRouter(back, embedder)
    assert a.targets == b.targets and np.allclose(a.costs, b.costs)
    np.testing.assert_array_equal(a.scores_matrix, b.scores_matrix)
    np.testing.assert_allclose(np.asarray(a.embeddings), np.asarray(b.embeddings), atol=2e-6)
    assert [a.point(i) for i in range(0, 3000, 97)] == [b.point(i) for i in range(0, 3000, 97)]
    ea, _ = a.search(x[:20], exact=True); eb, _ = b.search(x[:20], exact=True)
    assert np.mean([len(set(p) & set(q)) / 10 for p, q in zip(ea, eb)]) >= 0.99 # the same neighbours (embeddings round-tripped to 6 decimals)

@pytest.mark.parametrize('index,dtype', [('hnsw', 'float16'), ('exact', 'float32')])
def test_other_index_kinds_and_float16(synthetic, embedder, tmp_path, index, dtype):
    d, art, x, scores, meta = synthetic
    a = write_artifacts(tmp_path/index, meta, x, ['big', 'small', 'mid'], scores, embedder, n_trees=5, index=index, dtype=dtype, keep_text=False, progress=False)
    m = load_manifest(a, verify=True)
    assert m['settings']['index']['kind'] == index and m['dtype'] == dtype and 'text.utf8' not in m['files']
    r = load_router(a, embedder=embedder)
    assert r.point(0)['utterance'] is None and (a/'embeddings.npy').stat().st_size < (art/'embeddings.npy').stat().st_size * (0.6 if dtype == 'float16' else 1.01)
    ia, _ = r.search(x[:30]); ie, _ = r.search(x[:30], exact=True)
    assert np.mean([len(set(p) & set(q)) / 10 for p, q in zip(ia, ie)]) > 0.9

def test_damaged_format_2_is_refused(synthetic, embedder, tmp_path):
    d, art, *_ = synthetic
    for f, cut in (('ids.offsets.npy', 8), ('embeddings.npy', 1000), ('text.utf8', 1)):
        bad = tmp_path/f'bad-{f}'; shutil.copytree(art, bad)
        (bad/f).write_bytes((bad/f).read_bytes()[:-cut])
        with pytest.raises(ArtifactError, match=f.replace('.', r'\.')): KNNRouter(bad, embedder)
    bad = tmp_path/'flip'; shutil.copytree(art, bad)
    raw = bytearray((bad/'ids.utf8').read_bytes()); raw[10] ^= 1; (bad/'ids.utf8').write_bytes(bytes(raw)) # same size: cheap checks pass...
    KNNRouter(bad, embedder)
    with pytest.raises(ArtifactError, match='checksum mismatch for ids.utf8'): KNNRouter(bad, embedder, verify=True) # ...--verify does not

def test_upgrade_from_format_1(small_artifacts, embedder, tmp_path):
    "A folder in the previous version's layout: refused with the command, then converted; routes unchanged."
    from query_router.artifacts import sha256
    from query_router.embed import write_jsonl
    r0 = KNNRouter(small_artifacts, embedder); sm = r0.manifest
    v1 = tmp_path/'v1'; v1.mkdir()
    shutil.copyfile(small_artifacts/'index.ann', v1/'index.ann'); np.save(v1/'embeddings.npy', np.asarray(r0.embeddings)); np.save(v1/'scores.npy', r0.scores_matrix)
    write_jsonl(v1/'points.jsonl', ({**r0.point(i), 'embedding': np.asarray(r0.embeddings[i]).round(6).tolist()} for i in range(r0.n_points)))
    write_jsonl(v1/'targets.jsonl', ({'point_uid': r0.point(i)['point_uid'], 'target': t, 'score': 1.0} for i in range(r0.n_points) for t, v in zip(r0.targets, r0.scores_matrix[i]) if v))
    files = {f: sha256(v1/f) for f in ('index.ann', 'embeddings.npy', 'scores.npy', 'points.jsonl', 'targets.jsonl')}
    (v1/'manifest.json').write_text(json.dumps({'format_version': 1, 'kind': 'knn', 'embedder': sm['embedder'], 'metric': 'angular', 'n_points': 300, 'dim': 384,
        'n_trees': 10, 'targets': sm['targets'], 'settings': {'k': 10, 'policy': 'argmax', 'param': None}, 'files': files, 'created': sm['created']}))
    with pytest.raises(ArtifactError, match=f'query-router upgrade {v1}'): load_router(v1, embedder=embedder)
    from query_router.cli import main
    assert main(['upgrade', '--artifacts', str(v1)]) == 0
    r1 = load_router(v1, embedder=embedder, verify=True)
    qs = ['hello there', 'write a sorting function in rust', 'prove that there are infinitely many primes']
    assert r1.route_batch(qs) == r0.route_batch(qs) and r1.point(9) == r0.point(9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['v1']

def test_local_embedder_travels_with_the_artifact(tmp_path, default_data):
    "A fine-tuned/distilled model folder is copied into the artifact: the artifact still loads after the folder is gone."
    from query_router.embed import Embedder, default_model_path
    model = tmp_path/'my-model'; shutil.copytree(default_model_path(), model)
    emb = Embedder(str(model))
    art = build_artifacts(tmp_path/'a', default_data.subset(range(40)), emb, n_trees=2, progress=False)
    m = load_manifest(art)
    assert m['embedder']['path'] == 'embedder' and m['embedder']['name'] == str(model.resolve()) and any(f.startswith('embedder/') for f in m['files'])
    shutil.rmtree(model); moved = tmp_path/'elsewhere'/'art'; moved.parent.mkdir(); shutil.move(str(art), moved)
    r = load_router(moved)
    hits, _ = r.explain_batch([default_data.queries[3]], k=1)
    assert hits[0][0]['similarity'] > 0.99 and r.embedder.name == str((moved/'embedder').resolve())

def test_upgrade_classifier_format_1(tmp_path):
    "A format 1 classifier folder gets a format 2 manifest over the same files (its own fields kept)."
    from query_router.artifacts import sha256
    old = tmp_path/'clf'; (old/'adapter').mkdir(parents=True); (old/'adapter'/'w.bin').write_bytes(b'weights')
    (old/'manifest.json').write_text(json.dumps({'format_version': 1, 'kind': 'classifier', 'weights': 'adapter', 'base': {'name': 'x', 'fingerprint': [0.1]},
        'targets': [{'name': '3B', 'cost': 0.1}, {'name': '70B', 'cost': 0.9}], 'settings': {'policy': 'argmax', 'param': None, 'max_length': 64},
        'files': {'adapter/w.bin': sha256(old/'adapter'/'w.bin')}, 'created': '2026-01-01T00:00:00Z'}))
    with pytest.raises(ArtifactError, match='query-router upgrade'): load_manifest(old)
    upgrade_artifact(old, progress=False)
    m = load_manifest(old, verify=True)
    assert m['format_version'] == 2 and m['weights'] == 'adapter' and m['base']['name'] == 'x' and list(m['files']) == ['adapter/w.bin']
    assert m['settings']['max_length'] == 64 and m['upgraded']['from_format'] == 1
