"Canonicalisation that generalises (issue 19): spelling, chat templates and greetings it was not written from, and what it must leave alone."
import json, re, threading
from pathlib import Path
import pytest
from query_router.canonical import Canonicalizer, load_canon_spec, make_step, package_file, as_canonicalizer, SPEC_VERSION
import query_router.canonical as canonical

HERE = Path(__file__).parent
Q = 'Explain how a hash map handles collisions.'

@pytest.fixture(scope='module')
def canon(): return Canonicalizer(load_canon_spec())

@pytest.fixture(scope='module')
def end(): return Canonicalizer(load_canon_spec(steps=['end_punctuation'])) # the final punctuation, which every request loses

@pytest.fixture(scope='module')
def spelling(): return make_step('spelling', json.loads(package_file('canonical.json').read_text())['steps']['spelling'])

@pytest.mark.parametrize('typo,fixed', [
    ('Explain how a hash map handles colisions.', Q), ('Explian how a hash map handles collisions.', Q),
    ('Explain how a hash map hnadles collisions.', Q), ('Write a short storry about a dragon.', 'Write a short story about a dragon.'),
    ('What is the diffrence between a list and a tuple?', 'What is the difference between a list and a tuple?'),
    ('Summarize this artcile in three sentences.', 'Summarize this article in three sentences.'),
])
def test_typos_of_common_words_are_corrected(spelling, canon, typo, fixed):
    assert spelling(typo) == fixed
    assert canon(typo) == canon(fixed)

@pytest.mark.parametrize('text', [
    'Why does `hashmap_get()` return None for kyes?', 'Run ```python\nfor i in rnage(10): prnt(i)\n``` and explain', 'See https://exmaple.com/docs/instal for details',
    'Open /usr/lib/pythn3/site-packges and list it', 'Mail jhon.doe@exmaple.org about it', 'Use numpy, pandas and kubectl with postgres and redis',
    'The answer is 42, not 4200 or 3.14159', 'getUserNmae and get_user_nmae are identifiers', 'Compute sqrt(x) and log(y) for x = 16',
    'Ich möchte wissen, wie man einen Kuchen backt und was man dafür braucht', 'Proofread this: I recieved teh letter yesterday.',
    'Translate "Je voudrais un café" into English.', 'colour, color, centre, center, organise, organize',
])
def test_code_identifiers_urls_numbers_and_other_languages_are_left_alone(spelling, text):
    assert spelling(text) == text

def test_case_pattern_is_kept(spelling):
    assert spelling('Wirte a poem. Explian it.') == 'Write a poem. Explain it.'

def test_spelling_and_canonicalisation_are_idempotent(canon, spelling):
    from query_router.data import load_default_dataset
    from query_router.canonical import typos
    qs = load_default_dataset().frame['query'].tolist()[:300]
    for q in qs + [typos(q, 2) for q in qs]:
        once = canon(q)
        assert canon(once) == once, q
        assert spelling(spelling(q)) == spelling(q), q

def test_dictionary_loads_once_across_threads(monkeypatch):
    monkeypatch.setattr(canonical, '_WORDLISTS', {})
    loads = []
    real = canonical._symspell
    p = json.loads(package_file('canonical.json').read_text())['steps']['spelling']
    f = make_step('spelling', p)
    out = [None] * 8
    def go(i): out[i] = f('Explian recursion')
    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert out == ['Explain recursion'] * 8
    assert sum(k[0] == 'symspell' for k in canonical._WORDLISTS) == 1

SYS = 'You are a helpful assistant.'
@pytest.mark.parametrize('fmt,text', [
    ('chatml', f'<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n'),
    ('chatml multi-turn', f'<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n'),
    ('llama2', f'<s>[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\n{Q} [/INST]'),
    ('llama3', f'<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'),
    ('mistral', f'<s>[INST] {Q} [/INST]'),
    ('gemma', f'<bos><start_of_turn>user\n{Q}<end_of_turn>\n<start_of_turn>model\n'),
    ('phi3', f'<|user|>\n{Q}<|end|>\n<|assistant|>\n'),
    ('zephyr', f'<|system|>\n{SYS}</s>\n<|user|>\n{Q}</s>\n<|assistant|>\n'),
    ('alpaca', f'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{Q}\n\n### Response:\n'),
    ('vicuna', f"A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: {Q} ASSISTANT:"),
    ('human-assistant', f'Human: {Q}\n\nAssistant:'),
    ('user-assistant', f'User: {Q}\nAssistant:'),
    ('system-user', f'System: {SYS}\nUser: {Q}\nAssistant:'),
    ('system prompt', f'{SYS} Answer concisely.\n\n{Q}'),
    ('system prompt, AI', f'You are an AI assistant that helps people find information.\n{Q}'),
])
def test_chat_formats_yield_the_user_turn(canon, fmt, text):
    assert canon(text) == canon(Q) == Q[:-1], fmt # the user turn, without its final full stop

@pytest.mark.parametrize('text', [
    'Write a dialogue in which User: asks for the time and Assistant: answers.', 'Explain the role of the system prompt in a chat model.',
    'You are given an array of integers; return the largest sum of a contiguous subarray.', 'Summarise: Human: error rates fell in 2020.',
])
def test_prose_about_roles_is_left_alone(canon, end, text):
    assert canon(text) == end(text)

@pytest.mark.parametrize('text', [
    f'Hello there! {Q}', f'Good evening everyone, {Q}', f'Hey, hope you are doing well. {Q}', f'{Q}\n\nKind regards,\nMaria Lopez',
    f'{Q} Thanks a lot in advance!', f'{Q} Many thanks.', f'Bonsoir, {Q} Merci beaucoup et bonne soirée !', f'Buenas tardes. {Q} Muchas gracias, saludos.',
    f'Olá! {Q} Obrigada!', f'Salve, {Q}\n\nCordiali saluti\nLuca', f'Guten Tag, {Q}\n\nMit freundlichen Grüßen\nJonas', f'Goedemiddag, {Q} Alvast bedankt!',
    f'I was wondering if you could help me with something. {Q}', f'Sorry to bother you, but {Q}', f'Could you kindly help me? {Q}',
    f'Help please: {Q}', f'I have a question. {Q}', f'{Q} Any help would be greatly appreciated!',
])
def test_greetings_signoffs_and_politeness_are_removed(canon, text):
    assert canon(text) == canon(Q), text

@pytest.mark.parametrize('text', ['Hi!', 'Thanks!', 'Hello, how are you?', 'Write a thank you note to my aunt.', 'Translate "good morning" into Italian.',
                                  'Write a limerick that ends with "cheers".', 'One morning, a fox met a crow. Continue the story.'])
def test_requests_that_are_greetings_or_about_them_stay(canon, end, text):
    assert canon(text) == end(text)

def test_unmodified_default_queries_change_rarely(canon, spelling, end):
    "Measured on the whole default dataset (bench/canonical_spelling.py has the per-step shares and examples): the spelling step changes ~3.5% of requests (real typos, and unknown acronyms and names one edit from a dictionary word, since it decides case-blind so that casing never changes a route); every step together (whitespace aside) ~10%, nearly all of it the greetings and sign-offs the default data's requests carry."
    from query_router.data import load_default_dataset
    qs = load_default_dataset().frame['query'].tolist()
    ws = Canonicalizer(load_canon_spec(steps=['whitespace']))
    sp = sum(spelling(q) != q for q in qs) / len(qs)
    anything = sum(ws(canon(q)) != ws(end(q)) for q in qs) / len(qs) # beyond whitespace and the final punctuation
    wrap = Canonicalizer(load_canon_spec(steps=['chat_turn', 'chat_tokens', 'generic_system_prompt', 'system_prompt', 'markdown']))
    structural = sum(ws(wrap(q)) != ws(q) for q in qs) / len(qs)
    assert sp <= 0.05, sp
    assert anything <= 0.15, anything
    assert structural <= 0.005, structural

def test_old_specs_apply_exactly_the_old_steps():
    "An artifact built before spec version 2 stores a version-1 spec (regex steps only); it keeps routing on exactly the text it was built with."
    d = json.loads((HERE/'canonical_v1_spec.json').read_text())
    c = as_canonicalizer(d['spec'])
    assert c.names == [s for s, _ in d['spec']['steps']] and 'spelling' not in c.names
    assert c(d['texts']) == d['expected']

def test_old_spec_through_an_artifact(tmp_path):
    from query_router.data import load_default_dataset
    from query_router.knn import build_artifacts
    from query_router.artifacts import load_manifest, load_router
    spec = json.loads((HERE/'canonical_v1_spec.json').read_text())['spec']
    p = build_artifacts(tmp_path/'v1', load_default_dataset().subset(range(60)), n_trees=2, progress=False, canonicalize=spec)
    assert load_manifest(p)['settings']['canonicalize'] == spec
    r = load_router(p)
    assert r.canonicalizer().names == [s for s, _ in spec['steps']]
    assert r.prepare(['Wirte a poem. Thanks!']) == ['Wirte a poem.'] # the old steps: no spelling

def test_default_spec_is_version_2_with_the_new_steps():
    spec = load_canon_spec()
    assert spec['version'] == SPEC_VERSION == 2
    assert {'spelling', 'chat_turn', 'phatic'} <= {s for s, _ in spec['steps']}

def test_newer_spec_and_bad_steps_fail_clearly():
    with pytest.raises(ValueError, match='version 3'): Canonicalizer({'version': 3, 'steps': []})
    with pytest.raises(ValueError, match="unknown kind 'vibes'"): Canonicalizer({'version': 2, 'steps': [['x', {'kind': 'vibes'}]]})
    with pytest.raises(ValueError, match="step 'x': bad parameters"): Canonicalizer({'version': 2, 'steps': [['x', {'kind': 'phatic'}]]})
