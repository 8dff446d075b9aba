import pytest

from magjax.models.tokenizer import ByteTokenizer, ChatFormat, HFTokenizer, TokenizerError, load_tokenizer


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "<think>Ça fait 3/4 — 四分之三, три четверти</think>\\boxed{\\frac{3}{4}}\n```python\nprint(1)\n```"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size == 272
    assert tok.encode("<think>") == [tok.vocab_size - len(tok.WORDS)]  # one whole token
    assert tok.decode([tok.bos_id, *tok.encode("a"), tok.eos_id]) == "a"


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
