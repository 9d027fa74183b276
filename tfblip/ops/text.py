"""BlipProcessor's BERT WordPiece tokenizer as core TensorFlow ops, for stock TF Serving.

`GraphTokenizer` turns strings into the ``input_ids`` / ``attention_mask`` that
``BlipProcessor(text=..., padding=True[, truncation=True, max_length=...])`` gives, and ids back
into the strings of ``BlipProcessor.batch_decode(..., skip_special_tokens=True)``, using only
tf.strings, tf.lookup, tf.ragged and tf.while_loop: no tensorflow-text, custom or XLA ops.
Everything the graph reads is built from the processor at construction and lives in the module,
so a SavedModel holding it loads with nothing but TensorFlow.

How each stage of the ``tokenizers`` pipeline becomes graph ops:

* Added tokens ("[CLS]", "[DEC]", ...) are found in the raw text before anything else, longest
  first. A regex wraps each match in 0xFF bytes, which valid UTF-8 never contains, and a split
  on that byte leaves the matches at the odd positions of each row.
* BertNormalizer and BertPreTokenizer act on each code point on its own, so together they are a
  function from a code point to a string (spaces marking where words split). It is tabulated
  by asking the library itself, the processor's normalizer on every code point and the
  pre-tokenizer for its white space and punctuation, so it follows the Unicode tables compiled
  into ``tokenizers``, which are older than Python's ``unicodedata``: they see newer characters
  as unassigned (kept as they are) and newer punctuation as letters. In the graph, code point
  ranges give a class (keep, space, isolate between spaces, look up) and a hash table holds the
  looked-up strings; a looked-up code point that is not in the table is dropped.
* WordPiece runs on all words of the batch at once: a tf.while_loop over piece positions tries
  every candidate length up to the longest vocabulary entry and keeps the longest that is in
  the vocabulary, as the library's greedy longest-match-first does.
* Decoding drops unknown and special ids, glues "##" pieces, applies the WordPiece decoder's
  clean-up to each token and then the processor's optional clean-up to each string.

Differences from the library:

* When accents are stripped, the library's NFD also reorders adjacent combining marks by
  canonical class. Marks that survive stripping (spacing marks with a nonzero class, such as
  the musical symbols U+1D165..U+1D172) written out of canonical order keep their order here.
* Bytes that are not valid UTF-8, which the library never sees, read as U+FFFD (dropped when
  the normalizer cleans text).
* A ``max_length`` with no room for the special tokens is a ValueError; the library would
  silently not truncate.
"""

import functools
import json

import tensorflow as tf
from tokenizers import normalizers, pre_tokenizers

from tfblip.processing import CLEAN_UP_REPLACEMENTS

_UNICODE_SIZE = 0x110000
_SURROGATES = range(0xD800, 0xE000)
# Code points per library call when tabulating: a block that comes out unchanged costs one call
# instead of one per code point.
_BLOCK_SIZE = 128
# What normalization + pre-tokenization make of a code point. _LOOKUP reads the replacement
# table, where a code point that is absent is dropped.
_KEEP, _SPACE, _ISOLATE, _LOOKUP = range(4)
# A byte that valid UTF-8 never contains: it marks added-token matches and ids with no token.
_MARK = b"\xff"
# The `tokenizers` WordPiece decoder's clean-up (when its `cleanup` flag is on), applied to each
# token after the joining space is added, in this order: transformers' clean-up with one more
# rule, " do not" -> " don't", after " 'm".
_AFTER_I_AM = CLEAN_UP_REPLACEMENTS.index((" 'm", "'m")) + 1
WORDPIECE_CLEANUP = (
    *CLEAN_UP_REPLACEMENTS[:_AFTER_I_AM],
    (" do not", " don't"),
    *CLEAN_UP_REPLACEMENTS[_AFTER_I_AM:],
)
_EXPECTED_COMPONENTS = {
    "model": "WordPiece",
    "normalizer": "BertNormalizer",
    "pre_tokenizer": "BertPreTokenizer",
    "decoder": "WordPiece",
}


def _literal_pattern(text):
    """An RE2 pattern matching ``text`` literally (every code point as a \\x{...} escape)."""
    return "".join(f"\\x{{{ord(char):x}}}" for char in text)


def _code_point_blocks():
    """All Unicode scalar values (surrogates are not: no text holds them), _BLOCK_SIZE
    characters at a time."""
    for block_start in range(0, _UNICODE_SIZE, _BLOCK_SIZE):
        yield [
            chr(cp) for cp in range(block_start, block_start + _BLOCK_SIZE) if cp not in _SURROGATES
        ]


@functools.cache
def _pre_tokenizer_splits():
    """(white space, punctuation) as BertPreTokenizer sees them. Asked of the library, as its
    Unicode tables are older than Python's unicodedata."""
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    white_space, punctuation = set(), set()
    for chars in _code_point_blocks():
        # Glued between letters, a character stays inside a word unless the pre-tokenizer splits
        # there: punctuation becomes a word of its own and white space disappears.
        words = [word for word, _ in pre_tokenizer.pre_tokenize_str("x".join(chars))]
        if len(words) > 1:
            punctuation.update(word for word in words if len(word) == 1 and word != "x")
            white_space.update(set(chars).difference(*words))
    return frozenset(white_space), frozenset(punctuation)


def _pre_tokenized(text):
    """``text`` with BertPreTokenizer's splits made explicit: white space becomes a space and
    each punctuation mark gets a space on both sides, so splitting on spaces gives its words."""
    white_space, punctuation = _pre_tokenizer_splits()
    return "".join(
        " " if char in white_space else f" {char} " if char in punctuation else char
        for char in text
    )


def _changed_code_points(normalizer):
    """Yield (code point, string) for each code point that normalization followed by
    pre-tokenization does not leave as it is."""
    split_chars = frozenset().union(*_pre_tokenizer_splits())
    for chars in _code_point_blocks():
        block = "".join(chars)
        # The normalizer maps each code point on its own, so it changes none in a block that
        # comes out as it went in.
        block_unchanged = normalizer.normalize_str(block) == block
        for char in chars:
            normalized = char if block_unchanged else normalizer.normalize_str(char)
            if normalized != char or char in split_chars:
                yield ord(char), _pre_tokenized(normalized)


@functools.lru_cache(maxsize=4)
def _code_point_tables(normalizer_json):
    """Range starts and classes over all code points, and the code points and strings of the
    _LOOKUP table, from what a BertNormalizer (its JSON, to share the work between processors
    with the same options) and the pre-tokenizer make of each code point."""
    options = {key: value for key, value in json.loads(normalizer_json).items() if key != "type"}
    normalizer = normalizers.BertNormalizer(**options)
    starts, classes, replacements = [], [], {}

    def start_range(cp, cls):
        if not classes or classes[-1] != cls:
            starts.append(cp)
            classes.append(cls)

    unchanged_from = 0
    for cp, output in _changed_code_points(normalizer):
        if cp > unchanged_from:
            start_range(unchanged_from, _KEEP)
        if output == " ":
            start_range(cp, _SPACE)
        elif output == f" {chr(cp)} ":
            start_range(cp, _ISOLATE)
        else:
            start_range(cp, _LOOKUP)
            if output:
                replacements[cp] = output
        unchanged_from = cp + 1
    start_range(unchanged_from, _KEEP)
    return tuple(starts), tuple(classes), tuple(replacements), tuple(replacements.values())


def _check_components(spec):
    found = {part: (spec.get(part) or {}).get("type") for part in _EXPECTED_COMPONENTS}
    if found != _EXPECTED_COMPONENTS:
        raise ValueError(
            f"GraphTokenizer needs a BERT WordPiece tokenizer {_EXPECTED_COMPONENTS}, got {found}."
        )


def _special_ids_around_text(post_processor):
    """The ids the post-processor puts before and after a single sequence."""
    kind = (post_processor or {}).get("type")
    if kind == "BertProcessing":
        return [post_processor["cls"][1]], [post_processor["sep"][1]]
    if kind != "TemplateProcessing":
        raise ValueError(
            f"GraphTokenizer needs a BertProcessing or TemplateProcessing post-processor, "
            f"got {kind}."
        )
    before, after = [], []
    sequences = 0
    for piece in post_processor["single"]:
        if "Sequence" in piece:
            sequences += 1
        else:
            ids = post_processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
            (after if sequences else before).extend(ids)
    if sequences != 1:
        raise ValueError(f"The post-processor's single template has {sequences} sequences.")
    return before, after


def _added_tokens(tokenizer):
    """{id: AddedToken}, checking that each one is matched on the raw text as it is."""
    added = tokenizer.get_added_tokens_decoder()
    for token in added.values():
        flags = {
            flag: getattr(token, flag) for flag in ("normalized", "single_word", "lstrip", "rstrip")
        }
        if any(flags.values()):
            raise ValueError(
                f"GraphTokenizer matches added tokens on the raw text only; {token.content!r} "
                f"has {flags}."
            )
    return added


def _static_table(keys, values, key_dtype, value_dtype, default_value):
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, key_dtype), tf.constant(values, value_dtype)
        ),
        default_value=default_value,
    )


class GraphTokenizer(tf.Module):
    """``BlipProcessor``'s text encoding and decoding as TensorFlow graph ops.

    Args:
        processor: a ``BlipProcessor`` whose tokenizer is a BERT WordPiece pipeline
            (BertNormalizer, BertPreTokenizer, WordPiece model and decoder, a post-processor
            that wraps one sequence in special tokens). Its normalizer options (lower case,
            accent stripping, CJK spacing, text cleaning) carry over.
        max_length: truncate each row to this many ids, special tokens included, as
            ``truncation=True, max_length=max_length``; None keeps every token. It must leave
            room for the special tokens (the library would silently not truncate at all).
        name: the module name.

    ``tokenize(texts)``: 1-D string tensor -> (input_ids, attention_mask), int32 [B, L], right
    padded with the pad id to the longest row. ``detokenize(token_ids)``: int32 [B, L] ->
    strings [B], without special tokens. ``split_words(texts)``: the normalized, pre-tokenized
    words that WordPiece receives.
    """

    def __init__(self, processor, max_length=None, name=None):
        super().__init__(name=name)
        tokenizer = processor.tokenizer
        if tokenizer is None:
            raise ValueError("The processor has no tokenizer.")
        spec = json.loads(tokenizer.to_str())
        _check_components(spec)
        model = spec["model"]
        before_text, after_text = _special_ids_around_text(spec.get("post_processor"))
        special_count = len(before_text) + len(after_text)
        if max_length is not None and max_length < special_count:
            raise ValueError(
                f"max_length={max_length} leaves no room for the {special_count} special tokens."
            )
        if processor.pad_token_id is None:
            raise ValueError("The processor has no pad token to pad rows with.")

        vocab = tokenizer.get_vocab(with_added_tokens=False)
        self.max_length = max_length
        self._text_capacity = None if max_length is None else max_length - special_count
        self._pad_id = processor.pad_token_id
        self._unk_id = vocab[model["unk_token"]]
        self._max_input_chars_per_word = model["max_input_chars_per_word"]
        self._subword_prefix = model["continuing_subword_prefix"]
        self._longest_vocab_entry = max(len(token) for token in vocab)
        self._before_text = tf.constant(before_text, tf.int64)
        self._after_text = tf.constant(after_text, tf.int64)
        self._vocab = _static_table(list(vocab), list(vocab.values()), tf.string, tf.int64, -1)

        starts, classes, replaced, replacements = _code_point_tables(
            json.dumps(spec["normalizer"], sort_keys=True)
        )
        self._range_starts = tf.constant(starts, tf.int32)
        self._range_classes = tf.constant(classes, tf.int32)
        # Without lower-casing or accent stripping nothing may need a replacement, and a table
        # cannot be empty; every looked-up code point is then dropped.
        self._replacements = None
        if replaced:
            self._replacements = _static_table(replaced, replacements, tf.int64, tf.string, "")

        added = _added_tokens(tokenizer)
        by_content = {token.content: token_id for token_id, token in added.items() if token.content}
        self._added_pattern = None
        if by_content:
            # RE2 takes the first alternative that matches at the leftmost position, so longest
            # first gives the library's leftmost-longest match.
            longest_first = sorted(by_content, key=len, reverse=True)
            self._added_pattern = "|".join(_literal_pattern(content) for content in longest_first)
            self._added_ids = _static_table(
                list(by_content), list(by_content.values()), tf.string, tf.int64, -1
            )

        # The library finds an id's token among the added tokens first, then in the vocabulary,
        # and skips it when its content is that of a special token.
        tokens_by_id = {token_id: token for token, token_id in vocab.items()}
        tokens_by_id.update({token_id: token.content for token_id, token in added.items()})
        special = {token.content for token in added.values() if token.special}
        decodable = {i: token for i, token in tokens_by_id.items() if token not in special}
        self._id_to_token = _static_table(
            list(decodable), list(decodable.values()), tf.int64, tf.string, _MARK
        )
        decoder = spec["decoder"]
        self._decoder_prefix = decoder["prefix"]
        self._token_cleanup = WORDPIECE_CLEANUP if decoder.get("cleanup", True) else ()
        self._text_cleanup = CLEAN_UP_REPLACEMENTS if processor.clean_up_tokenization_spaces else ()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, texts):
        """Tokenize texts as the processor does, in the graph.

        Args:
            texts: string tensor [B]; invalid UTF-8 reads as U+FFFD.

        Returns:
            (input_ids, attention_mask), int32 [B, L], padded to the longest text.
        """
        # The library only ever sees valid text; invalid UTF-8 reads as U+FFFD, as in decoding.
        texts = tf.strings.unicode_transcode(
            texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        segments = self._split_added_tokens(texts)
        ids = segments.with_flat_values(self._segment_ids(segments)).merge_dims(1, 2)
        if self._text_capacity is not None:
            ids = ids[:, : self._text_capacity]
        each_row = tf.stack([ids.nrows(), 1])
        ids = tf.concat(
            [
                tf.tile(self._before_text[None], each_row),
                ids,
                tf.tile(self._after_text[None], each_row),
            ],
            axis=1,
        )
        input_ids = tf.cast(ids.to_tensor(default_value=self._pad_id), tf.int32)
        attention_mask = tf.ones_like(ids, dtype=tf.int32).to_tensor()
        return input_ids, attention_mask

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def detokenize(self, token_ids):
        """Decode token ids to texts, as the processor's batch_decode, in the graph.

        Args:
            token_ids: int32 [B, L].

        Returns:
            String tensor [B], special tokens and unknown ids left out.
        """
        tokens = self._id_to_token.lookup(tf.cast(token_ids, tf.int64))
        tokens = tf.ragged.boolean_mask(tokens, tokens != _MARK)
        flat = tokens.flat_values
        first = tf.range(tf.size(flat, out_type=tf.int64)) == tf.gather(
            tokens.row_starts(), tokens.value_rowids()
        )
        prefix = self._decoder_prefix
        continues = tf.strings.substr(flat, 0, len(prefix.encode())) == prefix
        without_prefix = tf.strings.regex_replace(
            flat, "^" + _literal_pattern(prefix), "", replace_global=False
        )
        pieces = tf.where(
            first, flat, tf.where(continues, without_prefix, tf.strings.join([" ", flat]))
        )
        for old, new in self._token_cleanup:
            pieces = tf.strings.regex_replace(pieces, _literal_pattern(old), new)
        texts = tf.strings.reduce_join(tokens.with_flat_values(pieces), axis=1)
        for old, new in self._text_cleanup:
            texts = tf.strings.regex_replace(texts, _literal_pattern(old), new)
        return texts

    def _split_added_tokens(self, texts):
        """[B] -> [B, (S)] segments; with added tokens, those at odd positions are matches."""
        if self._added_pattern is None:
            return tf.RaggedTensor.from_tensor(texts[:, None])
        marked = tf.strings.regex_replace(texts, self._added_pattern, _MARK + b"\\0" + _MARK)
        return tf.strings.split(marked, sep=_MARK)

    def _segment_ids(self, segments):
        """Ids of each segment, [S, (T)]: an added token's id, or the WordPiece ids of text."""
        flat = segments.flat_values
        if self._added_pattern is None:
            return self._text_ids(flat)
        position = tf.range(tf.size(flat, out_type=tf.int64)) - tf.gather(
            segments.row_starts(), segments.value_rowids()
        )
        is_added = position % 2 == 1
        added_ids = tf.RaggedTensor.from_row_lengths(
            self._added_ids.lookup(tf.boolean_mask(flat, is_added)),
            tf.cast(is_added, tf.int64),
        )
        return tf.concat([self._text_ids(tf.where(is_added, "", flat)), added_ids], axis=1)

    def _text_ids(self, texts):
        """WordPiece ids of each text, [N, (T)] int64."""
        words = self.split_words(texts)
        return words.with_flat_values(self._word_pieces(words.flat_values)).merge_dims(1, 2)

    def split_words(self, texts):
        """The normalized, pre-tokenized words that WordPiece receives.

        Args:
            texts: string tensor [N]; added tokens are not split off.

        Returns:
            Ragged string tensor [N, (W)].
        """
        code_points = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
        flat = code_points.flat_values
        classes = tf.gather(
            self._range_classes, tf.searchsorted(self._range_starts, flat, side="right") - 1
        )
        chars = tf.strings.unicode_encode(flat[:, None], "UTF-8")
        looked_up = (
            "" if self._replacements is None else self._replacements.lookup(tf.cast(flat, tf.int64))
        )
        outputs = tf.where(
            classes == _KEEP,
            chars,
            tf.where(
                classes == _ISOLATE,
                tf.strings.join([" ", chars, " "]),
                tf.where(classes == _SPACE, " ", looked_up),
            ),
        )
        normalized = tf.strings.reduce_join(code_points.with_flat_values(outputs), axis=1)
        words = tf.strings.split(normalized, sep=" ")
        return tf.ragged.boolean_mask(words, words != "")

    def _word_pieces(self, words):
        """Greedy longest-match-first WordPiece ids of each word, strings [W] -> [W, (P)]."""
        lengths = tf.strings.length(words, unit="UTF8_CHAR")
        # The library turns a word over the limit, or one whose rest matches no entry, into a
        # single [UNK].
        unmatched = lengths > self._max_input_chars_per_word
        # Each piece takes at least one character. reduce_max of nothing is the lowest int32.
        max_pieces = tf.maximum(tf.reduce_max(tf.where(unmatched, 0, lengths)), 1)
        pieces = tf.fill(tf.stack([tf.size(words), max_pieces]), tf.constant(-1, tf.int64))
        candidate_lengths = tf.range(1, self._longest_vocab_entry + 1)

        def unfinished(starts, unmatched):
            return (starts < lengths) & ~unmatched

        def more_to_match(step, starts, unmatched, pieces):
            return tf.reduce_any(unfinished(starts, unmatched))

        def match_next_piece(step, starts, unmatched, pieces):
            active = tf.where(unfinished(starts, unmatched))[:, 0]
            start = tf.gather(starts, active)
            remaining = tf.gather(lengths, active) - start
            shape = tf.stack([tf.size(active), self._longest_vocab_entry])
            candidates = tf.strings.substr(
                tf.broadcast_to(tf.gather(words, active)[:, None], shape),
                tf.broadcast_to(start[:, None], shape),
                tf.broadcast_to(candidate_lengths, shape),
                unit="UTF8_CHAR",
            )
            candidates = tf.where(
                start[:, None] > 0,
                tf.strings.join([self._subword_prefix, candidates]),
                candidates,
            )
            ids = self._vocab.lookup(candidates)
            # substr stops at the end of the word, so longer candidates repeat the rest.
            found = (ids >= 0) & (candidate_lengths <= remaining[:, None])
            match_length = tf.reduce_max(tf.where(found, candidate_lengths, 0), axis=1)
            match_id = tf.gather(ids, tf.maximum(match_length - 1, 0), batch_dims=1)
            rows = active[:, None]
            piece_positions = tf.stack([active, tf.fill(tf.shape(active), step)], axis=1)
            return (
                step + 1,
                tf.tensor_scatter_nd_update(starts, rows, start + match_length),
                tf.tensor_scatter_nd_update(unmatched, rows, match_length == 0),
                tf.tensor_scatter_nd_update(pieces, piece_positions, match_id),
            )

        _, _, unmatched, pieces = tf.while_loop(
            more_to_match,
            match_next_piece,
            (tf.constant(0, tf.int64), tf.zeros_like(lengths), unmatched, pieces),
        )
        unknown_word = tf.concat(
            [
                [tf.constant(self._unk_id, tf.int64)],
                tf.fill([max_pieces - 1], tf.constant(-1, tf.int64)),
            ],
            axis=0,
        )
        pieces = tf.where(unmatched[:, None], unknown_word, pieces)
        return tf.RaggedTensor.from_tensor(pieces, padding=-1)
