"""Graph ops shared by the tf.data pipelines and the TF Serving export.

* :mod:`tfblip.ops.image`: image decoding, Pillow-exact bicubic resizing and the image
  processor's rescale + normalize, as core TensorFlow ops.
* :mod:`tfblip.ops.text`: the processor's WordPiece tokenizer as core TensorFlow ops.
"""
