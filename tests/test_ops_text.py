"""GraphTokenizer (core TensorFlow ops) against BlipProcessor (the `tokenizers` library).

Every expected value comes from the processor at test time: ids and masks of
``processor(text=..., padding=True[, truncation=True, max_length=...])``, strings of
``processor.batch_decode(ids, skip_special_tokens=True)`` and, for the normalization table, the
words of the processor's own normalizer + pre-tokenizer on every Unicode code point.
"""

import json
import random
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
import transformers
from tensorflow.core.protobuf import saved_model_pb2
from test_processing import CORPUS, SENTENCES, _build_vocab, _write_salesforce_dir
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from tfblip.ops.text import GraphTokenizer
from tfblip.processing import BlipProcessor

EXTRA_TEXTS = [
    "non\u00a0breaking\u2003em\u3000ideographic\u202fnarrow",
    "ogham\u1680space\u2028line\u2029paragraph\x85next\u205fmath",
    "vertical\x0btab\x0cform feed\r\ncarriage\rreturn\t\ttabs",
    "zero\u200bwidth\u2060joiner soft\u00adhyphen bom\ufeffhere rtl\u200fmark",
    "\x00\x01\x1b[0m escape \x7f delete \x1c\x1d\x1e\x1f separators",
    "replacement \ufffd private \ue000\U000f0000 unassigned \u0378\U000e0001 nonchar \uffff",
    "İstanbul ΟΔΟΣ σοφός ǅemal ŉ ß ﬁne ＡＢＣ ｆｕｌｌ Ǆ",
    "e\u0301 combining a\u0308 o\u0323\u0302 n\u0303 x\u20dd",
    "한국어 사람 ᄀᄁ 힣 ㄱㄴ",
    "ひらがな カタカナ ｶﾀｶﾅ 〜〒 「引用」 ・",
    "兀 丽 \U00020000 \U0002a6d6 \U0002b820 \U0002ceaf 𠮷野家 ㈱ ⺀",
    "हिन्दी देवनागरी ไทย עברית العربية",
    "👍🏽 👨\u200d👩\u200d👧 🏳️\u200d🌈 🇫🇷 ❤️ ✨",
    "a" * 100,
    "b" * 101,
    "c" * 99 + "é",
    "photo€graph abc😀def the€",
    "[DEC][ENC][CLS][SEP] [DEC]x x[ENC] [[DEC]] [DE C] [dec] [PAD][PAD]",
    "http://a.b/c?d=e&f=g#h user@example.com 192.168.0.1 1e-5 -3 +4 ½ ² ⅷ",
    "\t \n ",
    "«quoted» “curly” ‘single’ — dash – ‐ … ¿qué? ¡sí!",
]
TEXTS = CORPUS + SENTENCES + EXTRA_TEXTS
OPTION_OVERRIDES = [
    {"do_lower_case": False},
    {"do_lower_case": False, "strip_accents": True},
    {"strip_accents": False},
    {"tokenize_chinese_chars": False},
]
TEXT_SPEC = tf.TensorSpec([None], tf.string)
IDS_SPEC = tf.TensorSpec([None, None], tf.int32)
# Serves the exported tokenizer with TensorFlow alone; argv: export dir, request, result paths.
# Importing tensorflow imports keras when it can, so keras and tfblip are made unimportable first:
# the export then provably needs neither.
CLIENT = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras"] = sys.modules["tfblip"] = None
    import tensorflow as tf
    export_dir, request_path, result_path = sys.argv[1:]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    signatures = tf.saved_model.load(export_dir).signatures
    encoded = signatures["tokenize"](texts=tf.constant(request["texts"]))
    decoded = signatures["detokenize"](token_ids=tf.constant(request["ids"], tf.int32))
    result = {
        "input_ids": encoded["input_ids"].numpy().tolist(),
        "attention_mask": encoded["attention_mask"].numpy().tolist(),
        "texts": [s.decode("utf-8") for s in decoded["texts"].numpy()],
        "imported": sorted(m for m in ("tfblip", "keras") if sys.modules.get(m) is not None),
    }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    """
)


@pytest.fixture(scope="module")
def vocab():
    return _build_vocab()


def _processor(directory, vocab, **overrides):
    _write_salesforce_dir(str(directory), vocab, transformers.BlipImageProcessorPil(), **overrides)
    return BlipProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def processor(tmp_path_factory, vocab):
    return _processor(tmp_path_factory.mktemp("processor"), vocab)


@pytest.fixture(scope="module")
def graph_tokenizer(processor):
    return GraphTokenizer(processor)


def _expected(processor, texts, **kwargs):
    encoded = processor(text=list(texts), padding=True, return_tensors="np", **kwargs)
    return encoded["input_ids"], encoded["attention_mask"]


def _assert_tokenized_like_processor(graph_tokenizer, processor, texts, **kwargs):
    """Returns how many non-padding ids were compared."""
    input_ids, attention_mask = graph_tokenizer.tokenize(tf.constant(texts))
    expected_ids, expected_mask = _expected(processor, texts, **kwargs)
    np.testing.assert_array_equal(input_ids.numpy(), expected_ids)
    np.testing.assert_array_equal(attention_mask.numpy(), expected_mask)
    assert input_ids.dtype == attention_mask.dtype == tf.int32
    return int(expected_mask.sum())


def _assert_detokenized_like_processor(graph_tokenizer, processor, ids):
    decoded = graph_tokenizer.detokenize(tf.constant(ids, tf.int32)).numpy()
    expected = processor.batch_decode(np.asarray(ids), skip_special_tokens=True)
    assert [s.decode("utf-8") for s in decoded] == expected


def _op_types(graph_def):
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


def test_corpus_matches_processor(graph_tokenizer, processor):
    assert len(TEXTS) == len(set(TEXTS))
    compared = _assert_tokenized_like_processor(graph_tokenizer, processor, TEXTS)
    for text in TEXTS:
        compared += _assert_tokenized_like_processor(graph_tokenizer, processor, [text])
    ids, _ = _expected(processor, TEXTS)
    # The corpus reaches the paths that matter: unknown words, added tokens in the text.
    assert processor.unk_token_id in ids and processor.bos_token_id in ids
    assert processor.enc_token_id in ids
    print(f"\ntokenize: {2 * len(TEXTS)} strings (batch, then one by one), {compared} ids equal")


@pytest.mark.parametrize("max_length", [2, 3, 8, 16, 40])
def test_truncation_matches_processor(processor, max_length):
    graph_tokenizer = GraphTokenizer(processor, max_length=max_length)
    kwargs = {"truncation": True, "max_length": max_length}
    _assert_tokenized_like_processor(graph_tokenizer, processor, TEXTS, **kwargs)
    _assert_tokenized_like_processor(graph_tokenizer, processor, [TEXTS[0]], **kwargs)


def test_random_words_match_processor(graph_tokenizer, processor, vocab):
    """Words glued from vocabulary pieces and stray characters: greedy longest match,
    continuation pieces and unmatchable rests."""
    rng = random.Random(0)
    stems = [t.removeprefix("##") for t in vocab if not t.startswith("[")]
    extras = list("abcxyzé€😀ß中")
    texts = [
        " ".join(
            "".join(rng.choice(stems if rng.random() < 0.8 else extras) for _ in range(4))
            for _ in range(rng.randint(1, 6))
        )
        for _ in range(300)
    ]
    compared = _assert_tokenized_like_processor(graph_tokenizer, processor, texts)
    print(f"\nrandom words: {len(texts)} strings, {compared} ids equal")


def _every_code_point(chunk_count=32):
    """Every Unicode scalar value, with a letter between each two so that a split, a drop or a
    character glued to its neighbours all show in the words."""
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    size = -(-len(code_points) // chunk_count)
    return ["x".join(map(chr, code_points[i : i + size])) for i in range(0, len(code_points), size)]


def _assert_words_match(graph_tokenizer, processor, texts):
    normalizer = processor.tokenizer.normalizer
    pre_tokenizer = processor.tokenizer.pre_tokenizer
    expected = [
        [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        for text in texts
    ]
    words = graph_tokenizer.split_words(tf.constant(texts)).to_list()
    actual = [[w.decode("utf-8") for w in row] for row in words]
    assert actual == expected
    return sum(len(row) for row in expected)


def test_every_code_point_normalizes_like_processor(graph_tokenizer, processor):
    compared = _assert_words_match(graph_tokenizer, processor, _every_code_point())
    print(f"\nnormalization: 1,112,064 code points, {compared} words equal")


@pytest.mark.parametrize("overrides", OPTION_OVERRIDES, ids=lambda o: json.dumps(o))
def test_normalizer_options_match_processor(tmp_path, vocab, overrides):
    processor = _processor(tmp_path / "variant", vocab, **overrides)
    graph_tokenizer = GraphTokenizer(processor)
    _assert_tokenized_like_processor(graph_tokenizer, processor, TEXTS)
    _assert_words_match(graph_tokenizer, processor, _every_code_point())


def test_invalid_utf8_reads_as_replacement_character(graph_tokenizer, processor):
    input_ids, _ = graph_tokenizer.tokenize(tf.constant([b"caf\xff\xfee photo\xc3"]))
    expected, _ = _expected(processor, ["caf\ufffd\ufffde photo\ufffd"])
    np.testing.assert_array_equal(input_ids.numpy(), expected)


def test_known_divergence_combining_mark_order(tmp_path, vocab):
    """Documented in tfblip.ops.text: canonical reordering of marks that survive accent stripping."""
    processor = _processor(tmp_path / "strip", vocab, strip_accents=True)
    graph_tokenizer = GraphTokenizer(processor)
    out_of_order = "x\U0001d16d\U0001d165y"  # combining classes 226, 216
    in_order = "x\U0001d165\U0001d16dy"
    normalize = processor.tokenizer.normalizer.normalize_str
    assert normalize(out_of_order) == normalize(in_order) == in_order
    words = graph_tokenizer.split_words(tf.constant([out_of_order, in_order])).to_list()
    assert words == [[out_of_order.encode()], [in_order.encode()]]


def _random_ids(processor, rows, rng):
    size = processor.tokenizer.get_vocab_size()
    named = ("pad", "cls", "sep", "unk", "mask", "bos", "enc")
    special = [getattr(processor, f"{name}_token_id") for name in named]
    special = [token_id for token_id in special if token_id is not None]
    width = 24
    ids = []
    for _ in range(rows):
        length = rng.randint(0, width)
        row = [
            rng.choice(special) if rng.random() < 0.2 else rng.randrange(size + 3)
            for _ in range(length)
        ]
        ids.append(row + [processor.pad_token_id] * (width - length))
    return ids


@pytest.mark.parametrize("clean_up", [False, True])
def test_detokenize_matches_batch_decode(tmp_path, vocab, clean_up):
    processor = _processor(tmp_path / "decode", vocab, clean_up_tokenization_spaces=clean_up)
    assert processor.clean_up_tokenization_spaces is clean_up
    graph_tokenizer = GraphTokenizer(processor)
    texts = TEXTS + ["isn ' t it ' s . , ! do not i ' m we ' ve they ' re", "##s ' ##t"]
    corpus_ids, _ = _expected(processor, texts)
    _assert_detokenized_like_processor(graph_tokenizer, processor, corpus_ids)
    random_ids = _random_ids(processor, 400, random.Random(clean_up))
    _assert_detokenized_like_processor(graph_tokenizer, processor, random_ids)
    compared = corpus_ids.size + len(random_ids) * len(random_ids[0])
    print(f"\ndetokenize (clean_up={clean_up}): {len(texts) + 400} rows, {compared} ids")


def test_tokenizer_without_added_tokens(vocab):
    """No added tokens (special-token strings are then plain text, and kept when decoding), a
    BertProcessing post-processor and a decoder without clean-up."""
    tokenizer = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizers.BertNormalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", 102), ("[CLS]", 101))
    tokenizer.decoder = decoders.WordPiece(cleanup=False)
    assert not tokenizer.get_added_tokens_decoder()
    processor = BlipProcessor(tokenizer=tokenizer)
    graph_tokenizer = GraphTokenizer(processor)
    _assert_tokenized_like_processor(graph_tokenizer, processor, TEXTS)
    corpus_ids, _ = _expected(processor, TEXTS)
    _assert_detokenized_like_processor(graph_tokenizer, processor, corpus_ids)
    random_ids = _random_ids(processor, 100, random.Random(2))
    _assert_detokenized_like_processor(graph_tokenizer, processor, random_ids)


def test_empty_batches(graph_tokenizer):
    input_ids, attention_mask = graph_tokenizer.tokenize(tf.constant([], tf.string))
    assert input_ids.shape[0] == attention_mask.shape[0] == 0
    assert graph_tokenizer.detokenize(tf.zeros([0, 3], tf.int32)).shape == (0,)
    assert graph_tokenizer.detokenize(tf.zeros([2, 0], tf.int32)).numpy().tolist() == [b"", b""]


def test_inside_tf_function_without_xla_ops(graph_tokenizer, processor):
    @tf.function(input_signature=[TEXT_SPEC])
    def round_trip(texts):
        input_ids, attention_mask = graph_tokenizer.tokenize(texts)
        return input_ids, attention_mask, graph_tokenizer.detokenize(input_ids)

    input_ids, attention_mask, decoded = round_trip(tf.constant(TEXTS))
    expected_ids, expected_mask = _expected(processor, TEXTS)
    np.testing.assert_array_equal(input_ids.numpy(), expected_ids)
    np.testing.assert_array_equal(attention_mask.numpy(), expected_mask)
    expected_texts = processor.batch_decode(expected_ids, skip_special_tokens=True)
    assert [s.decode("utf-8") for s in decoded.numpy()] == expected_texts
    op_types = _op_types(round_trip.get_concrete_function().graph.as_graph_def())
    assert {"While", "LookupTableFindV2", "StaticRegexReplace", "UnicodeDecode"} <= op_types
    assert not [op for op in op_types if op.startswith("Xla")]


class _Export(tf.Module):
    def __init__(self, graph_tokenizer):
        super().__init__()
        self.graph_tokenizer = graph_tokenizer

    @tf.function(input_signature=[TEXT_SPEC])
    def tokenize(self, texts):
        input_ids, attention_mask = self.graph_tokenizer.tokenize(texts)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @tf.function(input_signature=[IDS_SPEC])
    def detokenize(self, token_ids):
        return {"texts": self.graph_tokenizer.detokenize(token_ids)}


def test_saved_model_served_by_tensorflow_alone(tmp_path, processor):
    graph_tokenizer = GraphTokenizer(processor, max_length=12)
    export = _Export(graph_tokenizer)
    saved_dir = tmp_path / "saved"
    tf.saved_model.save(
        export,
        str(saved_dir),
        signatures={"tokenize": export.tokenize, "detokenize": export.detokenize},
    )
    # Self-contained: everything lives in the SavedModel, nothing points back here.
    served_dir = tmp_path / "moved"
    shutil.move(saved_dir, served_dir)
    assets = served_dir / "assets"
    assert not assets.exists() or not any(assets.iterdir())
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((served_dir / "saved_model.pb").read_bytes())
    op_types = set().union(*(_op_types(m.graph_def) for m in saved_model.meta_graphs))
    assert "While" in op_types and not [op for op in op_types if op.startswith("Xla")]

    ids = _random_ids(processor, 50, random.Random(1))
    request, result = tmp_path / "request.json", tmp_path / "result.json"
    request.write_text(json.dumps({"texts": TEXTS, "ids": ids}), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT, str(served_dir), str(request), str(result)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    served = json.loads(result.read_text(encoding="utf-8"))
    assert served["imported"] == []
    expected_ids, expected_mask = _expected(processor, TEXTS, truncation=True, max_length=12)
    assert served["input_ids"] == expected_ids.tolist()
    assert served["attention_mask"] == expected_mask.tolist()
    assert served["texts"] == processor.batch_decode(ids, skip_special_tokens=True)


def test_speed(graph_tokenizer):
    batch = tf.constant(SENTENCES[:8])
    start = time.perf_counter()
    graph_tokenizer.tokenize(batch)
    first_call = time.perf_counter() - start
    repeats = 50
    start = time.perf_counter()
    for _ in range(repeats):
        graph_tokenizer.tokenize(batch)
    per_batch = (time.perf_counter() - start) / repeats
    print(
        f"\ntokenize 8 sentences: first call {first_call * 1e3:.0f} ms, then {per_batch * 1e3:.2f} ms"
    )
    assert per_batch < 0.05


def test_rejects_what_it_cannot_reproduce(processor):
    with pytest.raises(ValueError, match="BERT WordPiece"):
        GraphTokenizer(BlipProcessor(tokenizer=Tokenizer(models.BPE())))
    other_normalizer = Tokenizer.from_str(processor.tokenizer.to_str())
    other_normalizer.normalizer = normalizers.NFKC()
    with pytest.raises(ValueError, match="BERT WordPiece"):
        GraphTokenizer(BlipProcessor(tokenizer=other_normalizer))
    stripped_token = Tokenizer.from_str(processor.tokenizer.to_str())
    stripped_token.add_special_tokens([AddedToken("[X]", lstrip=True)])
    with pytest.raises(ValueError, match="raw text"):
        GraphTokenizer(BlipProcessor(tokenizer=stripped_token))
    no_post_processor = Tokenizer.from_str(processor.tokenizer.to_str())
    no_post_processor.post_processor = None
    with pytest.raises(ValueError, match="post-processor"):
        GraphTokenizer(BlipProcessor(tokenizer=no_post_processor))
    with pytest.raises(ValueError, match="max_length"):
        GraphTokenizer(processor, max_length=1)
    with pytest.raises(ValueError, match="no tokenizer"):
        GraphTokenizer(BlipProcessor())
