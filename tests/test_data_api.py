"The data API on routing data from elsewhere: stray values, per-query costs, missing scores, duplicate ids, target order, splits, long shared prefixes."
import warnings
import numpy as np, pandas as pd, pytest
from query_router.core import Candidate
from query_router.data import *

def load_quiet(*a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore'); return load_routing_data(*a, **kw)

def test_a_stray_word_is_an_error_naming_file_row_and_column(tmp_path):
    f = tmp_path/'m.csv'
    f.write_text('prompt,gpt-4o,llama-8b\nhi,1,1\nprove it,1,0\nsort this,1,yes\n')
    with pytest.raises(ValueError, match=r"m\.csv: non-numeric score 'yes' in column 'llama-8b', row 2 \(line 4\)"): load_routing_data(f)
    f.write_text('prompt,gpt-4o,llama-8b\nhi,1,1\nprove it,1,0\nsort this,1,1\n')
    assert set(load_quiet(f).targets) == {'gpt-4o', 'llama-8b'} # both candidates kept

def test_without_prices_targets_are_ordered_weakest_first_with_a_warning():
    df = pd.DataFrame({'prompt': ['a', 'b', 'c'], 'aaa-strong': [1, 1, 1], 'zzz-weak': [1, 0, 0]})
    with pytest.warns(UserWarning, match='weakest first'): d = load_routing_data(df)
    assert d.targets == ['zzz-weak', 'aaa-strong'] and d.info['target_order'] == 'mean score (no prices)' and d.costs() is None

def test_per_query_costs_are_kept_ordered_and_labelled():
    df = pd.DataFrame({'prompt': ['a', 'b'], 'big': [1, 1], 'small': [1, 0], 'big|total_cost': [0.02, 0.04], 'small|total_cost': [0.001, 0.003]})
    d = load_routing_data(df)
    assert d.targets == ['small', 'big'] and d.cost_unit == '$/query' and d.info['target_order'] == 'mean per-query cost'
    assert np.allclose(d.costs(), [0.002, 0.03]) and np.allclose(d.cost_matrix(), [[0.001, 0.02], [0.003, 0.04]])
    cands = [Candidate('big', 70, 1, 1), Candidate('small', 7, .1, .1)]
    assert load_routing_data(pd.DataFrame({'prompt': ['a'], 'big': [1], 'small': [0]}), cands).cost_unit == '$/Mtok'
    with pytest.raises(ValueError, match="cost columns {'big': 'nope'} not found"): load_routing_data(df, cost_cols={'big': 'nope', 'small': 'small|total_cost'})

def test_missing_scores_error_drop_or_fill_and_say_how_many():
    df = pd.DataFrame({'prompt': list('abcd'), 'big': [1, None, 1, 1], 'small': [1, 0, None, None]})
    cands = [Candidate('big', 70, 1, 1), Candidate('small', 7, .1, .1)]
    with pytest.raises(ValueError, match=r"missing scores in 3 rows \(\{'big': 1, 'small': 2\}"): load_routing_data(df, cands)
    with pytest.warns(UserWarning, match='dropped 3 rows'): d = load_routing_data(df, cands, missing='drop')
    assert d.ids == ['0'] and d.info['missing']['dropped_rows'] == 3
    with pytest.warns(UserWarning, match='filled 3 missing scores in 3 rows with 0.5'): f = load_routing_data(df, cands, missing='fill:0.5')
    assert len(f) == 4 and f.info['missing']['filled_cells'] == 3 and f.scores()[2].tolist() == [0.5, 1]
    with pytest.raises(ValueError, match="missing must be"): load_routing_data(df, cands, missing='skip')

def test_duplicate_ids_are_named_or_the_first_kept():
    df = pd.DataFrame({'id': ['x', 'y', 'x', 'y', 'z'], 'question': list('abcde'), 'label': ['3B'] * 5})
    with pytest.raises(ValueError, match=r"2 rows repeat an id: id 'x' on rows \[0, 2\]; id 'y' on rows \[1, 3\]; pass duplicates='first'"): load_routing_data(df)
    d = load_quiet(df, duplicates='first')
    assert d.ids == ['x', 'y', 'z'] and d.queries == ['a', 'b', 'e'] and d.info['duplicates']['dropped_rows'] == 2

def test_grouped_split_of_few_groups_is_refused_and_kfold_covers_every_row():
    d = load_routing_data(pd.DataFrame({'question': [f'q{i}' for i in range(30)], 'label': ['3B', '70B'] * 15, 'topic': [f't{i % 3}' for i in range(30)]}))
    with pytest.raises(ValueError, match='only 2 groups for 3 parts'): split_data(d.subset([i for i in range(30) if i % 3 != 2]), 'grouped')
    folds = kfold(d, 3, 'grouped')
    assert sorted(sum([te.ids for _, te in folds], [])) == sorted(d.ids)
    assert all(not set(tr.groups) & set(te.groups) for tr, te in folds)
    with pytest.raises(ValueError, match='needs at least 5 groups'): kfold(d, 5, 'grouped')
    assert split_part(d, 'all') is d and len(split_part(d, 'train', 'random')) == 18

def test_long_shared_prefixes_give_identical_embeddings_and_the_views_fix_it(embedder):
    shots = 'System: you answer briefly.\n' + '\n'.join(f'Q: what is {i} times {i}?\nA: {i * i}.' for i in range(80))
    long = [shots + f'\nQ: {q}' for q in ['prove that there are infinitely many primes', 'what is the capital of Peru', 'write a haiku about rain']]
    full = duplicate_embedding_share(embedder.encode(long), long)
    with pytest.warns(UserWarning, match='identical embedding'): warn_duplicate_embeddings(embedder.encode(long), long)
    assert full == 1.0
    for view in ('last_turn', 'head_tail'):
        assert duplicate_embedding_share(embedder.encode(text_view(long, view)), long) == 0.0, view
