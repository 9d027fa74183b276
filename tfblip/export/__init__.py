"""SavedModel export for TF Serving: in-graph image decoding, tokenization and generation
(the image and text ops live in :mod:`tfblip.ops`)."""
