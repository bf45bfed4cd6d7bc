"`query-router serve --ray` reaches the Ray Serve command (its own options included) and fails clearly before starting Ray."
import io, contextlib, pytest
from query_router.cli import main

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = main(list(argv))
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()

def test_serve_ray_help_lists_the_ray_options():
    rc, out, _ = run('serve', '--ray', '--help')
    assert rc == 0
    for opt in ('--replicas', '--min_replicas', '--max_replicas', '--target_ongoing', '--cpus', '--address', '--batch_size', '--backends'):
        assert opt in out, opt

def test_plain_serve_help_mentions_ray():
    rc, out, _ = run('serve', '--help')
    assert rc == 0 and '--ray' in out and '--replicas' not in out

def test_missing_artifact_is_a_clear_error(tmp_path):
    pytest.importorskip('ray.serve', reason='ray[serve] is not installed (pip install "query_router[ray]")')
    rc, _, err = run('serve', '--ray', '--artifacts', str(tmp_path/'nope'), '--replicas', '2')
    assert rc == 1 and 'not an artifact folder' in err

def test_bad_options_are_clear_errors(tmp_path):
    pytest.importorskip('ray.serve', reason='ray[serve] is not installed (pip install "query_router[ray]")')
    (tmp_path/'manifest.json').write_text('{}')
    rc, _, err = run('serve', '--ray', '--artifacts', str(tmp_path), '--min_replicas', '3', '--max_replicas', '2')
    assert rc == 1 and 'min_replicas <= max_replicas' in err
    rc, _, err = run('serve', '--ray', '--artifacts', str(tmp_path), '--cpus', '0')
    assert rc == 1 and 'cpus per replica' in err
