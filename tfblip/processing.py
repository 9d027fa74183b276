"""BLIP processor: BERT WordPiece tokenizer (``tokenizers`` library) + image processor.

The output matches transformers 5's ``BlipProcessor`` built from a ``BertTokenizerFast``:
same ``input_ids`` / ``attention_mask`` (no ``token_type_ids``), same padding and truncation
rules, same decoded strings. It reads the files Salesforce BLIP checkpoints ship
(``tokenizer.json`` and/or ``vocab.txt`` + ``tokenizer_config.json`` +
``special_tokens_map.json``, plus ``preprocessor_config.json``) and the directories
transformers' ``BlipProcessor.save_pretrained`` writes (``processor_config.json``).

``return_tensors``: ``None`` gives Python lists (a flat list for a single string), ``"np"``
gives ``int64`` arrays of shape ``(batch, length)`` (as transformers), ``"tf"`` gives ``int32``
``tf.Tensor`` s, the dtype the tfblip models take. ``pixel_values`` follow the image processor.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from tfblip.image_processing import BlipImageProcessor

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# Named special tokens in the order transformers adds the missing ones to the tokenizer.
_NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# BertTokenizer's defaults; BLIP adds bos_token "[DEC]" and the extra special token "[ENC]".
_BERT_DEFAULTS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_BLIP_DEFAULTS = {**_BERT_DEFAULTS, "bos_token": "[DEC]"}
_DEFAULT_ENC_TOKEN = "[ENC]"
_MAX_INPUT_CHARS_PER_WORD = 100
# transformers treats a model_max_length above this as "no limit".
_LARGE_INTEGER = int(1e20)

_PADDING = {
    False: "do_not_pad",
    "do_not_pad": "do_not_pad",
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {
    None: "do_not_truncate",
    False: "do_not_truncate",
    "do_not_truncate": "do_not_truncate",
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
}


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _token_content(value):
    """The string of a special-token entry: a string or a serialized AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return None if value is None else str(value)


def _as_added_token(value, special=True):
    """An AddedToken with the flags a serialized entry carries; ``special`` forces the flag
    (None keeps the entry's own, as transformers does for ``added_tokens_decoder``)."""
    if isinstance(value, AddedToken):
        fields = value.__getstate__()
    elif isinstance(value, dict):
        fields = {k: v for k, v in value.items() if k not in ("__type", "id")}
    else:
        fields = {"content": str(value)}
    if special is not None:
        fields["special"] = special
    content = fields.pop("content")
    return AddedToken(content, **fields)


def _to_id_list(ids):
    """Token ids from a list, tuple, numpy array, tf/torch tensor or int, as Python ints."""
    if hasattr(ids, "numpy"):
        ids = ids.numpy()
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if isinstance(ids, (int, np.integer)):
        return [int(ids)]
    return [int(i) for i in ids]


def _special_tokens_from_configs(tokenizer_config, special_tokens_map):
    """The special tokens transformers 5 would register, as (named, extra, added_decoder).

    ``named`` maps bos/eos/unk/sep/pad/cls/mask_token to a string or serialized AddedToken,
    ``extra`` lists the additional special tokens, ``added_decoder`` the tokenizer_config's
    ``added_tokens_decoder`` entries sorted by id. As in transformers, special_tokens_map.json is
    only read when tokenizer_config.json has no ``added_tokens_decoder``.
    """
    merged = dict(tokenizer_config)
    added_decoder = merged.get("added_tokens_decoder")
    if added_decoder is None:
        for key, value in special_tokens_map.items():
            merged[key] = value
        added = []
    else:
        added = [added_decoder[k] for k in sorted(added_decoder, key=int)]
    named = {}
    for key in _NAMED_SPECIAL_TOKENS:
        value = merged.get(key, _BERT_DEFAULTS.get(key))
        if value is not None:
            named[key] = value
    extra = merged.get("extra_special_tokens")
    if not extra:
        extra = merged.get("additional_special_tokens") or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    return named, list(extra), added


def _add_missing_special_tokens(tokenizer, named, extra, added):
    """Add the special tokens the tokenizer lacks, in transformers' order, as added tokens."""
    present = {str(t.content) for t in tokenizer.get_added_tokens_decoder().values()}
    to_add = []
    candidates = [(v, None) for v in added] + [(v, True) for v in [*named.values(), *extra]]
    for value, special in candidates:
        content = _token_content(value)
        if content is None or content in present:
            continue
        present.add(content)
        to_add.append(_as_added_token(value, special))
    if to_add:
        tokenizer.add_tokens(to_add)


def _build_bert_tokenizer(
    vocab,
    do_lower_case=True,
    strip_accents=None,
    tokenize_chinese_chars=True,
    unk_token="[UNK]",
):
    """transformers' BERT pipeline from a vocab.txt path or a token->id dict, without added
    tokens or post-processor (``_set_bert_post_processor``, once special tokens are added)."""
    if isinstance(vocab, (str, os.PathLike)):
        vocab = WordPiece.read_file(os.fspath(vocab))
    tokenizer = Tokenizer(
        WordPiece(
            vocab,
            unk_token=unk_token,
            max_input_chars_per_word=_MAX_INPUT_CHARS_PER_WORD,
        )
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=do_lower_case,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _set_bert_post_processor(tokenizer, cls_token, sep_token):
    """BertTokenizer's post-processor: "[CLS] $A [SEP]" (pairs "[CLS] $A [SEP] $B [SEP]")."""
    cls_id = tokenizer.token_to_id(cls_token)
    sep_id = tokenizer.token_to_id(sep_token)
    if cls_id is None or sep_id is None:
        missing = [t for t, i in ((cls_token, cls_id), (sep_token, sep_id)) if i is None]
        raise ValueError(f"Tokens {missing} are not in the vocabulary.")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )


def _special_token_id(name, doc=None):
    """A read-only BlipProcessor property: the id of its special token `name` ("cls_token",
    ...), or None when it has none (or no tokenizer)."""
    return property(
        lambda processor: processor._token_id(name),
        doc=doc or f"Id of the {name.removesuffix('_token')} token, or None.",
    )


class BlipProcessor:
    """Image processor + BERT tokenizer for BLIP, matching transformers' ``BlipProcessor``.

    Args:
        image_processor: a ``BlipImageProcessor`` (needed to pass ``images``).
        tokenizer: a ``tokenizers.Tokenizer`` (needed to pass ``text`` or decode).
        model_max_length: the default ``max_length`` for truncation / "max_length" padding
            (None: no limit, as transformers when the config has none).
        special_tokens: maps ``bos_token``, ``cls_token``, ``sep_token``, ``pad_token``,
            ``unk_token``, ``mask_token``, ``enc_token`` to their strings; the BLIP defaults
            ("[DEC]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[ENC]") fill the rest.
        clean_up_tokenization_spaces: apply transformers' ``clean_up_tokenization`` in decode
            (transformers 5 defaults it to False unless tokenizer_config.json sets it).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        *,
        model_max_length=512,
        special_tokens=None,
        clean_up_tokenization_spaces=False,
    ):
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.special_tokens = {**_BLIP_DEFAULTS, "enc_token": _DEFAULT_ENC_TOKEN}
        self.special_tokens.update(special_tokens or {})
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        # Encoding sets truncation/padding on the shared tokenizer for one call and restores
        # them; the lock keeps concurrent calls from seeing each other's settings.
        self._encode_lock = threading.Lock()

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path):
        """Load from a checkpoint directory (see the module docstring for the files read).

        Args:
            path: a checkpoint or processor directory.

        Returns:
            The processor, with the directory's image processor and tokenizer.

        Raises:
            FileNotFoundError: ``path`` is not a directory, or it holds no tokenizer files.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is not a directory with BLIP processor files.")
        image_processor = BlipImageProcessor.from_pretrained(path)
        tokenizer, kwargs = cls._load_tokenizer(path)
        return cls(image_processor, tokenizer, **kwargs)

    @staticmethod
    def _load_tokenizer(path):
        tokenizer_file = os.path.join(path, TOKENIZER_FILE)
        vocab_file = os.path.join(path, VOCAB_FILE)
        config_file = os.path.join(path, TOKENIZER_CONFIG_FILE)
        map_file = os.path.join(path, SPECIAL_TOKENS_MAP_FILE)
        config = _read_json(config_file) if os.path.isfile(config_file) else {}
        special_map = _read_json(map_file) if os.path.isfile(map_file) else {}
        named, extra, added = _special_tokens_from_configs(config, special_map)
        if os.path.isfile(tokenizer_file):
            tokenizer = Tokenizer.from_file(tokenizer_file)
            tokenizer.no_truncation()
            tokenizer.no_padding()
            _add_missing_special_tokens(tokenizer, named, extra, added)
        elif os.path.isfile(vocab_file):
            tokenizer = _build_bert_tokenizer(
                vocab_file,
                do_lower_case=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
                tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                unk_token=_token_content(named["unk_token"]),
            )
            _add_missing_special_tokens(tokenizer, named, extra, added)
            _set_bert_post_processor(
                tokenizer, _token_content(named["cls_token"]), _token_content(named["sep_token"])
            )
        else:
            raise FileNotFoundError(
                f"No tokenizer files in {path!r}: expected {TOKENIZER_FILE} or {VOCAB_FILE} "
                f"(with {TOKENIZER_CONFIG_FILE} / {SPECIAL_TOKENS_MAP_FILE})."
            )
        special_tokens = {k: _token_content(v) for k, v in named.items()}
        if extra:
            special_tokens["enc_token"] = _token_content(extra[0])
        max_len = config.get("model_max_length")
        if max_len is not None and max_len > _LARGE_INTEGER:
            max_len = None
        kwargs = {
            "model_max_length": max_len,
            "special_tokens": special_tokens,
            "clean_up_tokenization_spaces": config.get("clean_up_tokenization_spaces", False),
        }
        return tokenizer, kwargs

    def save_pretrained(self, directory):
        """Write the processor's files, which :meth:`from_pretrained` and transformers read.

        The files: preprocessor_config.json, tokenizer.json, tokenizer_config.json,
        special_tokens_map.json and (for a WordPiece vocabulary) vocab.txt.

        Args:
            directory: where to write them; created if missing.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(directory)
        if self.tokenizer is None:
            return
        self.tokenizer.save(os.path.join(directory, TOKENIZER_FILE))

        vocab = self.tokenizer.get_vocab(with_added_tokens=False)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if by_id and [i for _, i in by_id] == list(range(len(by_id))):
            with open(os.path.join(directory, VOCAB_FILE), "w", encoding="utf-8") as f:
                f.writelines(token + "\n" for token, _ in by_id)

        named = {
            k: v
            for k, v in self.special_tokens.items()
            if k in _NAMED_SPECIAL_TOKENS and v is not None
        }
        enc = self.special_tokens.get("enc_token")
        special_map = dict(named)
        if enc is not None:
            special_map["additional_special_tokens"] = [enc]
        _write_json(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE), special_map)

        config = {
            "tokenizer_class": "BertTokenizer",
            "processor_class": "BlipProcessor",
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **special_map,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        normalizer = json.loads(self.tokenizer.to_str()).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            config["do_lower_case"] = normalizer.get("lowercase", True)
            config["strip_accents"] = normalizer.get("strip_accents")
            config["tokenize_chinese_chars"] = normalizer.get("handle_chinese_chars", True)
        _write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), config)

    # ------------------------------------------------------------------ special tokens

    def _token_id(self, name):
        token = self.special_tokens.get(name)
        if token is None or self.tokenizer is None:
            return None
        return self.tokenizer.token_to_id(token)

    bos_token_id = _special_token_id(
        "bos_token",
        'Id of the bos token "[DEC]" that starts captions (30522 in Salesforce checkpoints).',
    )
    enc_token_id = _special_token_id(
        "enc_token",
        'Id of "[ENC]" (30523 in Salesforce checkpoints), used by the retrieval model.',
    )
    cls_token_id = _special_token_id("cls_token")
    sep_token_id = _special_token_id("sep_token")
    pad_token_id = _special_token_id("pad_token")
    unk_token_id = _special_token_id("unk_token")
    mask_token_id = _special_token_id("mask_token")

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        images=None,
        text=None,
        padding=False,
        truncation=None,
        max_length=None,
        return_tensors=None,
        add_special_tokens=True,
    ):
        """Prepare model inputs.

        Returns a dict with ``pixel_values`` (when ``images`` is given) and ``input_ids`` and
        ``attention_mask`` (when ``text`` is given). ``padding``: False / "do_not_pad",
        True / "longest", "max_length"; ``truncation``: True / "longest_first" / "only_first",
        False / None. As in transformers, ``max_length`` alone (padding False, truncation None)
        turns truncation on, and truncation or "max_length" padding without ``max_length`` use
        ``model_max_length``.
        """
        if images is None and text is None:
            raise ValueError("BlipProcessor needs `images`, `text` or both; got neither.")
        if return_tensors not in (None, "np", "tf"):
            raise ValueError(f"return_tensors must be None, 'np' or 'tf', got {return_tensors!r}")
        outputs = {}
        if images is not None:
            if self.image_processor is None:
                raise ValueError("This BlipProcessor has no image processor; cannot use `images`.")
            outputs.update(self.image_processor(images, return_tensors=return_tensors))
        if text is not None:
            outputs.update(
                self._encode(
                    text, padding, truncation, max_length, return_tensors, add_special_tokens
                )
            )
        return outputs

    def _strategies(self, padding, truncation, max_length):
        # transformers: max_length alone (padding False, truncation None) switches truncation on.
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        try:
            padding = _PADDING[padding]
        except (KeyError, TypeError):
            raise ValueError(
                f"padding must be False, True, 'do_not_pad', 'longest' or 'max_length', "
                f"got {padding!r}"
            ) from None
        try:
            truncation = _TRUNCATION[truncation]
        except (KeyError, TypeError):
            raise ValueError(
                f"truncation must be True, False, None, 'longest_first', 'only_first' or "
                f"'do_not_truncate', got {truncation!r}"
            ) from None
        if max_length is None:
            if padding == "max_length":
                if self.model_max_length is None:
                    padding = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if truncation != "do_not_truncate":
                if self.model_max_length is None:
                    truncation = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        return padding, truncation, max_length

    def _encode(self, text, padding, truncation, max_length, return_tensors, add_special_tokens):
        if self.tokenizer is None:
            raise ValueError("This BlipProcessor has no tokenizer; cannot use `text`.")
        single = isinstance(text, str)
        if single:
            texts = [text]
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            texts = list(text)
            if not texts:
                raise ValueError("text is an empty list.")
        else:
            raise TypeError(
                "text must be a str or a list of str, got "
                + (
                    f"{type(text).__name__} containing "
                    f"{sorted({type(t).__name__ for t in text if not isinstance(t, str)})}"
                    if isinstance(text, (list, tuple))
                    else type(text).__name__
                )
            )
        padding, truncation, max_length = self._strategies(padding, truncation, max_length)

        tok = self.tokenizer
        with self._encode_lock:
            encodings = self._encode_batch(
                tok, texts, padding, truncation, max_length, add_special_tokens
            )

        input_ids = [list(e.ids) for e in encodings]
        attention_mask = [list(e.attention_mask) for e in encodings]
        if return_tensors is None:
            if single:
                return {"input_ids": input_ids[0], "attention_mask": attention_mask[0]}
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        if len({len(ids) for ids in input_ids}) > 1:
            raise ValueError(
                "Sequences have different lengths; use padding=True (or 'max_length') "
                f"to return {return_tensors!r} tensors."
            )
        dtype = np.int64 if return_tensors == "np" else np.int32
        arrays = {
            "input_ids": np.asarray(input_ids, dtype=dtype).reshape(len(texts), -1),
            "attention_mask": np.asarray(attention_mask, dtype=dtype).reshape(len(texts), -1),
        }
        if return_tensors == "tf":
            import tensorflow as tf

            return {k: tf.constant(v, dtype=tf.int32) for k, v in arrays.items()}
        return arrays

    def _encode_batch(self, tok, texts, padding, truncation, max_length, add_special_tokens):
        saved_truncation, saved_padding = tok.truncation, tok.padding
        try:
            if truncation == "do_not_truncate":
                tok.no_truncation()
            else:
                tok.enable_truncation(max_length, stride=0, strategy=truncation, direction="right")
            if padding == "do_not_pad":
                tok.no_padding()
            else:
                pad_token = self.special_tokens.get("pad_token")
                pad_id = self.pad_token_id
                if pad_id is None:
                    raise ValueError("Asked to pad but the tokenizer has no pad token.")
                tok.enable_padding(
                    direction="right",
                    pad_id=pad_id,
                    pad_type_id=0,
                    pad_token=pad_token,
                    length=max_length if padding == "max_length" else None,
                )
            encodings = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            if saved_truncation is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(**saved_truncation)
            if saved_padding is None:
                tok.no_padding()
            else:
                tok.enable_padding(**saved_padding)
        return encodings

    # ------------------------------------------------------------------ decoding

    def decode(self, token_ids, skip_special_tokens=False):
        """Token ids to a string, as transformers' decode.

        Args:
            token_ids: one sequence of ids: a list, numpy array or tf tensor.
            skip_special_tokens: leave out special tokens such as [SEP] and [PAD].

        Returns:
            The text.

        Raises:
            ValueError: the processor has no tokenizer.
        """
        if self.tokenizer is None:
            raise ValueError("This BlipProcessor has no tokenizer; cannot decode.")
        text = self.tokenizer.decode(
            _to_id_list(token_ids), skip_special_tokens=skip_special_tokens
        )
        if self.clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences, skip_special_tokens=False):
        """A batch of token-id sequences to strings, as :meth:`decode` each.

        Args:
            sequences: a list of id lists, a 2-D numpy array or a tf tensor.
            skip_special_tokens: leave out special tokens such as [SEP] and [PAD].

        Returns:
            A list of texts, one a sequence.
        """
        if hasattr(sequences, "numpy"):
            sequences = sequences.numpy()
        if isinstance(sequences, np.ndarray):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def __repr__(self):
        size = None if self.tokenizer is None else self.tokenizer.get_vocab_size()
        return (
            f"BlipProcessor(image_processor={self.image_processor!r}, vocab_size={size}, "
            f"model_max_length={self.model_max_length})"
        )


# transformers' clean_up_tokenization: spaces before punctuation and contractions, in order.
CLEAN_UP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _clean_up_tokenization(text):
    """transformers' clean_up_tokenization: drop spaces before punctuation and contractions."""
    for old, new in CLEAN_UP_REPLACEMENTS:
        text = text.replace(old, new)
    return text
