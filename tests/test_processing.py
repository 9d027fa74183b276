"""BlipProcessor against transformers 5's BlipProcessor + BertTokenizerFast.

No hub access: a BERT-style vocabulary (bert-base-uncased special-token ids, then WordPiece
pieces learned here with the `tokenizers` trainer) is written as Salesforce ships it
(vocab.txt + tokenizer_config.json + special_tokens_map.json + preprocessor_config.json).
transformers loads that directory and saves it again (tokenizer.json + processor_config.json);
ours is loaded from both and must give the same ids, masks, decoded strings and pixel values.
"""

import argparse
import collections
import csv
import functools
import itertools
import json
import os
import random
import shutil
import string
import textwrap

import numpy as np
import pytest
import transformers
from PIL import Image
from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import WordPiece

from tfblip.processing import BlipProcessor

# Characters kept out of the vocabulary so that the [UNK] path is exercised.
UNKNOWN_CHARS = "😀🚀🎉€ß→ñ"

SENTENCES = [
    "a photo of a cat sitting on the couch next to a remote control",
    "a man riding a horse on the beach at sunset",
    "what color is the umbrella the woman is holding?",
    "how many people are walking in the park? there are three.",
    "the astronaut stands in front of an american flag, smiling.",
    "don't, can't, won't, isn't, it's, i'm, we've, they're, you'll, she'd",
    "cafe naive angstrom resume fiancee creme brulee jalapeno uber",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 0.5 1,000,000 99.9%",
    "visit https://www.example.com/path/index.html?q=1&lang=en or mail a@b.org",
    "中文字符 日本語 漢字 東京 한국어 사람 画像 说明 猫 狗",
    "punctuation ! ? . , ; : ' \" ( ) [ ] { } - _ / \\ @ # $ % ^ & * + = < > ~ `",
]
MODULES = [argparse, collections, csv, functools, itertools, json, shutil, string, textwrap]

CORPUS = [
    "A photo of a cat.",
    "Hello, World! How are you?",
    "What is the man in the picture doing???",
    "Café, naïve, Ångström, résumé, fiancée, crème brûlée, jalapeño, Über",
    "MiXeD CaSe TeXt With UPPER and lower",
    "中文字符",
    "日本語のテキスト",
    "한국어 문장",
    "mixed 中文 and english 日本語 text",
    "emoji 😀 and rocket 🚀 party 🎉",
    "price: €5, straße → ñandú",
    "numbers 3.14159, 1,000,000 and 42% of 2024",
    "see https://www.example.com/path/index.html?q=1&x=2#frag",
    "   extra    whitespace   everywhere   ",
    "tabs\there\tand\nnewlines\r\nand control\x00chars\x07 here\u200b",
    "",
    " ",
    "don't can't won't it's i'm they're we've",
    "supercalifragilisticexpialidocious " + "x" * 150,
    "hello [DEC] world [ENC] and [CLS] x [SEP] y [dec] [MASK] [PAD] [UNK]",
    "[DEC]a photography of",
    "#hashtag @mention $dollar %percent ^caret &amp *star",
]
LONG_TEXT = " ".join(SENTENCES * 12)

# transformers warns when max_length is passed with padding=True and no truncation.
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")


def _training_texts():
    texts = list(SENTENCES)
    for module in MODULES:
        texts.append(module.__doc__ or "")
        for name, obj in sorted(vars(module).items()):
            doc = getattr(obj, "__doc__", None)
            if not name.startswith("_") and isinstance(doc, str):
                texts.append(doc)
    rng = random.Random(0)
    words = " ".join(SENTENCES).split()
    texts += [" ".join(rng.choices(words, k=12)) for _ in range(200)]
    return [t for t in texts if not any(c in t for c in UNKNOWN_CHARS)]


def _build_vocab(size=3000):
    trainer_tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    trainer_tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    trainer_tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator(_training_texts(), trainer=trainer)
    learned = sorted(trainer_tok.get_vocab().items(), key=lambda kv: kv[1])

    # bert-base-uncased layout: [PAD] 0, [unused0..98] 1..99, [UNK] 100, [CLS] 101, [SEP] 102,
    # [MASK] 103, more [unused] fillers, then the word pieces.
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 130)]
    seen = set(vocab)
    for token, _ in learned:
        if token not in seen and not any(c in token for c in UNKNOWN_CHARS):
            vocab.append(token)
            seen.add(token)
    return vocab


def _write_salesforce_dir(directory, vocab, image_processor, **config_overrides):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in vocab))
    config = {
        "bos_token": "[DEC]",
        "cls_token": "[CLS]",
        "do_basic_tokenize": True,
        "do_lower_case": True,
        "mask_token": "[MASK]",
        "model_max_length": 512,
        "name_or_path": "bert-base-uncased",
        "never_split": None,
        "pad_token": "[PAD]",
        "processor_class": "BlipProcessor",
        "sep_token": "[SEP]",
        "special_tokens_map_file": None,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
        **config_overrides,
    }
    special_tokens_map = {
        "additional_special_tokens": ["[ENC]"],
        "bos_token": "[DEC]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }
    for name, obj in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special_tokens_map),
    ):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
    image_processor.save_pretrained(directory)  # preprocessor_config.json


@pytest.fixture(scope="module")
def vocab():
    return _build_vocab()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, vocab):
    """(Salesforce-style dir with vocab.txt, transformers-saved dir with tokenizer.json)."""
    root = tmp_path_factory.mktemp("blip_processor")
    vocab_dir, json_dir = str(root / "vocab"), str(root / "json")
    _write_salesforce_dir(vocab_dir, vocab, transformers.BlipImageProcessorPil())
    tokenizer = transformers.BertTokenizerFast.from_pretrained(vocab_dir)
    reference = transformers.BlipProcessor(transformers.BlipImageProcessorPil(), tokenizer)
    reference.save_pretrained(json_dir)
    assert os.path.isfile(os.path.join(json_dir, "tokenizer.json"))
    assert not os.path.isfile(os.path.join(json_dir, "vocab.txt"))
    return vocab_dir, json_dir


@pytest.fixture(scope="module")
def ref(dirs):
    tokenizer = transformers.BertTokenizerFast.from_pretrained(dirs[0])
    return transformers.BlipProcessor(transformers.BlipImageProcessorPil(), tokenizer)


@pytest.fixture(scope="module", params=["vocab_txt", "tokenizer_json"])
def ours(request, dirs):
    return BlipProcessor.from_pretrained(dirs[0 if request.param == "vocab_txt" else 1])


@pytest.fixture(scope="module")
def images():
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    return [astronaut.resize((64, 48)), astronaut.crop((100, 0, 400, 200)).resize((40, 70))]


def _as_lists(encoding):
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in encoding.items()}


def _assert_same_text_outputs(ours_out, ref_out):
    ref_out = {k: v for k, v in ref_out.items() if k != "pixel_values"}
    ours_out = {k: v for k, v in ours_out.items() if k != "pixel_values"}
    assert set(ours_out) == {"input_ids", "attention_mask"} == set(ref_out)
    assert _as_lists(ours_out) == _as_lists(ref_out)


def test_fixture_sanity(vocab, ref):
    tok = ref.tokenizer
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [
        0,
        100,
        101,
        102,
        103,
    ]
    assert len(vocab) > 2000
    assert any(t.startswith("##") for t in vocab)
    assert "中" in vocab and "," in vocab and "7" in vocab
    # Characters left out of the vocabulary come out as [UNK].
    assert tok.unk_token_id in tok("emoji 😀 and €")["input_ids"]


@pytest.mark.parametrize("text", CORPUS)
def test_single_text_matches_transformers(ours, ref, text):
    _assert_same_text_outputs(ours(text=text), ref(text=text))


def test_special_token_ids(ours, ref, vocab):
    tok = ref.tokenizer
    assert ours.bos_token_id == tok.bos_token_id == tok.convert_tokens_to_ids("[DEC]") == len(vocab)
    assert ours.enc_token_id == tok.convert_tokens_to_ids("[ENC]") == len(vocab) + 1
    assert ours.cls_token_id == tok.cls_token_id == 101
    assert ours.sep_token_id == tok.sep_token_id == 102
    assert ours.pad_token_id == tok.pad_token_id == 0
    assert ours.tokenizer.get_vocab_size() == len(tok)
    text = "[DEC] a picture of [ENC]"
    _assert_same_text_outputs(ours(text=text), ref(text=text))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": True},
        {"padding": "longest"},
        {"padding": "max_length", "max_length": 16},
        {"padding": "max_length", "max_length": 16, "truncation": True},
        {"padding": True, "truncation": True, "max_length": 12},
        {"padding": True, "max_length": 12},  # no truncation: max_length ignored
        {"truncation": True, "max_length": 10},
        {"truncation": "only_first", "max_length": 10},
        {"truncation": "longest_first", "max_length": 10},
        {"max_length": 10},  # max_length alone turns truncation on
        {"truncation": False, "max_length": 10},
        {"padding": "max_length"},  # pads to model_max_length (512)
        {"add_special_tokens": False},
        {"add_special_tokens": False, "padding": True, "truncation": True, "max_length": 7},
        {"padding": "do_not_pad", "truncation": None},
    ],
)
def test_batch_matches_transformers(ours, ref, kwargs):
    _assert_same_text_outputs(ours(text=CORPUS, **kwargs), ref(text=CORPUS, **kwargs))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"truncation": True},
        {"truncation": True, "max_length": 20},
        {"max_length": 20},
        {"padding": "max_length", "truncation": True},
        {"add_special_tokens": False, "truncation": True, "max_length": 20},
    ],
)
def test_long_text_matches_transformers(ours, ref, kwargs):
    ours_out, ref_out = ours(text=LONG_TEXT, **kwargs), ref(text=LONG_TEXT, **kwargs)
    _assert_same_text_outputs(ours_out, ref_out)
    if kwargs.get("truncation"):
        assert len(ours_out["input_ids"]) == kwargs.get("max_length", 512)
    batch_kwargs = {"padding": True, **kwargs}
    _assert_same_text_outputs(
        ours(text=[LONG_TEXT, "short"], **batch_kwargs),
        ref(text=[LONG_TEXT, "short"], **batch_kwargs),
    )


def test_return_tensors(ours, ref):
    import tensorflow as tf

    batch = ["a photo of a cat", "two dogs", ""]
    ref_np = ref(text=batch, padding=True, return_tensors="np")
    ours_np = ours(text=batch, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask"):
        assert isinstance(ours_np[key], np.ndarray)
        assert ours_np[key].dtype == ref_np[key].dtype == np.int64
        np.testing.assert_array_equal(ours_np[key], ref_np[key])
    # A single string still gets a batch axis, as in transformers.
    single_ref, single = (
        ref(text="a cat", return_tensors="np"),
        ours(text="a cat", return_tensors="np"),
    )
    assert single["input_ids"].shape == single_ref["input_ids"].shape == (1, 4)
    ours_tf = ours(text=batch, padding=True, return_tensors="tf")
    for key in ("input_ids", "attention_mask"):
        assert isinstance(ours_tf[key], tf.Tensor) and ours_tf[key].dtype == tf.int32
        np.testing.assert_array_equal(ours_tf[key].numpy(), ref_np[key])
    single_tf = ours(text="a cat", return_tensors="tf")
    assert single_tf["input_ids"].shape == (1, 4)
    plain = ours(text=batch)
    assert isinstance(plain["input_ids"], list) and isinstance(plain["input_ids"][0], list)
    assert isinstance(ours(text="a cat")["input_ids"][0], int)
    with pytest.raises(ValueError, match="padding"):
        ours(text=batch, return_tensors="np")


def test_decode_matches_transformers(ours, ref):
    tok = ref.tokenizer
    encoded = tok(CORPUS + [LONG_TEXT], truncation=True)["input_ids"]
    with_bos = [[tok.bos_token_id] + ids[1:] for ids in encoded]
    padded = tok(CORPUS, padding=True)["input_ids"]
    extra = [[tok.bos_token_id, 5, 120, 200, 101, 0, len(tok) - 1], []]
    for sequences in (encoded, with_bos, padded, extra):
        for skip in (False, True):
            expected = tok.batch_decode(sequences, skip_special_tokens=skip)
            assert ours.batch_decode(sequences, skip_special_tokens=skip) == expected
            assert [ours.decode(s, skip_special_tokens=skip) for s in sequences] == expected
            assert [tok.decode(s, skip_special_tokens=skip) for s in sequences] == expected
    array = np.asarray(padded)
    assert ours.batch_decode(array) == tok.batch_decode(padded)
    assert ours.decode(array[0], skip_special_tokens=True) == tok.decode(padded[0], True)


def test_decode_tf_tensors(ours, ref):
    import tensorflow as tf

    ids = ref.tokenizer(CORPUS[:4], padding=True)["input_ids"]
    expected = ref.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert ours.batch_decode(tf.constant(ids, tf.int32), skip_special_tokens=True) == expected
    assert ours.decode(tf.constant(ids[0], tf.int64), skip_special_tokens=True) == expected[0]


def test_images_and_text_match_transformers(ours, ref, images):
    texts = ["a picture of", "an astronaut"]
    ref_out = ref(images=images, text=texts, padding=True, return_tensors="np")
    ours_out = ours(images=images, text=texts, padding=True, return_tensors="np")
    assert set(ours_out) == {"pixel_values", "input_ids", "attention_mask"} == set(ref_out)
    assert ours_out["pixel_values"].shape == ref_out["pixel_values"].shape == (2, 3, 384, 384)
    np.testing.assert_allclose(ours_out["pixel_values"], ref_out["pixel_values"], atol=1e-5)
    _assert_same_text_outputs(ours_out, ref_out)
    images_only = ours(images=images[0], return_tensors="np")
    assert set(images_only) == {"pixel_values"}
    np.testing.assert_allclose(
        images_only["pixel_values"],
        ref(images=images[0], return_tensors="np")["pixel_values"],
        atol=1e-5,
    )


def test_save_pretrained_round_trip(ours, ref, images, tmp_path):
    out = str(tmp_path / "saved")
    ours.save_pretrained(out)
    for name in (
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    reloaded_ref = transformers.BlipProcessor.from_pretrained(out)
    reloaded = BlipProcessor.from_pretrained(out)
    for kwargs in ({}, {"padding": True}, {"truncation": True, "max_length": 9, "padding": True}):
        expected = ref(text=CORPUS, **kwargs)
        _assert_same_text_outputs(reloaded_ref(text=CORPUS, **kwargs), expected)
        _assert_same_text_outputs(reloaded(text=CORPUS, **kwargs), expected)
    _assert_same_text_outputs(
        reloaded(text=LONG_TEXT, truncation=True), ref(text=LONG_TEXT, truncation=True)
    )
    assert (
        reloaded_ref.tokenizer.bos_token_id == reloaded.bos_token_id == ref.tokenizer.bos_token_id
    )
    ids = ref.tokenizer(CORPUS)["input_ids"]
    expected = ref.tokenizer.batch_decode(ids)
    assert reloaded_ref.tokenizer.batch_decode(ids) == expected == reloaded.batch_decode(ids)
    np.testing.assert_allclose(
        reloaded(images=images, return_tensors="np")["pixel_values"],
        reloaded_ref(images=images, return_tensors="np")["pixel_values"],
        atol=1e-5,
    )
    # A directory with only vocab.txt (no tokenizer.json) reloads the same.
    os.remove(os.path.join(out, "tokenizer.json"))
    _assert_same_text_outputs(BlipProcessor.from_pretrained(out)(text=CORPUS), ref(text=CORPUS))


@pytest.mark.parametrize(
    "overrides",
    [
        {"do_lower_case": False},
        {"do_lower_case": False, "strip_accents": True},
        {"strip_accents": False},
        {"tokenize_chinese_chars": False},
        {"clean_up_tokenization_spaces": True},
    ],
)
def test_tokenizer_config_options(vocab, tmp_path, overrides):
    directory = str(tmp_path / "variant")
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(), **overrides)
    tok = transformers.BertTokenizerFast.from_pretrained(directory)
    ours = BlipProcessor.from_pretrained(directory)
    for kwargs in ({}, {"padding": True, "truncation": True, "max_length": 24}):
        assert _as_lists(ours(text=CORPUS, **kwargs)) == _as_lists(
            {k: v for k, v in tok(CORPUS, **kwargs).items() if k != "token_type_ids"}
        )
    ids = tok(CORPUS + ["isn ' t it ' s . , !"])["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == tok.batch_decode(
            ids, skip_special_tokens=skip
        )


def test_errors(dirs, ours, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(dirs[0], "preprocessor_config.json"), empty)
    with pytest.raises(FileNotFoundError, match="empty"):
        BlipProcessor.from_pretrained(empty)
    with pytest.raises(FileNotFoundError):
        BlipProcessor.from_pretrained(tmp_path / "does_not_exist")
    with pytest.raises(ValueError):
        ours()
    with pytest.raises(TypeError, match="int"):
        ours(text=5)
    with pytest.raises(TypeError, match="int"):
        ours(text=["ok", 5])
    with pytest.raises(ValueError, match="padding"):
        ours(text="a", padding="sideways")
