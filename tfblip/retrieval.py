"""Image-text retrieval with a TFBlipForImageTextRetrieval: ITC search, ITM re-ranking, recall.

The procedure of the original BLIP evaluation (``evaluation`` in its train_retrieval.py):

* Every image and text is embedded once: its L2-normalized contrastive (ITC) feature. Texts are
  truncated to 35 tokens there; ``max_text_length`` defaults to the same.
* A query's candidates are the ``rerank_k`` gallery items of highest ITC similarity (cosine,
  no temperature).
* Each candidate pair goes through the image-text matching (ITM) head, and the candidates are
  ranked by ``score = itm_logits[:, 1] + similarity``: the raw "match" logit of the ITM head
  (not a probability) plus the cosine similarity. The original gave every other gallery item
  -100; here only the re-ranked candidates are returned.

Without ``rerank_k`` a search ranks by ITC similarity alone (``score == similarity``).

The original ITM encoder started its texts with "[ENC]"; transformers (and tfblip by default)
keep "[CLS]". Set ``model.config.use_enc_token = True`` to score as the original (see
:class:`tfblip.configuration.BlipConfig`). ITC text features use "[CLS]" either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfblip.arguments import is_int, positive_int, text_list
from tfblip.modeling.blip import TFBlipForImageTextRetrieval, enc_token_id_in_use, graph_function

__all__ = ["Gallery", "Hit", "Retriever", "recall_at_k"]

# Text length of the original BLIP retrieval training and evaluation.
DEFAULT_MAX_TEXT_LENGTH = 35
GALLERY_FORMAT = "tfblip.gallery"
GALLERY_FORMAT_VERSION = 1
MODALITIES = ("image", "text")


class Hit(NamedTuple):
    """One search result: the gallery item's id, the score it was ranked by, its ITC cosine
    similarity to the query and, when re-ranked, the ITM match logit (score = logit +
    similarity); None otherwise (score = similarity)."""

    id: str | int
    score: float
    similarity: float
    match_logit: float | None = None


def _check_ids(ids, count):
    ids = list(ids)
    if len(ids) != count:
        raise ValueError(f"Got {len(ids)} ids for {count} embeddings.")
    if all(isinstance(i, str) for i in ids):
        pass
    elif all(is_int(i) for i in ids):
        ids = [int(i) for i in ids]
    else:
        kinds = sorted({type(i).__name__ for i in ids})
        raise TypeError(
            f"ids must be all str or all int (they are saved as one array), got {kinds}."
        )
    if len(set(ids)) != len(ids):
        seen, duplicates = set(), []
        for i in ids:
            if i in seen:
                duplicates.append(i)
            seen.add(i)
        raise ValueError(f"ids must be unique; repeated: {duplicates[:5]!r}.")
    return ids


@dataclass(eq=False)
class Gallery:
    """Embedded images or texts, searchable by ITC similarity.

    Attributes:
        embeddings: (N, E) float32 L2-normalized ITC features.
        ids: N unique ids, all str or all int.
        modality: "image" or "text".
        items: what each embedding came from, when it is a string: the texts of a text
            gallery, the image file paths of an image gallery. ITM re-ranking reads them.
        image_states: (N, L, D) vision states of an image gallery's images, kept for ITM
            re-ranking without re-reading the images (N * L * D * 4 bytes).
        metadata: JSON-serializable dict saved with the gallery (e.g. the model's name).
    """

    embeddings: np.ndarray
    ids: list
    modality: str
    items: list[str] | None = None
    image_states: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2 or not self.embeddings.shape[0]:
            raise ValueError(
                f"embeddings must have shape (N, E) with N >= 1, got {self.embeddings.shape}."
            )
        count = self.embeddings.shape[0]
        self.ids = _check_ids(self.ids, count)
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be 'image' or 'text', got {self.modality!r}.")
        if self.items is not None:
            self.items = [os.fspath(item) for item in self.items]
            if len(self.items) != count:
                raise ValueError(f"Got {len(self.items)} items for {count} embeddings.")
        if self.image_states is not None:
            if self.modality != "image":
                raise ValueError("image_states belong to an image gallery.")
            self.image_states = np.asarray(self.image_states, dtype=np.float32)
            if self.image_states.ndim != 3 or self.image_states.shape[0] != count:
                raise ValueError(
                    f"image_states must have shape ({count}, L, D), got {self.image_states.shape}."
                )
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}.")
        self.metadata = dict(self.metadata)

    def __len__(self):
        return self.embeddings.shape[0]

    def search(self, query_embeddings, k=10):
        """The ITC top k of each query, most similar first; ties keep gallery order.

        Args:
            query_embeddings: (Q, E) or (E,) L2-normalized features, as Retriever's are; the
                similarity is their dot product with the gallery's embeddings.
            k: how many items per query (at most the gallery's size).

        Returns:
            (indices, similarities): gallery positions and similarities, both (Q, min(k, N)).

        Raises:
            ValueError: ``k`` is not a positive int, or the queries are not (Q, E).
        """
        k = min(positive_int("k", k), len(self))
        queries = np.asarray(query_embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"query_embeddings must have shape (Q, {self.embeddings.shape[1]}), "
                f"got {np.shape(query_embeddings)}."
            )
        similarities = queries @ self.embeddings.T
        if k < len(self):
            candidates = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
            candidates.sort(axis=1)
        else:
            candidates = np.broadcast_to(np.arange(len(self)), similarities.shape)
        candidate_similarities = np.take_along_axis(similarities, candidates, axis=1)
        order = np.argsort(-candidate_similarities, axis=1, kind="stable")
        return (
            np.take_along_axis(candidates, order, axis=1),
            np.take_along_axis(candidate_similarities, order, axis=1),
        )

    # ------------------------------------------------------------------ saving / loading

    def save(self, path):
        """Write the gallery to one .npz file, which loads without pickle.

        The file holds the arrays and a JSON header (format, modality, metadata).

        Args:
            path: the file to write; ".npz" is appended when missing.

        Returns:
            The path written.

        Raises:
            TypeError: the metadata is not JSON-serializable.
        """
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        header = {
            "format": GALLERY_FORMAT,
            "version": GALLERY_FORMAT_VERSION,
            "modality": self.modality,
            "metadata": self.metadata,
        }
        try:
            header_json = json.dumps(header)
        except TypeError as error:
            raise TypeError(f"Gallery metadata must be JSON-serializable: {error}") from None
        arrays = {
            "header": np.array(header_json),
            "embeddings": self.embeddings,
            "ids": np.array(self.ids),
        }
        if self.items is not None:
            arrays["items"] = np.array(self.items, dtype=str)
        if self.image_states is not None:
            arrays["image_states"] = self.image_states
        with open(path, "wb") as file:
            np.savez(file, **arrays)
        return path

    @classmethod
    def load(cls, path):
        """Read a gallery written by :meth:`save`.

        Args:
            path: the .npz file.

        Returns:
            The Gallery.

        Raises:
            ValueError: the file is not a saved Gallery, or of another format version.
        """
        path = os.fspath(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path!r} is not a saved Gallery (.npz): {error}") from None
        with data:
            if "header" not in data.files or "embeddings" not in data.files:
                raise ValueError(f"{path!r} is an .npz file but not a saved Gallery.")
            header = json.loads(str(data["header"]))
            if header.get("format") != GALLERY_FORMAT:
                raise ValueError(f"{path!r} is an .npz file but not a saved Gallery.")
            if header.get("version") != GALLERY_FORMAT_VERSION:
                raise ValueError(
                    f"{path!r} is a Gallery of format version {header.get('version')}; this "
                    f"tfblip reads version {GALLERY_FORMAT_VERSION}."
                )
            return cls(
                embeddings=data["embeddings"],
                ids=data["ids"].tolist(),
                modality=header["modality"],
                items=data["items"].tolist() if "items" in data.files else None,
                image_states=data["image_states"] if "image_states" in data.files else None,
                metadata=header.get("metadata") or {},
            )


def _is_pixel_batch(images):
    return isinstance(images, (np.ndarray, tf.Tensor)) and len(images.shape) == 4


class Retriever:
    """Embeds, indexes and searches images and texts with a TFBlipForImageTextRetrieval.

    Args:
        model: the retrieval model (ITC features for search, ITM head for re-ranking).
        processor: a BlipProcessor with tokenizer and image processor.
        batch_size: images or texts per forward pass (and image-text pairs when re-ranking).
        max_text_length: texts are truncated (and padded) to this many tokens, as the
            original's 35; None truncates at the model's position limit and pads per batch.
        interpolate_pos_encoding: for images of another size than the model's.

    Images are given as a list of file paths, PIL images or arrays (one image alone is
    accepted too), which the processor prepares, or as a 4-D float array (N, C, H, W) of
    pixel values already prepared (``processor(images=...)["pixel_values"]``).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        batch_size=32,
        max_text_length=DEFAULT_MAX_TEXT_LENGTH,
        interpolate_pos_encoding=False,
    ):
        if not isinstance(model, TFBlipForImageTextRetrieval):
            raise TypeError(
                f"Retriever needs a TFBlipForImageTextRetrieval, got {type(model).__name__}."
            )
        self.model = model
        self.processor = processor
        self.batch_size = positive_int("batch_size", batch_size)
        if max_text_length is not None:
            max_text_length = positive_int("max_text_length", max_text_length)
        self.max_text_length = max_text_length
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)

    # ------------------------------------------------------------------ model calls

    def _encode_images(self, pixel_values):
        """(ITC features, vision states) of one batch, as numpy arrays."""
        model, interpolate = self.model, self.interpolate_pos_encoding
        encode = graph_function(
            model,
            "retrieval_encode_images",
            lambda pixels: _image_features_and_states(model, pixels, interpolate),
            interpolate,
        )
        features, states = encode(tf.convert_to_tensor(pixel_values, tf.float32))
        return features.numpy(), states.numpy()

    def _text_features(self, input_ids, attention_mask):
        """ITC features of tokenized texts, batched."""
        encode = graph_function(self.model, "retrieval_encode_texts", self.model.get_text_features)
        features = []
        for start in range(0, len(input_ids), self.batch_size):
            end = start + self.batch_size
            features.append(
                encode(
                    tf.constant(input_ids[start:end], tf.int32),
                    tf.constant(attention_mask[start:end], tf.int32),
                ).numpy()
            )
        return np.concatenate(features)

    def _match_logits(self, image_states, input_ids, attention_mask):
        """ITM "match" logits (itm_logits[:, 1]) of (image, text) pairs, batched.

        `image_states(start, end)` gives the vision states of pairs start..end-1, so that
        no more than a batch of them is held at once.
        """
        model = self.model
        match = graph_function(
            model,
            "retrieval_match_logits",
            lambda states, ids, mask: model.image_text_matching(states, ids, mask)[0][:, 1],
            enc_token_id_in_use(model.config),
        )
        logits = []
        for start in range(0, len(input_ids), self.batch_size):
            end = min(start + self.batch_size, len(input_ids))
            logits.append(
                match(
                    tf.constant(image_states(start, end), tf.float32),
                    tf.constant(input_ids[start:end], tf.int32),
                    tf.constant(attention_mask[start:end], tf.int32),
                ).numpy()
            )
        return np.concatenate(logits).astype(np.float32)

    # ------------------------------------------------------------------ inputs

    def _tokenize(self, texts):
        """(input_ids, attention_mask) numpy arrays, every row of the same width."""
        if self.max_text_length is None:
            max_length = self.model.config.text_config.max_position_embeddings
            padding = "longest"
        else:
            max_length, padding = self.max_text_length, "max_length"
        encoded = self.processor(
            text=texts, padding=padding, truncation=True, max_length=max_length, return_tensors="np"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def _pixel_batches(self, images):
        """Pixel-value batches (at most batch_size images each) of `images`."""
        if _is_pixel_batch(images):
            pixels = np.asarray(images)
            channels = self.model.config.vision_config.num_channels
            if not np.issubdtype(pixels.dtype, np.floating) or pixels.shape[1] != channels:
                raise ValueError(
                    f"A 4-D array is taken as prepared pixel values (N, {channels}, H, W) of "
                    f"floats; got {pixels.dtype} {pixels.shape}. Pass raw images as a list."
                )
            if not len(pixels):
                raise ValueError("Got no images.")
            for start in range(0, len(pixels), self.batch_size):
                yield pixels[start : start + self.batch_size]
            return
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("Got no images.")
        if self.processor is None or getattr(self.processor, "image_processor", None) is None:
            raise ValueError("Preparing images needs a processor with an image processor.")
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            yield self.processor(images=chunk, return_tensors="np")["pixel_values"]

    def _encoded_images(self, images, keep_states):
        features, states = [], []
        for pixels in self._pixel_batches(images):
            batch_features, batch_states = self._encode_images(pixels)
            features.append(batch_features)
            if keep_states:
                states.append(batch_states)
        return np.concatenate(features), (np.concatenate(states) if keep_states else None)

    # ------------------------------------------------------------------ embedding

    def embed_images(self, images):
        """ITC features of images.

        Args:
            images: file paths, PIL images or arrays, or prepared pixel values (N, C, H, W).

        Returns:
            (N, E) float32 L2-normalized features.
        """
        return self._encoded_images(images, keep_states=False)[0]

    def embed_texts(self, texts):
        """ITC features of texts (first token "[CLS]").

        Args:
            texts: a string or a list of strings.

        Returns:
            (N, E) float32 L2-normalized features.
        """
        return self._text_features(*self._tokenize(text_list(texts)))

    def image_gallery(self, images, ids=None, *, keep_image_states=False, metadata=None):
        """A Gallery of the images' ITC features.

        ITM re-ranking needs the images' vision states: kept with ``keep_image_states``, or
        else recomputed from the file paths for every query's candidates (slower).

        Args:
            images: as :meth:`embed_images`.
            ids: one unique id per image; default: the file paths when every image is one,
                else 0..N-1.
            keep_image_states: keep the vision states in the gallery (memory: N * L * D
                floats, e.g. 1.7 MB per image for ViT-B at 384 px).
            metadata: JSON-serializable dict saved with the gallery.

        Returns:
            An image Gallery.
        """
        if _is_pixel_batch(images):
            paths = None
        else:
            listed = list(images) if isinstance(images, (list, tuple)) else [images]
            is_path = [isinstance(image, (str, os.PathLike)) for image in listed]
            paths = [os.fspath(image) for image in listed] if all(is_path) else None
        embeddings, states = self._encoded_images(images, keep_states=keep_image_states)
        if ids is None:
            ids = paths if paths is not None else list(range(len(embeddings)))
        return Gallery(
            embeddings=embeddings,
            ids=ids,
            modality="image",
            items=paths,
            image_states=states,
            metadata=metadata or {},
        )

    def text_gallery(self, texts, ids=None, *, metadata=None):
        """A Gallery of the texts' ITC features.

        Args:
            texts: a string or a list of strings.
            ids: one unique id per text; default 0..N-1.
            metadata: JSON-serializable dict saved with the gallery.

        Returns:
            A text Gallery, which keeps the texts for ITM re-ranking.
        """
        texts = text_list(texts)
        return Gallery(
            embeddings=self.embed_texts(texts),
            ids=list(range(len(texts))) if ids is None else ids,
            modality="text",
            items=texts,
            metadata=metadata or {},
        )

    # ------------------------------------------------------------------ search

    def text_to_image(self, texts, gallery, k=10, *, rerank_k=None):
        """The k best images of an image gallery for each text.

        Args:
            texts: a string or a list of strings.
            gallery: an image Gallery.
            k: how many hits per text.
            rerank_k: if given (>= k), the rerank_k most similar images are re-ranked by ITM
                match logit + ITC similarity, as the original evaluation (its k_test: 256 on
                COCO, 128 on Flickr30k).

        Returns:
            A list of Hit lists, one per text, best first.

        Raises:
            TypeError: ``gallery`` is not a Gallery.
            ValueError: a gallery of texts, bad ``k`` / ``rerank_k``, or re-ranking a gallery
                that kept neither its images' states nor their paths.
        """
        texts = text_list(texts)
        _check_gallery(gallery, "image")
        k, search_k = _search_sizes(k, rerank_k)
        input_ids, attention_mask = self._tokenize(texts)
        features = self._text_features(input_ids, attention_mask)
        indices, similarities = gallery.search(features, search_k)
        if rerank_k is None:
            return [_hits(gallery, row, sims, None, k) for row, sims in zip(indices, similarities)]
        results = []
        for query, (row, sims) in enumerate(zip(indices, similarities)):
            count = len(row)
            logits = self._match_logits(
                lambda start, end, row=row: self._gallery_image_states(gallery, row[start:end]),
                np.repeat(input_ids[query][None], count, axis=0),
                np.repeat(attention_mask[query][None], count, axis=0),
            )
            results.append(_hits(gallery, row, sims, logits, k))
        return results

    def image_to_text(self, images, gallery, k=10, *, rerank_k=None):
        """The k best texts of a text gallery for each image.

        Args:
            images: as :meth:`embed_images`.
            gallery: a text Gallery.
            k: how many hits per image.
            rerank_k: if given (>= k), the rerank_k most similar texts are re-ranked by ITM
                match logit + ITC similarity, as the original evaluation.

        Returns:
            A list of Hit lists, one per image, best first.

        Raises:
            TypeError: ``gallery`` is not a Gallery.
            ValueError: a gallery of images, bad ``k`` / ``rerank_k``, or re-ranking a gallery
                without its texts.
        """
        _check_gallery(gallery, "text")
        k, search_k = _search_sizes(k, rerank_k)
        if rerank_k is not None and gallery.items is None:
            raise ValueError("ITM re-ranking needs the gallery's texts (its items); it has none.")
        results = []
        for pixels in self._pixel_batches(images):
            features, states = self._encode_images(pixels)
            indices, similarities = gallery.search(features, search_k)
            if rerank_k is None:
                results.extend(
                    _hits(gallery, row, sims, None, k) for row, sims in zip(indices, similarities)
                )
                continue
            for image_states, row, sims in zip(states, indices, similarities):
                input_ids, attention_mask = self._tokenize([gallery.items[i] for i in row])
                logits = self._match_logits(
                    lambda start, end, states=image_states: np.repeat(
                        states[None], end - start, axis=0
                    ),
                    input_ids,
                    attention_mask,
                )
                results.append(_hits(gallery, row, sims, logits, k))
        return results

    def _gallery_image_states(self, gallery, indices):
        if gallery.image_states is not None:
            return gallery.image_states[indices]
        if gallery.items is None:
            raise ValueError(
                "ITM re-ranking needs the gallery's images: build it with keep_image_states=True, "
                "or from image file paths (kept as its items)."
            )
        paths = [gallery.items[i] for i in indices]
        return np.concatenate([self._encode_images(p)[1] for p in self._pixel_batches(paths)])


def _image_features_and_states(model, pixel_values, interpolate_pos_encoding):
    states = model.vision_model(
        pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
    ).last_hidden_state
    return model.itc_image_features(states), states


def _check_gallery(gallery, modality):
    if not isinstance(gallery, Gallery):
        raise TypeError(f"gallery must be a Gallery, got {type(gallery).__name__}.")
    if gallery.modality != modality:
        raise ValueError(
            f"This search needs a gallery of {modality}s, got one of {gallery.modality}s."
        )


def _search_sizes(k, rerank_k):
    """(k, how many ITC candidates to fetch)."""
    k = positive_int("k", k)
    if rerank_k is None:
        return k, k
    rerank_k = positive_int("rerank_k", rerank_k)
    if rerank_k < k:
        raise ValueError(f"rerank_k ({rerank_k}) must be at least k ({k}).")
    return k, rerank_k


def _hits(gallery, indices, similarities, match_logits, k):
    """The k best Hits of one query: by similarity, or by match logit + similarity."""
    if match_logits is None:
        scores = similarities
        order = np.arange(len(indices))
    else:
        scores = match_logits + similarities
        order = np.argsort(-scores, kind="stable")
    return [
        Hit(
            id=gallery.ids[indices[i]],
            score=float(scores[i]),
            similarity=float(similarities[i]),
            match_logit=None if match_logits is None else float(match_logits[i]),
        )
        for i in order[:k]
    ]


def recall_at_k(ranked_ids, relevant, ks=(1, 5, 10)):
    """Recall@k of ranked results. The original reported 100 x these.

    Args:
        ranked_ids: one ranking per query, best first, of ids (or of Hits, as the searches
            return). A ranking shorter than k counts what it holds, so search with
            k >= max(ks).
        relevant: per query, one id or a collection (list, tuple, set) of ids, any of which
            counts; e.g. each of an image's captions for image->text.
        ks: the k values to report.

    Returns:
        {k: fraction of queries with a relevant item in the top k}.

    Raises:
        ValueError: no queries, counts that differ, an empty ``ks`` or a query without
            relevant ids.
    """
    ranked_ids, relevant = list(ranked_ids), list(relevant)
    if not ranked_ids:
        raise ValueError("recall_at_k needs at least one query.")
    if len(ranked_ids) != len(relevant):
        raise ValueError(
            f"Got {len(ranked_ids)} rankings but relevant ids for {len(relevant)} queries."
        )
    ks = [positive_int("every k in ks", k) for k in ks]
    if not ks:
        raise ValueError("ks is empty.")
    first_relevant_ranks = []
    for query, (ranking, wanted) in enumerate(zip(ranked_ids, relevant)):
        wanted = _as_id_set(wanted)
        if not wanted:
            raise ValueError(f"Query {query} has no relevant ids.")
        rank = next(
            (position for position, item in enumerate(ranking) if _hit_id(item) in wanted),
            None,
        )
        first_relevant_ranks.append(rank)
    count = len(first_relevant_ranks)
    return {
        k: sum(rank is not None and rank < k for rank in first_relevant_ranks) / count for k in ks
    }


def _as_id_set(wanted: Any) -> set:
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return set(wanted)
    return {wanted}


def _hit_id(item):
    return item.id if isinstance(item, Hit) else item
