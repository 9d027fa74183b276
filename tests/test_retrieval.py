"""tfblip.retrieval and the [ENC] option, against transformers' BlipForImageTextRetrieval."""

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from reference import assert_close, reference_model, to_torch
from skimage import data
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip
from tfblip.retrieval import Gallery, Hit, Retriever, recall_at_k

TEXTS = [
    "an astronaut in front of a flag",
    "a cat lying down",
    "a cup of coffee",
    "a rocket on the launch pad",
    "a black and white photo",
]


def photos():
    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
    return [Image.fromarray(image) for image in images]


def reference_checkpoint(directory, class_name, seed, **config_kwargs):
    """A transformers model saved with Salesforce-style processor files: [DEC] and [ENC] are
    the two ids after the vocabulary, as in the Salesforce checkpoints."""
    vocab = _build_vocab()
    text = {"vocab_size": len(vocab) + 2, "bos_token_id": len(vocab), "sep_token_id": 102}
    reference = reference_model(class_name, seed=seed, text=text, **config_kwargs)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            # LayerNorm scales near 1: with std-0.2 scales the last LayerNorm's bias drowns
            # what the tokens say (changing a token moves the ITM logits by 1e-4).
            if "norm" in name.lower() and name.endswith("weight"):
                parameter.add_(1.0)
    reference.save_pretrained(directory)
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=30))
    return reference


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, transformers model, tfblip model, processor) of one retrieval checkpoint."""
    directory = tmp_path_factory.mktemp("retrieval")
    reference = reference_checkpoint(directory, "BlipForImageTextRetrieval", seed=40)
    model = tfblip.TFBlipForImageTextRetrieval.from_pretrained(directory)
    processor = tfblip.BlipProcessor.from_pretrained(directory)
    return directory, reference, model, processor


@pytest.fixture(scope="module")
def retriever(checkpoint):
    _, _, model, processor = checkpoint
    # A batch smaller than the gallery: batching must not change any result.
    return Retriever(model, processor, batch_size=2)


def prepared(processor, texts=TEXTS):
    pixels = processor(images=photos(), return_tensors="np")["pixel_values"]
    tokens = processor(
        text=texts, padding="max_length", truncation=True, max_length=35, return_tensors="np"
    )
    return pixels, tokens["input_ids"], tokens["attention_mask"]


def reference_similarities(reference, pixels, input_ids, attention_mask):
    """(images, texts) ITC cosine similarities from transformers."""
    with torch.no_grad():
        return reference(
            input_ids=to_torch(input_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(attention_mask),
            use_itm_head=False,
        ).itm_score.numpy()


def reference_match_logits(reference, pixels, input_ids, attention_mask):
    """ITM logits[:, 1] of aligned (image, text) rows from transformers."""
    with torch.no_grad():
        return (
            reference(
                input_ids=to_torch(input_ids),
                pixel_values=to_torch(pixels),
                attention_mask=to_torch(attention_mask),
                use_itm_head=True,
            )
            .itm_score[:, 1]
            .numpy()
        )


# ------------------------------------------------------------------------------------------
# Embeddings and search against transformers
# ------------------------------------------------------------------------------------------


def test_embeddings_give_transformers_similarities(checkpoint, retriever):
    _, reference, _, processor = checkpoint
    pixels, input_ids, attention_mask = prepared(processor)
    image_embeddings = retriever.embed_images(photos())
    text_embeddings = retriever.embed_texts(TEXTS)
    assert image_embeddings.shape == (5, 12) and image_embeddings.dtype == np.float32
    assert_close(np.linalg.norm(text_embeddings, axis=1), np.ones(5), atol=1e-5, name="norms")
    expected = reference_similarities(reference, pixels, input_ids, attention_mask)
    assert_close(image_embeddings @ text_embeddings.T, expected, name="similarities")
    # Prepared pixel values give the same embeddings as the images.
    assert_close(retriever.embed_images(pixels), image_embeddings, atol=1e-6, name="pixels")


def test_model_features_api_gives_transformers_scores(checkpoint):
    """get_image_features / get_text_features / itm_probability / pair_scores: the one API the
    CLI, the export, scoring and retrieval use, each tower on its own."""
    _, reference, model, processor = checkpoint
    pixels, input_ids, attention_mask = prepared(processor)
    image_features = model.get_image_features(pixel_values=pixels)
    text_features = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    assert image_features.dtype == "float32" and image_features.shape == (5, 12)
    expected = reference_similarities(reference, pixels, input_ids, attention_mask)
    similarities = image_features.numpy() @ text_features.numpy().T
    assert_close(similarities, expected, name="similarities")
    # The same numbers as contrastive_features, which computes both towers at once.
    states = model.vision_model(pixel_values=pixels).last_hidden_state
    both_image, both_text, _ = model.contrastive_features(states, input_ids, attention_mask)
    assert_close(image_features, both_image, atol=0, name="image features")
    assert_close(text_features, both_text, atol=0, name="text features")
    assert_close(model.itc_image_features(states), both_image, atol=0, name="from states")
    assert_close(model.itc_text_features(input_ids, attention_mask), both_text, atol=0)

    itm_probability, itc_similarity = model.pair_scores(states, input_ids, attention_mask)
    with torch.no_grad():
        expected_probability = torch.softmax(
            reference(
                input_ids=to_torch(input_ids),
                pixel_values=to_torch(pixels),
                attention_mask=to_torch(attention_mask),
            ).itm_score,
            dim=-1,
        )[:, 1].numpy()
    assert_close(itm_probability, expected_probability, name="itm probability")
    assert_close(model.itm_probability(states, input_ids, attention_mask), itm_probability, atol=0)
    assert_close(itc_similarity, np.diag(expected), name="itc similarity of pairs")


def expected_rankings(reference, pixels, input_ids, attention_mask, rerank_k, text_queries):
    """The original evaluation by hand: ITC top rerank_k, then ITM logit + similarity."""
    similarities = reference_similarities(reference, pixels, input_ids, attention_mask)
    if text_queries:
        similarities = similarities.T
    rankings = []
    for query, row in enumerate(similarities):
        candidates = np.argsort(-row, kind="stable")[:rerank_k]
        queries = np.full(len(candidates), query)
        image_rows, text_rows = (candidates, queries) if text_queries else (queries, candidates)
        logits = reference_match_logits(
            reference, pixels[image_rows], input_ids[text_rows], attention_mask[text_rows]
        )
        scores = logits + row[candidates]
        order = np.argsort(-scores, kind="stable")
        rankings.append((candidates[order], scores[order], logits[order]))
    return rankings


def assert_same_hits(actual, expected, atol=1e-5):
    """Same ids in the same order, and scores equal up to float rounding (batches differ)."""
    assert [[hit.id for hit in hits] for hits in actual] == [
        [hit.id for hit in hits] for hits in expected
    ]
    for field in ("score", "similarity", "match_logit"):
        assert_close(
            [[getattr(hit, field) for hit in hits] for hits in actual],
            [[getattr(hit, field) for hit in hits] for hits in expected],
            atol=atol,
            name=field,
        )


def check_hits(hits, expected, k, ids):
    for query_hits, (indices, scores, logits) in zip(hits, expected):
        assert [hit.id for hit in query_hits] == [ids[i] for i in indices[:k]]
        assert_close([hit.score for hit in query_hits], scores[:k], name="scores")
        assert_close([hit.match_logit for hit in query_hits], logits[:k], name="match logits")
        for hit in query_hits:
            assert hit.score == pytest.approx(hit.match_logit + hit.similarity, abs=1e-6)


def test_text_to_image_reranks_as_the_original_evaluation(checkpoint, retriever):
    _, reference, _, processor = checkpoint
    gallery = retriever.image_gallery(photos(), ids=list("abcde"), keep_image_states=True)
    hits = retriever.text_to_image(TEXTS, gallery, k=2, rerank_k=4)
    assert len(hits) == 5 and all(len(query_hits) == 2 for query_hits in hits)
    expected = expected_rankings(reference, *prepared(processor), rerank_k=4, text_queries=True)
    check_hits(hits, expected, 2, list("abcde"))


def test_image_to_text_reranks_as_the_original_evaluation(checkpoint, retriever):
    _, reference, _, processor = checkpoint
    gallery = retriever.text_gallery(TEXTS)
    hits = retriever.image_to_text(photos(), gallery, k=3, rerank_k=3)
    expected = expected_rankings(reference, *prepared(processor), rerank_k=3, text_queries=False)
    check_hits(hits, expected, 3, list(range(5)))


def test_itc_only_search_ranks_by_similarity(checkpoint, retriever):
    _, reference, _, processor = checkpoint
    expected = reference_similarities(reference, *prepared(processor)).T
    hits = retriever.text_to_image(TEXTS, retriever.image_gallery(photos()), k=5)
    for row, query_hits in zip(expected, hits):
        assert [hit.id for hit in query_hits] == list(np.argsort(-row, kind="stable"))
        assert_close([hit.score for hit in query_hits], np.sort(row)[::-1], name="scores")
        assert all(hit.match_logit is None and hit.score == hit.similarity for hit in query_hits)


def test_reranking_reads_images_from_paths(retriever, tmp_path):
    paths = []
    for index, photo in enumerate(photos()):
        paths.append(str(tmp_path / f"photo{index}.png"))
        photo.save(paths[-1])
    from_paths = retriever.image_gallery(paths)
    assert from_paths.ids == paths and from_paths.items == paths
    assert from_paths.image_states is None
    in_memory = retriever.image_gallery(paths, keep_image_states=True)
    assert in_memory.image_states.shape == (5, 26, 24)
    queries = TEXTS[:2]
    assert_same_hits(
        retriever.text_to_image(queries, from_paths, k=3, rerank_k=5),
        retriever.text_to_image(queries, in_memory, k=3, rerank_k=5),
    )


# ------------------------------------------------------------------------------------------
# Recall
# ------------------------------------------------------------------------------------------


def test_recall_of_gallery_items_searched_with_their_own_embeddings(retriever):
    gallery = retriever.image_gallery(photos(), ids=list("abcde"))
    indices, similarities = gallery.search(gallery.embeddings, k=5)
    assert_close(similarities[:, 0], np.ones(5), atol=1e-5, name="self-similarity")
    ranked = [[gallery.ids[i] for i in row] for row in indices]
    assert recall_at_k(ranked, gallery.ids, ks=(1, 5)) == {1: 1.0, 5: 1.0}
    # Every query's own item removed from what counts: only its runner-up (rank 2) is relevant.
    runner_up = [row[1] for row in ranked]
    assert recall_at_k(ranked, runner_up, ks=(1, 2, 5)) == {1: 0.0, 2: 1.0, 5: 1.0}


def test_recall_with_several_relevant_items_and_hits():
    ranked = [["a", "b", "c"], ["c", "b", "a"], ["b", "c", "a"], ["c", "a", "b"]]
    relevant = ["a", {"a", "b"}, ("x", "a"), ["z"]]
    assert recall_at_k(ranked, relevant, ks=(1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 0.75}
    hits = [[Hit(id=i, score=0.0, similarity=0.0) for i in row] for row in ranked]
    assert recall_at_k(hits, relevant, ks=(1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 0.75}


# ------------------------------------------------------------------------------------------
# Saving and loading
# ------------------------------------------------------------------------------------------


def test_gallery_save_load_round_trip(retriever, tmp_path):
    gallery = retriever.image_gallery(
        photos()[:3], ids=["x", "y", "z"], keep_image_states=True, metadata={"model": "tiny"}
    )
    path = gallery.save(tmp_path / "images")
    assert path.endswith("images.npz")
    loaded = Gallery.load(path)
    assert np.array_equal(loaded.embeddings, gallery.embeddings)
    assert np.array_equal(loaded.image_states, gallery.image_states)
    assert loaded.ids == ["x", "y", "z"] and loaded.modality == "image"
    assert loaded.items is None and loaded.metadata == {"model": "tiny"}
    assert retriever.text_to_image("a cat", loaded, k=2, rerank_k=3) == (
        retriever.text_to_image("a cat", gallery, k=2, rerank_k=3)
    )

    texts = retriever.text_gallery(TEXTS, ids=[10, 20, 30, 40, 50])
    loaded = Gallery.load(texts.save(tmp_path / "texts.npz"))
    assert loaded.ids == [10, 20, 30, 40, 50] and all(type(i) is int for i in loaded.ids)
    assert loaded.items == TEXTS and loaded.image_states is None
    assert np.array_equal(loaded.embeddings, texts.embeddings)


def test_loading_something_else_fails(tmp_path):
    np.savez(tmp_path / "other.npz", embeddings=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not a saved Gallery"):
        Gallery.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a saved Gallery"):
        Gallery.load(tmp_path / "text.npz")
    header = {"format": "tfblip.gallery", "version": 99, "modality": "text"}
    np.savez(
        tmp_path / "future.npz", header=np.array(json.dumps(header)), embeddings=np.ones((1, 2))
    )
    with pytest.raises(ValueError, match="version 99"):
        Gallery.load(tmp_path / "future.npz")


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_gallery_rejects_bad_contents():
    embeddings = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="unique"):
        Gallery(embeddings, ids=["a", "b", "a"], modality="text")
    with pytest.raises(ValueError, match="2 ids for 3"):
        Gallery(embeddings, ids=[1, 2], modality="text")
    with pytest.raises(TypeError, match="all str or all int"):
        Gallery(embeddings, ids=[1, "b", 3], modality="text")
    with pytest.raises(ValueError, match="modality"):
        Gallery(embeddings, ids=[1, 2, 3], modality="audio")
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        Gallery(np.zeros(3), ids=[1, 2, 3], modality="text")
    with pytest.raises(ValueError, match="image gallery"):
        Gallery(embeddings, ids=[1, 2, 3], modality="text", image_states=np.zeros((3, 2, 2)))
    gallery = Gallery(embeddings, ids=[1, 2, 3], modality="text", metadata={"bad": object()})
    with pytest.raises(ValueError, match=r"shape \(Q, 3\)"):
        gallery.search(np.ones((2, 4)))
    with pytest.raises(ValueError, match="k must be a positive int"):
        gallery.search(np.ones((2, 3)), k=0)
    with pytest.raises(TypeError, match="JSON"):
        gallery.save("unused.npz")


def test_search_errors(checkpoint, retriever):
    _, _, _, processor = checkpoint
    images = retriever.image_gallery(photos()[:2])
    texts = retriever.text_gallery(TEXTS[:2])
    with pytest.raises(TypeError, match="TFBlipForImageTextRetrieval"):
        Retriever(tfblip.TFBlipModel(checkpoint[2].config), processor)
    with pytest.raises(ValueError, match="batch_size"):
        Retriever(checkpoint[2], processor, batch_size=0)
    with pytest.raises(ValueError, match="needs a gallery of images"):
        retriever.text_to_image("a cat", texts)
    with pytest.raises(ValueError, match="needs a gallery of texts"):
        retriever.image_to_text(photos()[:1], images)
    with pytest.raises(ValueError, match=r"rerank_k \(1\) must be at least k \(2\)"):
        retriever.text_to_image("a cat", images, k=2, rerank_k=1)
    with pytest.raises(ValueError, match="keep_image_states"):
        retriever.text_to_image("a cat", images, k=1, rerank_k=2)
    with pytest.raises(TypeError, match="list of str"):
        retriever.embed_texts([])
    with pytest.raises(ValueError, match="prepared pixel values"):
        retriever.embed_images(np.zeros((2, 30, 30, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="must be a Gallery"):
        retriever.text_to_image("a cat", images.embeddings)


def test_recall_errors():
    with pytest.raises(ValueError, match="2 rankings but relevant ids for 1"):
        recall_at_k([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="Query 0 has no relevant ids"):
        recall_at_k([["a"]], [set()])
    with pytest.raises(ValueError, match="positive int"):
        recall_at_k([["a"]], ["a"], ks=(0,))
    with pytest.raises(ValueError, match="at least one query"):
        recall_at_k([], [])


# ------------------------------------------------------------------------------------------
# The [ENC] option
# ------------------------------------------------------------------------------------------


def enc_config(directory, processor):
    config = tfblip.BlipConfig.from_pretrained(directory)
    config.text_config.enc_token_id = processor.enc_token_id
    config.use_enc_token = True
    config.validate()
    return config


def test_enc_token_itm_matches_transformers_with_enc_first(checkpoint):
    directory, reference, model, processor = checkpoint
    enc_model = tfblip.TFBlipForImageTextRetrieval.from_pretrained(
        directory, config=enc_config(directory, processor)
    )
    pixels, input_ids, attention_mask = prepared(processor)
    states = model.vision_model(pixel_values=pixels).last_hidden_state
    with_cls, _ = model.image_text_matching(states, input_ids, attention_mask)
    with_enc, _ = enc_model.image_text_matching(states, input_ids, attention_mask)
    assert np.max(np.abs(with_cls.numpy() - with_enc.numpy())) > 0.1

    enc_ids = input_ids.copy()
    enc_ids[:, 0] = processor.enc_token_id
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(enc_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(attention_mask),
        ).itm_score
    assert_close(with_enc, expected, name="itm logits with [ENC]")
    assert_close(
        enc_model(
            input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask
        ).itm_score,
        expected,
        name="call with [ENC]",
    )
    # ITC keeps [CLS].
    assert_close(
        enc_model.itc_text_features(input_ids, attention_mask),
        model.itc_text_features(input_ids, attention_mask),
        atol=1e-6,
        name="itc text features",
    )
    # Re-ranking follows the model's config, also after a first search traced the matching.
    enc_retriever = Retriever(enc_model, processor)
    gallery = enc_retriever.image_gallery(photos(), keep_image_states=True)
    hits = enc_retriever.text_to_image(TEXTS[:1], gallery, k=5, rerank_k=5)[0]
    logits = reference_match_logits(
        reference, pixels[[h.id for h in hits]], enc_ids[[0] * 5], attention_mask[[0] * 5]
    )
    assert_close([hit.match_logit for hit in hits], logits, name="re-ranking with [ENC]")
    enc_model.config.use_enc_token = False
    off = enc_retriever.text_to_image(TEXTS[:1], gallery, k=5, rerank_k=5)[0]
    assert [hit.match_logit for hit in off] != [hit.match_logit for hit in hits]


def test_enc_option_is_kept_in_config_files(checkpoint, tmp_path):
    directory, _, _, processor = checkpoint
    config = enc_config(directory, processor)
    assert tfblip.BlipConfig.from_dict(config.to_dict()) == config
    config.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["use_enc_token"] is True
    assert written["text_config"]["enc_token_id"] == processor.enc_token_id
    # transformers keeps the unknown keys, so a round trip through it keeps the option.
    transformers.BlipConfig.from_pretrained(tmp_path / "ours").save_pretrained(tmp_path / "hf")
    back = tfblip.BlipConfig.from_pretrained(tmp_path / "hf")
    assert back.use_enc_token is True
    assert back.text_config.enc_token_id == processor.enc_token_id
    # Off by default, and then absent from the file.
    assert "use_enc_token" not in tfblip.BlipConfig().to_dict()


def test_enc_option_errors():
    with pytest.raises(ValueError, match="use_enc_token must be a bool"):
        tfblip.BlipConfig(use_enc_token="yes")
    with pytest.raises(ValueError, match="enc_token_id must be a non-negative int"):
        tfblip.BlipTextConfig(enc_token_id=-1)
    # The default id, 30523, is not in a 99-token vocabulary.
    with pytest.raises(ValueError, match=r"enc_token_id \(30523\)"):
        tfblip.BlipConfig(text_config={"vocab_size": 99}, use_enc_token=True)
    config = tfblip.BlipConfig(
        text_config={
            "vocab_size": 99,
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "intermediate_size": 8,
        },
        vision_config={
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "intermediate_size": 8,
            "image_size": 12,
            "patch_size": 6,
        },
        image_text_hidden_size=8,
    )
    model = tfblip.TFBlipForImageTextRetrieval(config)
    config.use_enc_token = True  # set after validation
    with pytest.raises(ValueError, match="not a token id of the vocabulary"):
        model(
            input_ids=np.ones((1, 3), np.int32), pixel_values=np.zeros((1, 3, 12, 12), np.float32)
        )
