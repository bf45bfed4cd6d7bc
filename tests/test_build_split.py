"`query-router build --split` and the column options: build on one part, calibrate on another, name custom columns."
import json, random
import pandas as pd, pytest
from query_router.cli import main
from query_router.core import data_dir
from query_router.data import load_routing_data, split_part

@pytest.fixture(scope='module')
def small_csv(tmp_path_factory):
    "120 rows of the default dataset, as a user's own file."
    p = tmp_path_factory.mktemp('split')/'mine.csv'
    pd.read_csv(data_dir()/'routing_dataset.csv').sample(120, random_state=0).to_csv(p, index=False)
    return p

def test_build_on_train_then_calibrate_on_valid(small_csv, tmp_path, capsys):
    cands, out = str(data_dir()/'candidates.json'), tmp_path/'knn'
    assert main(['build', '--out', str(out), '--data', str(small_csv), '--candidates', cands, '--split', 'train', '--how', 'random', '--k', '5']) == 0
    train = split_part(load_routing_data(small_csv, None), 'train', 'random', 0)
    assert json.loads((out/'manifest.json').read_text())['n_points'] == len(train) < 120
    # the valid part is held out: calibration accepts it; the train part overlaps the index and is refused
    assert main(['calibrate', '--artifacts', str(out), '--data', str(small_csv), '--candidates', cands, '--split', 'valid', '--how', 'random', '--budget', '0.5']) == 0
    assert main(['calibrate', '--artifacts', str(out), '--data', str(small_csv), '--candidates', cands, '--split', 'train', '--how', 'random', '--budget', '0.5']) != 0
    assert "in the router's index" in capsys.readouterr().err

def test_custom_columns_from_the_command_line(tmp_path, capsys):
    rng = random.Random(0)
    rows = [{'prompt_text': f"question {i} about {'proofs' if i % 2 else 'greetings'}", 'note': 'x',
             'small': round(rng.random() * (0.3 if i % 2 else 1), 3), 'big': round(0.5 + rng.random() / 2, 3)} for i in range(60)]
    p = tmp_path/'own.csv'; pd.DataFrame(rows).to_csv(p, index=False)
    out = tmp_path/'tfidf'
    assert main(['build', '--router', 'tfidf', '--out', str(out), '--data', str(p), '--query_col', 'prompt_text', '--score_cols', 'small,big']) == 0
    m = json.loads((out/'manifest.json').read_text())
    assert sorted(t['name'] for t in m['targets']) == ['big', 'small']
    assert main(['build', '--router', 'tfidf', '--out', str(tmp_path/'bad'), '--data', str(p), '--query_col', 'nope']) != 0
    assert 'nope' in capsys.readouterr().err # a column that is not there is named

def test_split_does_not_apply_to_points(tmp_path, capsys):
    assert main(['build', '--out', str(tmp_path/'x'), '--points', 'p.jsonl', '--targets', 't.jsonl', '--split', 'train']) != 0
    assert '--points' in capsys.readouterr().err
