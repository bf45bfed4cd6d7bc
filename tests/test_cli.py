"The `query-router` command line, run as users run it."
import json, os, subprocess, sys, time, httpx, pytest
from pathlib import Path

def run(*args, **kw):
    return subprocess.run([sys.executable, '-c', 'import sys; from query_router.cli import main; sys.exit(main())', *args],
                          capture_output=True, text=True, timeout=600, **kw)

def test_help_lists_commands():
    r = run('--help'); assert r.returncode == 0 and 'build' in r.stdout and 'serve' in r.stdout
    assert run('frobnicate').returncode == 2

def test_build_then_serve_from_the_command_line(tmp_path, default_data):
    data = tmp_path/'d.csv'
    default_data.frame.head(80).rename(columns={'query': 'question', 'group': 'topic'})[['question', 'label', 'topic']].to_csv(data, index=False)
    r = run('build', '--out', str(tmp_path/'art'), '--data', str(data), '--n_trees', '5')
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path/'art'/'manifest.json').read_text())
    assert m['n_points'] == 80 and m['n_trees'] == 5
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from query_router.cli import main; sys.exit(main())',
                          'serve', '--artifacts', str(tmp_path/'art'), '--port', '18931'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(240):
            try:
                if httpx.get('http://127.0.0.1:18931/health').status_code == 200: break
            except httpx.HTTPError: time.sleep(0.5)
        r = httpx.post('http://127.0.0.1:18931/', json={'query': 'hello'}, timeout=30)
        assert r.status_code == 200 and r.json()['route'] in {'3B', '7B', '30B', '70B'}
    finally: p.terminate(); p.wait(10)

def test_bad_data_gives_a_message_not_a_traceback(tmp_path):
    (tmp_path/'bad.csv').write_text('text,tier\nhello,huge\n')
    r = run('build', '--out', str(tmp_path/'a'), '--data', str(tmp_path/'bad.csv'))
    assert r.returncode == 1 and "unknown labels ['huge']" in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'a').exists()
