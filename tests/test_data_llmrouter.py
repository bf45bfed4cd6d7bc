"The data layer on the real LLMRouter outcomes (skipped where ../shared/data/llmrouter is absent)."
import numpy as np
from conftest import need_shared
from query_router.data import load_llmrouter, derive_labels

def test_llmrouter_loads_with_prices_cheapest_first():
    need_shared()
    tr, te = load_llmrouter('train'), load_llmrouter('test')
    assert (len(tr), len(te), len(tr.targets)) == (5608, 500, 9)
    c = tr.costs(); assert (np.diff(c) >= 0).all()
    best = tr.targets[int(tr.scores().mean(0).argmax())]
    assert best == 'llama-3.1-nemotron-51b-instruct'

def test_derived_labels_are_cheapest_good_enough():
    need_shared()
    d = load_llmrouter('test'); t = derive_labels(d, 0.5)
    s = d.scores(); pos = {n: i for i, n in enumerate(d.targets)}
    for row, lab in zip(s, t.labels):
        j = pos[lab]
        if (row >= 0.5).any(): assert row[j] >= 0.5 and not (row[:j] >= 0.5).any()
        else: assert row[j] == row.max()
