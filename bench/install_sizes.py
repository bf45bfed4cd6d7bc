"""Installed size of the core package and of each extra, each in a fresh virtual environment outside the repo.

    python bench/install_sizes.py            # -> bench/results/install_sizes.json

Builds a wheel of the checkout, then for the core and for each extra makes a new venv, installs torch==2.13.0 (the
CPU build) first where the install needs torch, installs the wheel, and measures site-packages. Also installs the
torch-free static set (`requirements-static.txt` + the wheel with --no-deps) and checks that torch is absent there.
"""
import configparser, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
def sh(*a, **k): return subprocess.run(a, check=True, capture_output=True, text=True, **k)
def du(p:Path)->int: return sum(f.stat().st_size for f in p.rglob('*') if f.is_file() and not f.is_symlink())
def site(venv:Path)->Path: return next((venv/'lib').glob('python*/site-packages'))

def venv_with(tmp:Path, name:str, *installs:list[str])->dict:
    v = tmp/name; sh(sys.executable, '-m', 'venv', str(v)); py = str(v/'bin'/'python')
    sh(py, '-m', 'pip', 'install', '-q', '--upgrade', 'pip')
    base = du(site(v)); t = time.time()
    for args in installs: sh(py, '-m', 'pip', 'install', '-q', *args)
    n = len(sh(py, '-m', 'pip', 'list', '--format=freeze').stdout.split())
    has_torch = sh(py, '-c', 'import importlib.util as u; print(u.find_spec("torch") is not None)').stdout.strip() == 'True'
    out = {'bytes': du(site(v)) - base, 'packages': n, 'torch': has_torch, 'install_s': round(time.time() - t, 1)}
    shutil.rmtree(v); return out

def main():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    extras = [k[len('extra_'):] for k in cfg['DEFAULT'] if k.startswith('extra_')]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d); sh(sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(tmp), str(ROOT))
        whl = str(next(tmp.glob('query_router-*.whl')))
        res = {'static (no torch)': venv_with(tmp, 'static', ['-r', str(ROOT/'requirements-static.txt')], ['--no-deps', whl]),
               'core': venv_with(tmp, 'core', ['torch==2.13.0'], [whl])}
        for e in extras:
            r = venv_with(tmp, e, ['torch==2.13.0'], [f'{whl}[{e}]'])
            r['extra_bytes'] = r['bytes'] - res['core']['bytes']; res[f'[{e}]'] = r
            print(e, r, flush=True)
    out = ROOT/'bench'/'results'/'install_sizes.json'
    out.write_text(json.dumps({'python': sys.version.split()[0], 'loadavg': os.getloadavg(), 'sizes': res}, indent=1))
    for k, v in res.items(): print(f"{k:20} {v['bytes']/1e6:8.0f} MB  {v['packages']:4} packages  torch={v['torch']}" + (f"  (+{v['extra_bytes']/1e6:.0f} MB over core)" if 'extra_bytes' in v else ''))

if __name__ == '__main__': main()
