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
    "Measured on the whole default dataset (bench/canonical_spelling.py has the per-step shares and examples): the spelling step changes ~2% of requests (real typos, and a few unknown acronyms and names one edit from a dictionary word and rarer than wordfreq's Zipf 2.2, since it decides case-blind so that casing never changes a route); every step together (whitespace aside) ~10%, nearly all of it the greetings and sign-offs the default data's requests carry."
    from query_router.data import load_default_dataset
    qs = load_default_dataset().frame['query'].tolist()
    ws = Canonicalizer(load_canon_spec(steps=['whitespace']))
    sp = sum(spelling(q) != q for q in qs) / len(qs)
    anything = sum(ws(canon(q)) != ws(end(q)) for q in qs) / len(qs) # beyond whitespace and the final punctuation
    wrap = Canonicalizer(load_canon_spec(steps=['chat_turn', 'chat_tokens', 'generic_system_prompt', 'system_prompt', 'markdown']))
    structural = sum(ws(wrap(q)) != ws(q) for q in qs) / len(qs)
    assert sp <= 0.03, sp
    assert anything <= 0.15, anything
    assert structural <= 0.005, structural

@pytest.mark.parametrize('name', ['canonical_v1_spec.json', 'canonical_v2_spec.json'])
def test_old_specs_apply_exactly_the_old_steps(name):
    "An artifact stores the spec it was built with (version 1: regex steps only; version 2: kinds without version 3's parameters); it keeps routing on exactly the text it was built with, mistakes included."
    d = json.loads((HERE/name).read_text())
    c = as_canonicalizer(d['spec'])
    assert c.names == [s for s, _ in d['spec']['steps']] and ('spelling' in c.names) == (d['spec']['version'] >= 2)
    assert c(d['texts']) == d['expected']

def test_version_3_fixes_what_version_2_got_wrong(canon, end):
    "The texts in canonical_v2_spec.json that version 2 damaged (a question dropped, a number cut, an acronym and a name 'corrected', blanks unbolded) keep their task in version 3."
    d = json.loads((HERE/'canonical_v2_spec.json').read_text())
    for t, old in list(zip(d['texts'], d['expected']))[:5]:
        assert canon(t) == end(t) != old, t
    assert canon(d['texts'][5:]) == d['expected'][5:] # the small talk, typos and chat template still go

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

def test_default_spec_is_version_3_with_the_new_parameters():
    spec = load_canon_spec()
    assert spec['version'] == SPEC_VERSION == 3
    steps = dict(spec['steps'])
    assert {'spelling', 'chat_turn', 'phatic'} <= set(steps)
    assert {'content_chars', 'question_words', 'phatic_questions'} <= set(steps['phatic'])
    assert {'known_wordfreq', 'skip_digit_tokens'} <= set(steps['spelling'])

def test_newer_spec_and_bad_steps_fail_clearly():
    with pytest.raises(ValueError, match='version 4'): Canonicalizer({'version': 4, 'steps': []})
    with pytest.raises(ValueError, match='known_wordfreq must look like'): make_step('s', {**dict(load_canon_spec()['steps'])['spelling'], 'known_wordfreq': 2.2})
    with pytest.raises(ValueError, match="unknown kind 'vibes'"): Canonicalizer({'version': 2, 'steps': [['x', {'kind': 'vibes'}]]})
    with pytest.raises(ValueError, match="step 'x': bad parameters"): Canonicalizer({'version': 2, 'steps': [['x', {'kind': 'phatic'}]]})


CODE_TABLE = '''def grade(gpa):
    """Letter grades:
            > 3.7                A
            > 3.3                A-
    """'''

def test_digit_tokens_end_at_any_whitespace(spelling):
    "A word is left alone inside a token with a digit; the token ends at a newline or a tab as at a space."
    assert spelling('Use v2\nfucntion x.') == 'Use v2\nfunction x.'
    assert spelling('Use v2\tfucntion x.') == 'Use v2\tfunction x.'
    assert spelling('Heat penta-1,3-diene gently.') == 'Heat penta-1,3-diene gently.'
    assert spelling('a' * 5000 + ' Wirte 2x') == 'a' * 5000 + ' Write 2x' # a long token does not slow or confuse it

@pytest.mark.parametrize('text', [
    'You have transformed E. coli cells with pUC18 (pUC origin, AmpR). Do you expect this to be easy or difficult? How would you do this?',
    "What's the etiquette around bringing a plus-one to a wedding? When is it okay?",
    'git bisect says a docs commit broke the build. how?',
    'One 7.0 kg bowling ball is lifted to a shelf 1.0 m above the floor. Which force acts on it?',
    'If $0.\\overline{42}$ is written as a fraction $\\frac{a}{b}$, what is $a+b$?',
    '2026-11-26T03:14:07 ERROR disk full on /var. What does this log line mean?',
    'How do I install CUDA on Ubuntu?', 'What is SaaS and how is it priced?', 'Why is NaOH a strong base?',
    'What is the final season of downton abbey', 'Which book did Roald Dahl write about a chocolate factory?',
    'Name the product of (E)-penta-1,3-diene and maleic anhydride.', '____ burns from the energy of ____', CODE_TABLE,
    'Instruction: fold the paper twice. Why does it tear?', 'The <human> tag in this XML: what is it for?', 'Is it dumb to buy a house now?',
])
def test_task_text_is_left_alone(canon, text):
    "Found on real prompts (LLMRouter and the default data): questions made of common words, numbers and formulas, acronyms, names, terms, fill-in blanks and indented code carry the task."
    assert canon(text) == Canonicalizer(load_canon_spec(steps=['end_punctuation', 'whitespace']))(text)

@pytest.mark.parametrize('text,request_', [
    ('Hi, how are you? What is 2+2?', 'What is 2+2'), ('Hey! How was your weekend? Explain TCP.', 'Explain TCP'),
    ('good morning!! how are you doing? what causes jet lag?', 'what causes jet lag'),
    ("What causes jet lag? How's it going?", 'What causes jet lag'), ('Dear Grace, How are you? Explain TCP.', 'Explain TCP'),
    ('> What is a monad?', 'What is a monad'), ('**What is a monad?**', 'What is a monad'),
    ('Sorry if this is a dumb question, but explain TCP.', 'explain TCP'), ('Just curious — Explain TCP.', 'Explain TCP'),
    ('Howdy! Explain TCP. Much obliged.', 'Explain TCP'), ('Instruction: Explain TCP.\nResponse:', 'Explain TCP'), ('<human>: Explain TCP.\n<bot>:', 'Explain TCP'),
])
def test_small_talk_questions_and_wrapping_still_go(canon, text, request_):
    assert canon(text) == request_

def test_real_prompts_keep_numbers_and_questions(canon):
    "On every LLMRouter prompt: no token with a digit changes, and every question that is not small talk keeps its words (spelling aside)."
    from conftest import need_shared
    need_shared()
    from query_router.core import shared_data_dir
    spec = dict(load_canon_spec()['steps'])['phatic']
    small_talk, qw = re.compile(spec['phatic_questions'], re.I), set(spec['question_words'].split())
    def digit_tokens(t): return sorted(w.rstrip('.?!:;') for w in re.findall(r"\S*\d\S*", t))
    bad, no_spelling = [], Canonicalizer(load_canon_spec(steps=[s for s in canon.names if s != 'spelling']))
    for f in ('train.jsonl', 'test.jsonl'):
        for line in (shared_data_dir()/f).read_text().splitlines():
            t = json.loads(line)['prompt']; c = canon(t); cw = set(re.findall(r"\w+", no_spelling(t)))
            if digit_tokens(t) != digit_tokens(c): bad.append(('digits', t[:120]))
            for q in re.findall(r"[^.?!,;:\n]*\?", t): # the clause that asks
                ws = re.findall(r"\w+", q)
                if {w.lower() for w in ws} & qw and not small_talk.fullmatch(q.strip()) and not set(ws) <= cw: bad.append(('question', q.strip()[:120]))
    assert not bad, bad[:10]
