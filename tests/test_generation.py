"""generate() against transformers' PyTorch BLIP generate on tiny random models.

Every expected value is computed by transformers at test time. A tiny random BLIP gives
near-uniform logits that repeat one token forever, so `make_peaky` reshapes the random weights
(see its docstring) until the greedy and beam decisions are well separated, captions vary from
image to image and some of them stop at [SEP]. The `assert_informative` guards check that this
still holds, so a test cannot pass on degenerate output.
"""

import itertools
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import torch
from reference import TEXT_CONFIG, pixel_values, reference_model, to_torch
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

import tfblip
from tfblip.generation import decoding
from tfblip.modeling import blip
from tfblip.modeling.decoder_step import DecoderStep
from tfblip.ops.graph_rewrites import lean_rewriter_config

BOS = TEXT_CONFIG["bos_token_id"]  # 97, [DEC]
SEP = TEXT_CONFIG["sep_token_id"]  # 98, where BLIP's generate stops
PAD = TEXT_CONFIG["pad_token_id"]  # 0
VOCAB = TEXT_CONFIG["vocab_size"]
CLS = 5  # stands in for the tokenizer's [CLS], which a caption prompt starts with

# transformers warns when no max_length or max_new_tokens is set; some tests mean to use the default.
pytestmark = pytest.mark.filterwarnings("ignore:Using the model-agnostic default:UserWarning")


def make_peaky(model, seed):
    """Makes a tiny random BLIP decode like a trained one: varied, confident, sometimes stopping.

    With every weight drawn at std 0.2 (tests/reference.py), greedy captions are one token
    repeated, the same for every image, with top-2 logit margins of a few hundredths. Here the
    LayerNorm scales become 1 + 0.2 * noise, cross-attention weights are tripled (captions
    depend on the image, answers on the question), the LM head's LayerNorm is scaled by 3
    (logits spread over about +-10, so decisions sit far above the ~1e-5 parity error),
    [SEP] gets +3 in the output bias (captions sometimes end) and [PAD] -5 (a generated 0
    never looks like trailing padding).
    """
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".weight") and "norm" in name.lower():
                parameter.copy_(1 + 0.2 * torch.randn(parameter.shape, generator=generator))
            if "crossattention" in name and name.endswith(".weight"):
                parameter.mul_(3)
        predictions = model.text_decoder.cls.predictions
        predictions.transform.LayerNorm.weight.mul_(3)
        predictions.transform.LayerNorm.bias.mul_(3)
        predictions.bias[SEP] += 3
        predictions.bias[PAD] -= 5
    return model


class Pair:
    """A peaky transformers model, the tfblip model loaded from its checkpoint, and the directory."""

    def __init__(self, tmp_path_factory, class_name, tf_class, seed, **config):
        self.reference = make_peaky(reference_model(class_name, seed=seed, **config), seed)
        self.directory = tmp_path_factory.mktemp(f"{class_name}-{seed}")
        # Writes generation_config.json too, with transformers' eos_token_id 2 from the text
        # config: BLIP's generate stops at sep_token_id (98) regardless, and so must tfblip.
        self.reference.save_pretrained(self.directory)
        self.model = tf_class.from_pretrained(self.directory)
        self.seed = seed


# Seeds picked on the transformers side: every test's token choices survive +-1e-3 noise added
# to the scores, rows differ, and seed 9's greedy captions stop after 2-3 tokens.
@pytest.fixture(scope="module")
def caption(tmp_path_factory):
    return Pair(
        tmp_path_factory, "BlipForConditionalGeneration", tfblip.TFBlipForConditionalGeneration, 2
    )


@pytest.fixture(scope="module")
def short_caption(tmp_path_factory):
    return Pair(
        tmp_path_factory, "BlipForConditionalGeneration", tfblip.TFBlipForConditionalGeneration, 9
    )


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    # VQA's answer decoder cross-attends to question states, so vision and text widths match.
    return Pair(
        tmp_path_factory,
        "BlipForQuestionAnswering",
        tfblip.TFBlipForQuestionAnswering,
        9,
        vision={"hidden_size": 32},
    )


def images(pair, batch_size):
    return pixel_values(batch_size=batch_size, seed=pair.seed)


def prompt_ids(batch_size, length, seed):
    """Caption prompts as a tokenizer gives them: [CLS] words [SEP], all rows one length."""
    ids = np.random.default_rng(seed).integers(3, VOCAB - 2, size=(batch_size, length))
    ids[:, 0] = CLS
    ids[:, -1] = SEP
    return ids.astype(np.int64)


def questions(batch_size, length, seed):
    return np.random.default_rng(seed).integers(3, VOCAB - 2, size=(batch_size, length))


def torch_generate(reference, **inputs_and_options):
    """transformers' generate on numpy inputs (copied: BLIP's generate writes into input_ids)."""
    arguments = {
        key: to_torch(np.array(value)) if isinstance(value, np.ndarray) else value
        for key, value in inputs_and_options.items()
    }
    with torch.no_grad():
        return reference.generate(**arguments)


def sequences_of(output):
    return output.sequences if hasattr(output, "sequences") else output


def as_int64(output):
    """tfblip's token ids as numpy int64, after checking they are int32 as documented."""
    sequences = sequences_of(output)
    assert isinstance(sequences, tf.Tensor), type(sequences)
    assert sequences.dtype == tf.int32, sequences.dtype
    return np.asarray(sequences).astype(np.int64)


def assert_same_ids(ours, theirs, name="sequences"):
    ours = as_int64(ours)
    theirs = sequences_of(theirs)
    same = torch.equal(torch.from_numpy(ours), theirs)
    assert same, (
        f"{name} differ from transformers:\nours   {ours.tolist()}\ntheirs {theirs.tolist()}"
    )


def assert_informative(rows, min_distinct=4, stops=False):
    """Guards the fixture, not tfblip: the reference output must be worth comparing against.

    `rows` are generated tokens (after [DEC] or the prompt), possibly of different lengths.
    """
    rows = [[int(token) for token in row] for row in rows]
    distinct = {token for row in rows for token in row} - {SEP, PAD}
    assert len(distinct) >= min_distinct, f"degenerate reference output {rows}"
    if stops:
        assert any(SEP in row for row in rows), f"no reference row stops at [SEP]: {rows}"


def trim(row):
    """A row up to its first [SEP] (kept), else without trailing padding."""
    row = [int(token) for token in row]
    if SEP in row[1:]:
        return row[: row.index(SEP, 1) + 1]
    while row and row[-1] == PAD:
        row.pop()
    return row


# 1. Greedy captioning without a prompt.


@pytest.mark.parametrize("options", [{}, {"max_new_tokens": 12}], ids=["default", "new12"])
def test_greedy_caption(caption, options):
    pixels = images(caption, 3)
    expected = torch_generate(caption.reference, pixel_values=pixels, **options)
    assert_informative(expected[:, 1:], stops=True)
    ours = caption.model.generate(pixels, **options)
    assert_same_ids(ours, expected)
    assert (as_int64(ours)[:, 0] == BOS).all()


def test_greedy_caption_stops_early_and_pads(short_caption):
    pixels = images(short_caption, 3)
    expected = torch_generate(short_caption.reference, pixel_values=pixels, max_new_tokens=12)
    assert_informative(expected[:, 1:], min_distinct=3, stops=True)
    assert expected.shape[1] < 13  # every row stopped: the output is cut after the longest
    assert_same_ids(short_caption.model.generate(pixels, max_new_tokens=12), expected)


# 2. Greedy captioning with a prompt ([CLS] ... [SEP], same length in every row).


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no-mask"])
def test_greedy_caption_with_prompt(caption, with_mask):
    pixels = images(caption, 3)
    input_ids = prompt_ids(3, 5, seed=5)
    mask = {"attention_mask": np.ones_like(input_ids)} if with_mask else {}
    expected = torch_generate(
        caption.reference, pixel_values=pixels, input_ids=input_ids, max_new_tokens=8, **mask
    )
    assert_informative(expected[:, 4:], stops=True)  # after [DEC] and the 3 prompt words
    ours = caption.model.generate(pixels, input_ids=input_ids, max_new_tokens=8, **mask)
    assert_same_ids(ours, expected)
    # [CLS] became [DEC], [SEP] was dropped, and the prompt words lead every row.
    ids = as_int64(ours)
    assert (ids[:, 0] == BOS).all() and (ids[:, 1:4] == input_ids[:, 1:4]).all()


# 3. Prompts of different lengths in one batch, right-padded.


def test_mixed_prompt_lengths_match_one_by_one(caption):
    lengths = [6, 3, 4]  # [CLS] + words + [SEP]
    pixels = images(caption, 3)
    input_ids = np.zeros((3, max(lengths)), dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    words = prompt_ids(3, max(lengths), seed=caption.seed + 50)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = words[row, :length]
        input_ids[row, length - 1] = SEP
        attention_mask[row, :length] = 1
    ours = as_int64(
        caption.model.generate(
            pixels, input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8
        )
    )
    assert ours.shape[0] == 3
    expected_rows = []
    for row, length in enumerate(lengths):
        # transformers drops the last column, not each row's [SEP]; alone, a row has no padding.
        expected = torch_generate(
            caption.reference,
            pixel_values=pixels[row : row + 1],
            input_ids=input_ids[row : row + 1, :length],
            attention_mask=attention_mask[row : row + 1, :length],
            max_new_tokens=8,
        )
        expected_rows.append(trim(expected[0]))
        assert trim(ours[row]) == expected_rows[-1], f"row {row} (prompt length {length})"
    generated = [row[length - 1 :] for row, length in zip(expected_rows, lengths)]
    assert_informative(generated, stops=True)


# 4. Beam search.

BEAM_CASES = {
    "beams3": {"num_beams": 3},
    "beams2-return2": {"num_beams": 2, "num_return_sequences": 2},
    "beams3-lp0.6": {"num_beams": 3, "length_penalty": 0.6},
    "beams3-early": {"num_beams": 3, "early_stopping": True},
    "beams3-never": {"num_beams": 3, "early_stopping": "never"},
    "beams3-lp2-never": {"num_beams": 3, "length_penalty": 2.0, "early_stopping": "never"},
}
# Every case on seed 9, whose beams finish at different steps (length penalty and early stopping
# change its answers); the cases that change seed 2's answers on seed 2 as well.
BEAM_PARAMS = [
    pytest.param("short_caption", options, id=f"{name}-short_caption")
    for name, options in BEAM_CASES.items()
] + [
    pytest.param("caption", BEAM_CASES[name], id=f"{name}-caption")
    for name in ("beams3", "beams2-return2", "beams3-lp0.6", "beams3-early")
]


@pytest.mark.parametrize("pair_name,options", BEAM_PARAMS)
def test_beam_search(request, pair_name, options):
    pair = request.getfixturevalue(pair_name)
    pixels = images(pair, 2)
    expected = torch_generate(
        pair.reference,
        pixel_values=pixels,
        max_new_tokens=10,
        output_scores=True,
        return_dict_in_generate=True,
        **options,
    )
    assert_informative(expected.sequences[:, 1:], min_distinct=3)
    rows = 2 * options.get("num_return_sequences", 1)
    assert expected.sequences.shape[0] == rows

    ours = pair.model.generate(
        pixels, max_new_tokens=10, output_scores=True, return_dict_in_generate=True, **options
    )
    assert_same_ids(ours, expected)
    scores = np.asarray(ours.sequences_scores, dtype=np.float64)
    assert scores.shape == (rows,)
    np.testing.assert_allclose(scores, expected.sequences_scores.numpy(), rtol=0, atol=1e-4)


def test_beam_search_fills_finished_rows_like_transformers(short_caption):
    # transformers fills a finished beam's tail with `pad_token_id or eos_token_id`: pad is 0,
    # so the tail is [SEP] (98), unlike greedy search, which pads with 0.
    pixels = images(short_caption, 2)
    expected = torch_generate(
        short_caption.reference, pixel_values=pixels, max_new_tokens=10, num_beams=3
    )
    assert_informative(expected[:, 1:], min_distinct=3, stops=True)
    assert_same_ids(short_caption.model.generate(pixels, max_new_tokens=10, num_beams=3), expected)


# 5. Visual question answering.


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}], ids=["greedy", "beams3"])
def test_vqa_generate(vqa, options):
    pixels = images(vqa, 2)
    input_ids = questions(2, 6, seed=vqa.seed)
    attention_mask = np.ones_like(input_ids)
    expected = torch_generate(
        vqa.reference,
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=attention_mask,
        max_new_tokens=10,
        **options,
    )
    assert_informative(expected[:, 1:], min_distinct=2, stops=True)
    ours = vqa.model.generate(
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=attention_mask,
        max_new_tokens=10,
        **options,
    )
    assert_same_ids(ours, expected)
    # Answers start from [DEC], not from the question.
    assert (as_int64(ours)[:, 0] == BOS).all()


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}], ids=["greedy", "beams3"])
def test_vqa_mixed_question_lengths_match_one_by_one(vqa, options):
    # transformers 5 lets answers attend to padded question positions, so a padded batch
    # differs from the same questions asked alone; asked alone is the truth.
    lengths = [7, 4, 5]
    pixels = images(vqa, 3)
    input_ids = questions(3, max(lengths), seed=10)
    attention_mask = np.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, length:] = PAD
        attention_mask[row, :length] = 1
    ours = as_int64(
        vqa.model.generate(
            input_ids=input_ids,
            pixel_values=pixels,
            attention_mask=attention_mask,
            max_new_tokens=10,
            **options,
        )
    )
    expected_rows = []
    for row, length in enumerate(lengths):
        expected = torch_generate(
            vqa.reference,
            input_ids=input_ids[row : row + 1, :length],
            pixel_values=pixels[row : row + 1],
            max_new_tokens=10,
            **options,
        )
        expected_rows.append(trim(expected[0]))
        assert trim(ours[row]) == expected_rows[-1], f"row {row} (question length {length})"
    assert_informative([row[1:] for row in expected_rows], min_distinct=3, stops=True)
    # The padding matters here: transformers' padded batch answers differently.
    padded = torch_generate(
        vqa.reference,
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=attention_mask,
        max_new_tokens=10,
        **options,
    )
    assert [trim(row) for row in padded] != expected_rows


# 6. Length limits and repetition controls.


@pytest.mark.parametrize(
    "options,first_sep",
    [({"min_new_tokens": 6}, 7), ({"min_length": 8}, 8)],
    ids=["min_new_tokens", "min_length"],
)
def test_min_length(short_caption, options, first_sep):
    pixels = images(short_caption, 3)
    unconstrained = torch_generate(short_caption.reference, pixel_values=pixels, max_new_tokens=12)
    stopped_early = [row for row in map(trim, unconstrained) if row[-1] == SEP]
    assert any(len(row) - 1 < first_sep for row in stopped_early)  # the limit binds
    expected = torch_generate(
        short_caption.reference, pixel_values=pixels, max_new_tokens=12, **options
    )
    ours = short_caption.model.generate(pixels, max_new_tokens=12, **options)
    assert_same_ids(ours, expected)
    assert (as_int64(ours)[:, :first_sep] != SEP).all()


@pytest.mark.parametrize(
    "options,width",
    [({"max_length": 6}, 6), ({"max_new_tokens": 4}, 5), ({"max_length": 16}, 16)],
    ids=["max_length6", "max_new_tokens4", "max_length16"],
)
def test_max_length(caption, options, width):
    # max_length counts [DEC] (an explicit 16 is 16 columns, while the default is 20 new tokens,
    # 21 columns); max_new_tokens does not. Seed 2's row 2 stops after 9 tokens and the others
    # run on, so the output is as wide as the limit.
    pixels = images(caption, 3)
    expected = torch_generate(caption.reference, pixel_values=pixels, **options)
    assert expected.shape[1] == width
    ours = caption.model.generate(pixels, **options)
    assert_same_ids(ours, expected)
    assert as_int64(ours).shape == (3, width)


def test_repetition_penalty(caption):
    pixels = images(caption, 3)
    expected = torch_generate(
        caption.reference, pixel_values=pixels, max_new_tokens=12, repetition_penalty=1.5
    )
    plain = torch_generate(caption.reference, pixel_values=pixels, max_new_tokens=12)
    assert not torch.equal(expected, plain)  # the penalty changes the reference output
    assert_same_ids(
        caption.model.generate(pixels, max_new_tokens=12, repetition_penalty=1.5), expected
    )


def test_no_repeat_ngram_size(caption):
    pixels = images(caption, 3)
    expected = torch_generate(
        caption.reference, pixel_values=pixels, max_new_tokens=12, no_repeat_ngram_size=2
    )
    plain = torch_generate(caption.reference, pixel_values=pixels, max_new_tokens=12)
    assert not torch.equal(expected, plain)
    ours = caption.model.generate(pixels, max_new_tokens=12, no_repeat_ngram_size=2)
    assert_same_ids(ours, expected)
    for row in as_int64(ours):
        tokens = trim(row)
        bigrams = list(itertools.pairwise(tokens))
        assert len(bigrams) == len(set(bigrams)), f"repeated bigram in {tokens}"


# 7. Sampling.

SAMPLING = {"do_sample": True, "top_k": 5, "top_p": 0.9, "temperature": 0.7, "max_new_tokens": 10}


def test_sampling_is_seeded(caption):
    pixels = pixel_values(batch_size=4, seed=caption.seed + 100)
    first = as_int64(caption.model.generate(pixels, seed=123, **SAMPLING))
    again = as_int64(caption.model.generate(pixels, seed=123, **SAMPLING))
    np.testing.assert_array_equal(first, again)
    others = [as_int64(caption.model.generate(pixels, seed=s, **SAMPLING)) for s in (124, 125)]
    # 4 rows x 10 tokens from top-5 / top-0.9 candidates: identical draws are vanishingly rare.
    assert any(other.shape != first.shape or (other != first).any() for other in others), (
        "different seeds gave the same samples"
    )
    assert (first[:, 0] == BOS).all()


def test_sampled_tokens_are_in_top_k_and_top_p(caption):
    """Each sampled token is among the 5 likeliest under transformers' model and in the top-p
    nucleus of that top-5 distribution at temperature 0.7 (transformers' warper order)."""
    pixels = pixel_values(batch_size=4, seed=caption.seed + 100)
    checked = 0
    for seed in (1, 2, 3):
        sequences = as_int64(caption.model.generate(pixels, seed=seed, **SAMPLING))
        with torch.no_grad():
            logits = caption.reference(
                pixel_values=to_torch(pixels), input_ids=to_torch(sequences)
            ).logits.double()
        for row, tokens in enumerate(sequences):
            for step in range(1, len(trim(tokens))):
                step_logits = logits[row, step - 1] / SAMPLING["temperature"]
                top = torch.topk(step_logits, SAMPLING["top_k"])
                token = int(tokens[step])
                assert token in top.indices.tolist(), f"row {row} step {step}: not in top-k"
                probabilities = torch.softmax(top.values, dim=0)
                rank = top.indices.tolist().index(token)
                mass_above = float(probabilities[:rank].sum())
                assert mass_above < SAMPLING["top_p"] + 1e-4, f"row {row} step {step}: not in top-p"
                checked += 1
    assert checked >= 20


def test_sampling_with_top_k_1_is_greedy(caption):
    pixels = images(caption, 3)
    expected = torch_generate(caption.reference, pixel_values=pixels, max_new_tokens=8)
    ours = caption.model.generate(pixels, max_new_tokens=8, do_sample=True, top_k=1, seed=0)
    assert_same_ids(ours, expected)


# 8. XLA.


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}], ids=["greedy", "beams3"])
def test_jit_compile_matches_default_path(caption, options):
    pixels = images(caption, 2)
    expected = torch_generate(caption.reference, pixel_values=pixels, max_new_tokens=8, **options)
    default = caption.model.generate(pixels, max_new_tokens=8, **options)
    compiled = caption.model.generate(pixels, max_new_tokens=8, jit_compile=True, **options)
    assert_same_ids(default, expected, name="default path")
    assert_same_ids(compiled, expected, name="jit_compile=True")


# 9. Scores.


def test_greedy_output_scores(caption):
    # min_new_tokens=2 makes transformers' processed scores hold -inf for [SEP] on early steps.
    pixels = images(caption, 3)
    options = {"max_new_tokens": 10, "min_new_tokens": 2}
    expected = torch_generate(
        caption.reference,
        pixel_values=pixels,
        output_scores=True,
        return_dict_in_generate=True,
        **options,
    )
    assert_informative(expected.sequences[:, 1:], stops=True)
    ours = caption.model.generate(
        pixels, output_scores=True, return_dict_in_generate=True, **options
    )
    assert_same_ids(ours, expected)
    assert isinstance(ours.scores, tuple)
    assert len(ours.scores) == len(expected.scores)
    generated = expected.sequences[:, 1:].numpy()
    for step, (mine, theirs) in enumerate(zip(ours.scores, expected.scores)):
        mine = np.asarray(mine, dtype=np.float64)
        theirs = theirs.double().numpy()
        assert mine.shape == theirs.shape == (3, VOCAB)
        # Rows that finished earlier are padding; what they score is not specified.
        live = ~(generated[:, :step] == SEP).any(axis=1)
        mine, theirs = mine[live], theirs[live]
        np.testing.assert_array_equal(np.isfinite(mine), np.isfinite(theirs), f"step {step}")
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(
            mine[finite], theirs[finite], rtol=0, atol=1e-4, err_msg=f"step {step}"
        )


# 10. Errors.


def test_unknown_option_is_named(caption):
    with pytest.raises((TypeError, ValueError), match="num_beam"):
        caption.model.generate(images(caption, 1), num_beam=3)


@pytest.mark.parametrize(
    "options",
    [
        {"num_return_sequences": 2},
        {"num_beams": 2, "num_return_sequences": 3},
        {"do_sample": True, "top_p": 1.5},
        {"do_sample": True, "top_p": 0.0},
        {"do_sample": True, "temperature": 0.0},
        {"do_sample": True, "temperature": -1.0},
    ],
    ids=["return2-greedy", "return3-beams2", "top_p1.5", "top_p0", "temperature0", "temperature-1"],
)
def test_contradictory_options_raise(caption, options):
    with pytest.raises(ValueError):
        caption.model.generate(images(caption, 1), max_new_tokens=3, **options)


# 11. generation_config.json.


def test_generation_config_sets_defaults(short_caption, tmp_path):
    directory = tmp_path / "with-generation-config"
    shutil.copytree(short_caption.directory, directory)
    config_path = directory / "generation_config.json"
    settings = json.loads(config_path.read_text())
    assert settings["eos_token_id"] == 2  # as transformers writes it; generation stops at [SEP]
    settings.update(max_length=8, num_beams=2)
    config_path.write_text(json.dumps(settings))
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    reference = short_caption.reference
    pixels = images(short_caption, 3)

    # transformers' BLIP decodes with text_decoder.generation_config, which from_pretrained does
    # not read from the file, so the reference gets the settings explicitly.
    expected = torch_generate(reference, pixel_values=pixels, max_length=8, num_beams=2)
    greedy = torch_generate(reference, pixel_values=pixels, max_length=8)
    assert expected.shape != greedy.shape or not torch.equal(expected, greedy)
    assert expected.shape[1] == 8  # one beam runs to max_length
    assert_same_ids(model.generate(pixels), expected, name="file defaults")

    # Explicit options override the file.
    assert_same_ids(model.generate(pixels, num_beams=1), greedy, name="num_beams=1")
    expected = torch_generate(reference, pixel_values=pixels, max_new_tokens=10, num_beams=2)
    assert expected.shape[1] == 11
    assert_same_ids(model.generate(pixels, max_new_tokens=10), expected, name="max_new_tokens")


def test_repeated_calls_reuse_the_traced_loop(caption):
    # One traced loop per decoding setup (graph options and max_new), reused by later calls.
    model, pixels = caption.model, images(caption, 2)
    first = model.generate(pixels, max_new_tokens=5, num_beams=2)
    functions = model.text_decoder.__dict__["_tfblip_generate_functions"]
    traced = dict(functions)
    second = model.generate(pixels, max_new_tokens=5, num_beams=2)
    assert np.array_equal(first, second)
    assert functions == traced
    # Per-call options (seed, return_dict_in_generate) reuse the same loop too.
    third = model.generate(
        pixels, max_new_tokens=5, num_beams=2, seed=3, return_dict_in_generate=True
    )
    assert np.array_equal(first, third.sequences)
    assert functions == traced


def test_new_batch_sizes_and_prompt_lengths_do_not_trace_again(short_caption, monkeypatch):
    # The image encoder and the decoding loop are each traced once, for any batch size and
    # prompt length (a trace takes seconds at full size): later shapes run the same graphs.
    monkeypatch.setenv("TFBLIP_TRACE_CACHE", "off")
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(short_caption.directory)
    traces = []
    bind = DecoderStep.bind
    monkeypatch.setattr(DecoderStep, "bind", lambda *a: traces.append(1) or bind(*a))

    def functions():
        loops = model.text_decoder.__dict__["_tfblip_generate_functions"]
        return {**loops, **model.__dict__["_tfblip_graph_functions"]}

    model.generate(images(short_caption, 1), max_length=12)
    first = functions()
    assert len(first) == 2 and len(traces) == 1
    # max_length counts the prompt: longer prompts leave fewer new tokens, in the same graph.
    for batch_size, prompt_length in [(3, None), (2, 4), (1, 7)]:
        pixels = images(short_caption, batch_size)
        prompt = {}
        if prompt_length is not None:
            prompt = {"input_ids": prompt_ids(batch_size, prompt_length, seed=prompt_length)}
        expected = torch_generate(
            short_caption.reference, pixel_values=pixels, max_length=12, **prompt
        )
        assert_same_ids(model.generate(pixels, max_length=12, **prompt), expected)
    assert functions() == first and len(traces) == 1


def test_encoder_and_loop_run_under_lean_grappler_options(short_caption, monkeypatch):
    # Grappler optimises a graph at its first call with the options in force then: the
    # encoder and the decoding loop are called under tfblip's lean ones, every time.
    seen = []

    def recording(traced_function):
        def trace(*args, **kwargs):
            function = traced_function(*args, **kwargs)

            def call(*inputs):
                serialized = context.context().function_call_options.config_proto_serialized
                options = config_pb2.ConfigProto.FromString(serialized)
                seen.append(options.graph_options.rewrite_options)
                return function(*inputs)

            return call

        return trace

    monkeypatch.setattr(decoding, "traced_function", recording(decoding.traced_function))
    monkeypatch.setattr(blip, "traced_function", recording(blip.traced_function))
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(short_caption.directory)
    outside = context.context().function_call_options.config_proto_serialized
    for _ in range(2):
        model.generate(images(short_caption, 1), max_new_tokens=3)
    lean = lean_rewriter_config(config_pb2.ConfigProto.FromString(outside))
    assert len(seen) == 4  # the encoder and the loop, twice
    assert all(options == lean.graph_options.rewrite_options for options in seen)
    assert seen[0] != config_pb2.ConfigProto.FromString(outside).graph_options.rewrite_options
    # Only inside the calls.
    assert context.context().function_call_options.config_proto_serialized == outside
