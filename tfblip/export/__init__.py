"""SavedModel export for TF Serving: in-graph image decoding, tokenization and generation."""
