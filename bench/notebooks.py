"""Run every notebook top to bottom in a fresh kernel with its default switch (`FULL = False`), as a user would in Jupyter.

    python bench/notebooks.py                               # all of nbs/*.ipynb -> bench/results/notebooks.json
    python bench/notebooks.py 06_finetune 07_classifier     # only these (merged into the existing JSON)
    python bench/notebooks.py --executed /tmp/executed_nbs  # also keep the executed notebooks (to look at the plots)

Each notebook runs in its own new kernel (nbclient), with `nbs/` as the working directory and this checkout first on
`PYTHONPATH`, so the notebooks import this checkout's package. `IN_TEST` is not set: the cells run as they do in
Jupyter, not as under `nbdev_test`. Per notebook it records the seconds, whether it finished, the error (cell and
message) if not, the number of inline images (`image/png` outputs), the slowest cells, and `os.getloadavg()` before and
after; the bar is each notebook under 5 minutes on a CPU. The JSON is rewritten after every notebook.
"""
import argparse, json, os, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
BAR_S = 300

def _cell_seconds(cell)->float|None:
    "Seconds a cell took, from the timing nbclient records in its metadata."
    ex = cell.get('metadata', {}).get('execution', {})
    a, b = ex.get('iopub.execute_input') or ex.get('shell.execute_request'), ex.get('shell.execute_reply')
    if not (a and b): return None
    f = lambda s: datetime.fromisoformat(s.replace('Z', '+00:00'))
    return (f(b) - f(a)).total_seconds()

def _images(nb)->int:
    return sum(1 for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
               if o.get('output_type') in ('display_data', 'execute_result') and 'image/png' in o.get('data', {}))

def run_one(path:Path, timeout:int, executed:Path|None)->dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False, record_timing=True,
                            resources={'metadata': {'path': str(NBS)}})
    res = {'notebook': path.name, 'loadavg_start': os.getloadavg()}
    t = time.perf_counter(); err = None
    try: client.execute()
    except CellTimeoutError as e: err = f'timeout: a cell ran over {timeout} s'
    except DeadKernelError as e: err = f'kernel died: {e}'
    except CellExecutionError as e: err = str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
    except Exception as e: err = f'{type(e).__name__}: {e}'[:300]
    res['seconds'] = round(time.perf_counter() - t, 1)
    res['ok'] = err is None
    if err:
        res['error'] = err
        failed = [i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and
                  any(o.get('output_type') == 'error' for o in c.get('outputs', []))]
        if failed: res['failed_cell'] = {'index': failed[0], 'source': nb.cells[failed[0]].source[:200]}
    res['images'] = _images(nb)
    times = [(s, i) for i, c in enumerate(nb.cells) if c.cell_type == 'code' and (s := _cell_seconds(c)) is not None]
    res['slowest_cells'] = [{'index': i, 'seconds': round(s, 1), 'source': nb.cells[i].source[:120]}
                            for s, i in sorted(times, reverse=True)[:3]]
    res['under_bar'] = res['ok'] and res['seconds'] < BAR_S
    res['loadavg_end'] = os.getloadavg()
    if executed:
        executed.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, executed/path.name)
    return res

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('names', nargs='*', help='notebook names (with or without .ipynb); default: every notebook in nbs/')
    p.add_argument('--timeout', type=int, default=900, help='seconds per cell before the notebook counts as failed')
    p.add_argument('--out', default=str(ROOT/'bench'/'results'/'notebooks.json'))
    p.add_argument('--executed', default=None, help='folder (outside the repo) for the executed notebooks')
    a = p.parse_args()
    paths = [NBS/(n if n.endswith('.ipynb') else n + '.ipynb') for n in a.names] or sorted(NBS.glob('*.ipynb'))
    for q in paths:
        if not q.exists(): sys.exit(f'no such notebook: {q}')
    os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [x for x in os.environ.get('PYTHONPATH', '').split(os.pathsep) if x])
    for k in ('IN_TEST', 'PYTEST_CURRENT_TEST'): os.environ.pop(k, None)
    out = Path(a.out)
    prev = json.loads(out.read_text()) if a.names and out.exists() else {}
    by_name = {r['notebook']: r for r in prev.get('notebooks', [])}
    run = {'started': datetime.now(timezone.utc).isoformat(timespec='seconds'), 'loadavg_start': os.getloadavg(),
           'cpus': os.cpu_count(), 'python': sys.version.split()[0], 'timeout_s': a.timeout, 'bar_s': BAR_S,
           'command': 'python bench/notebooks.py ' + ' '.join(sys.argv[1:])}
    t0 = time.perf_counter()
    def save():
        rs = sorted(by_name.values(), key=lambda r: r['notebook'])
        summary = {'notebooks': len(rs), 'ok': sum(r['ok'] for r in rs), 'under_bar': sum(r['under_bar'] for r in rs),
                   'total_seconds': round(sum(r['seconds'] for r in rs), 1),
                   'slowest': max(rs, key=lambda r: r['seconds'])['notebook'] if rs else None}
        runs = prev.get('runs', [])[-4:] + [dict(run, loadavg_end=os.getloadavg(), seconds=round(time.perf_counter() - t0, 1))]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix('.tmp'); tmp.write_text(json.dumps({'summary': summary, 'runs': runs, 'notebooks': rs}, indent=1))
        tmp.replace(out)
    for q in paths:
        r = run_one(q, a.timeout, Path(a.executed) if a.executed else None)
        r['run_started'] = run['started']
        by_name[q.name] = r
        print(f"{q.name:28} {r['seconds']:7.1f}s ok={r['ok']} images={r['images']} load={r['loadavg_end'][0]:.1f}"
              + (f"  {r.get('error')}" if not r['ok'] else ''), flush=True)
        save()

if __name__ == '__main__': main()
