"""Graph ops shared by the tf.data pipelines and the TF Serving export.

* :mod:`tfblip.ops.image`: image decoding, Pillow-exact bicubic resizing and the image
  processor's rescale + normalize, as core TensorFlow ops.
* :mod:`tfblip.ops.text`: the processor's WordPiece tokenizer as core TensorFlow ops.
* :mod:`tfblip.ops.trace_cache`: traced graphs (the encoders', the decoding loop's) kept on
  disk, so that a new process imports them instead of tracing them again.
* :mod:`tfblip.ops.graph_rewrites`: the Grappler options tfblip's own graphs run under (a
  shorter optimisation at the first call).
"""
