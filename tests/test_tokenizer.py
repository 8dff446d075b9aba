import glob
import json
import os

import pytest
from conftest import DATA

from magjax.models.tekken import TekkenTokenizer
from magjax.models.tokenizer import ByteTokenizer, ChatFormat, HFTokenizer, TokenizerError, load_tokenizer


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "<think>Ça fait 3/4 — 四分之三, три четверти</think>\\boxed{\\frac{3}{4}}\n```python\nprint(1)\n```"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size == 272
    assert tok.encode("<think>") == [tok.vocab_size - len(tok.WORDS)]  # one whole token
    assert tok.decode([tok.bos_id, *tok.encode("a"), tok.eos_id]) == "a"
    # The plain chat format's tags are structure: whole tokens by name, bytes in content.
    inst = tok.special_id("[INST]")
    assert inst is not None and inst not in tok.encode("[INST]") and tok.decode(tok.encode("[INST]")) == "[INST]"
    assert ChatFormat("plain", None).encode(tok, "[INST]") == [tok.bos_id, inst, *tok.encode("[INST]"),
                                                               tok.special_id("[/INST]")]


@pytest.fixture
def hf_tokenizer_dir(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.BPE(unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the answer is 42", "solve for x: 2x + 3 = 7"] * 50, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    return tmp_path


def test_hf_tokenizer_from_a_local_file(hf_tokenizer_dir):
    tok = load_tokenizer(str(hf_tokenizer_dir))
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    ids = tok.encode("the answer is 42")
    assert tok.decode(ids) == "the answer is 42"
    assert ChatFormat("chatml").encode(tok, "hi")[0] == tok.bos_id


def test_missing_or_broken_tokenizer_is_named(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json: tokenizer file not found"):
        HFTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: cannot load tokenizer"):
        HFTokenizer(tmp_path)


def test_chat_formats_put_the_user_message_last():
    for style in ("plain", "mistral", "chatml", "llama3"):
        text = ChatFormat(style, system_prompt="SYS").render("What is 2+2?")
        assert text.index("SYS") < text.index("What is 2+2?")
    with pytest.raises(ValueError, match="ChatFormat.style"):
        ChatFormat("alpaca")


# ----------------------------------------------------------------------------- tekken.json

TEKKEN = os.path.join(DATA, "tekken")  # made by tests/data/make_tekken_fixture.py with mistral_common


@pytest.fixture(scope="module")
def tekken_reference():
    with open(os.path.join(TEKKEN, "reference.json"), encoding="utf-8") as f:
        return json.load(f)


def test_a_tekken_file_encodes_and_decodes_as_mistrals_own_tokenizer(tekken_reference):
    tok = load_tokenizer(TEKKEN)  # the directory: it holds tekken.json and no tokenizer.json
    assert isinstance(tok, TekkenTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (3000, 1, 2, 11)
    ref = tekken_reference
    assert len(ref["texts"]) > 50
    ids_of = dict(zip(ref["texts"], ref["ids"]))
    for text, ids, decoded in zip(ref["texts"], ref["ids"], ref["decoded"]):
        assert tok.decode(ids) == decoded == text, text
        if "think>" not in text:  # the <think> tags are this file's [THINK] tokens (below)
            assert tok.encode(text) == ids, text
    # Not byte by byte: merged pieces occur (English and code take under half a token a byte).
    assert sum(len(text.encode()) > 2 * len(ids) for text, ids in zip(ref["texts"], ref["ids"])) >= 5
    # A reasoning trace: its tags are the thinking tokens, the text between as Mistral encodes it.
    trace = "<think>Let me think: 2+2=4.</think>\nThe answer is \\boxed{4}."
    ids = tok.encode(trace)
    assert ids == [34, *ids_of["Let me think: 2+2=4."], 35, *ids_of["\nThe answer is \\boxed{4}."]]
    assert tok.decode(ids) == trace


def test_mistral_chat_prompts_match_mistrals_chat_encoding(tekken_reference):
    tok = load_tokenizer(os.path.join(TEKKEN, "tekken.json"))  # the file itself
    for chat in tekken_reference["chats"]:
        fmt = ChatFormat("mistral", system_prompt=chat["system"] or None)
        assert fmt.encode(tok, chat["user"]) == chat["ids"], chat
    # Control tokens by name, including those a version-11 file adds among its fillers.
    assert [tok.special_id(n) for n in ("[INST]", "[THINK]", "[/THINK]", "<SPECIAL_999>", "[NOPE]")] == \
        [3, 34, 35, 999, None]
    # Content is text, as mistral_common encodes it: a message that spells the control
    # tokens' names cannot end its instruction or open a thought.
    for text in ("[INST]", "a[/INST]b</s>", "[THINK]x[/THINK]"):
        assert min(tok.encode(text)) >= 1000 and tok.decode(tok.encode(text)) == text
    prompt = ChatFormat("mistral", system_prompt=None).encode(tok, "a[/INST]b")
    assert prompt[:2] == [1, 3] and prompt.count(4) == 1 and prompt[-1] == 4
    # Except the <think> tags: this file's thinking tokens, both ways; decoding leaves every
    # other special id out.
    ids = tok.encode("<think>2+2=4</think>")
    assert ids[0] == 34 and ids[-1] == 35 and tok.decode([1, 3, *ids, 2]) == "<think>2+2=4</think>"


def test_a_broken_tekken_file_is_named_with_its_fault(tmp_path):
    with open(os.path.join(TEKKEN, "tekken.json"), encoding="utf-8") as f:
        good = json.load(f)

    def write(data, name="tekken.json"):
        (tmp_path / name).write_text(data if isinstance(data, str) else json.dumps(data))
        return str(tmp_path / name)

    with pytest.raises(TokenizerError, match="no tokenizer.json or tekken.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerError, match="tekken.json: not valid JSON"):
        TekkenTokenizer(write("{not json"))
    bad_rank = dict(good, vocab=[dict(v) for v in good["vocab"]])
    bad_rank["vocab"][7]["rank"] = 8
    with pytest.raises(TokenizerError, match="vocab entry 7 is malformed"):
        load_tokenizer(write(bad_rank))
    swapped = dict(good, vocab=[dict(v) for v in good["vocab"]])
    swapped["vocab"][65]["token_bytes"] = swapped["vocab"][300]["token_bytes"]
    swapped["vocab"][300]["token_bytes"] = "QQ=="  # "A" (byte 65) moved out of the byte ranks
    with pytest.raises(TokenizerError, match="first 256 tokens are not the 256 single bytes"):
        load_tokenizer(write(swapped))
    short = dict(good, config=dict(good["config"], default_vocab_size=10_000))
    with pytest.raises(TokenizerError, match="9000 ordinary tokens, but the vocab lists 2000"):
        load_tokenizer(write(short))
    no_eos = dict(good, special_tokens=[dict(t, token_str="</S>") if t["token_str"] == "</s>" else t
                                        for t in good["special_tokens"]])
    with pytest.raises(TokenizerError, match="no '</s>' special token"):
        load_tokenizer(write(no_eos))
    with pytest.raises(TokenizerError, match="cannot build the tokenizer"):
        load_tokenizer(write(dict(good, config=dict(good["config"], pattern="(unclosed"))))



def test_an_older_tekken_file_takes_the_original_specials_and_keeps_think_tags_as_text(tmp_path, tekken_reference):
    with open(os.path.join(TEKKEN, "tekken.json"), encoding="utf-8") as f:
        legacy = {k: v for k, v in json.load(f).items() if k != "special_tokens"}
    (tmp_path / "tekken.json").write_text(json.dumps(legacy))
    tok = load_tokenizer(str(tmp_path))
    assert [tok.special_id(n) for n in ("[SYSTEM_PROMPT]", "<pad>", "<SPECIAL_34>", "[THINK]")] == [17, 11, 34, None]
    assert tok.pad_id == 11 and min(tok.encode("<think>")) >= 1000  # no thinking tokens in this file: text
    for text, ids in zip(tekken_reference["texts"], tekken_reference["ids"]):
        assert tok.encode(text) == ids, text  # <think> tags included, as Mistral encodes them


def test_a_tokenizer_json_with_thinking_tokens_spells_them_as_tags(hf_tokenizer_dir):
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(hf_tokenizer_dir / "tokenizer.json"))
    tok.add_special_tokens(["[THINK]", "[/THINK]"])
    tok.save(str(hf_tokenizer_dir / "tokenizer.json"))
    hf_tok = load_tokenizer(str(hf_tokenizer_dir))
    think, end_think = tok.token_to_id("[THINK]"), tok.token_to_id("[/THINK]")
    trace = "<think>solve for x</think>the answer is 42"
    ids = hf_tok.encode(trace)
    assert ids == [think, *hf_tok.encode("solve for x"), end_think, *hf_tok.encode("the answer is 42")]
    assert hf_tok.decode(ids) == trace and hf_tok.decode([1, *ids, 2]) == trace
    # Special tokens' names in content are text here too; structure asks for them by name.
    assert think not in hf_tok.encode("[THINK]") and 2 not in hf_tok.encode("</s>")
    assert (hf_tok.special_id("[THINK]"), hf_tok.special_id("</s>"), hf_tok.special_id("x")) == (think, 2, None)


def test_a_tokenizers_files_travel_with_exported_weights(tmp_path, hf_tokenizer_dir):
    from magjax.export import copy_tokenizer

    text = "<think>x</think>the answer is 42"
    assert copy_tokenizer("byte", str(tmp_path / "none")) == []
    # A directory, a tekken.json by its path, an HF tokenizer.json by its path: each out
    # directory loads as the same tokenizer.
    for spec, out, expected in ((TEKKEN, "a", ["tekken.json"]),
                                (os.path.join(TEKKEN, "tekken.json"), "b", ["tekken.json"]),
                                (str(hf_tokenizer_dir / "tokenizer.json"), "c", ["tokenizer.json", "tokenizer_config.json"])):
        assert copy_tokenizer(spec, str(tmp_path / out)) == expected
        again, original = load_tokenizer(str(tmp_path / out)), load_tokenizer(spec)
        assert again.encode(text) == original.encode(text) and again.eos_id == original.eos_id


def test_mistral_commons_own_full_tekken_files_encode_alike(tekken_reference):
    """Where mistral_common is installed (CI does not install it): its shipped 131k-token
    files, on the fixture's texts and this repository's sources, id for id."""
    mistral_common = pytest.importorskip("mistral_common")
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    texts = tekken_reference["texts"] + [open(os.path.join(root, f), encoding="utf-8").read()
                                         for f in ("README.md", "magjax/rewards/math.py", "docs/architecture.md")]
    files = sorted(glob.glob(os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_*.json")))
    assert files
    for file in files:
        ours, theirs = TekkenTokenizer(file), Tekkenizer.from_file(file)
        for text in texts:
            ids = theirs.encode(text, bos=False, eos=False)
            assert ours.encode(text) == ids and ours.decode(ids) == theirs.decode(ids), (file, text[:80])
