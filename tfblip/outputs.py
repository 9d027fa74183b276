"""Model output containers with attribute and key access, as in transformers.

An output is a dict of its non-None fields; a declared field that was not produced reads as
None through attribute access. `tf.nest` treats dict subclasses as structures; Keras' own
tree utilities (optree) need each class registered, which `register_output` does.
"""

import optree


class ModelOutput(dict):
    """A model's outputs: the dict of its non-None ``fields``, also read as attributes.

    Integer and slice indexing read :meth:`to_tuple`, the set fields in declaration order,
    as in transformers.

    Raises:
        TypeError: a key that is not one of the class's ``fields``.
    """

    fields = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unknown = [key for key in self if key not in self.fields]
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {unknown}.")
        for key in [key for key, value in self.items() if value is None]:
            del self[key]

    def __getattr__(self, name):
        if name in self:
            return self[name]
        if name in type(self).fields:
            return None
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}.")

    def __getitem__(self, key):
        # Integer indexing follows transformers: position among the fields that are set.
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self):
        return tuple(self[key] for key in self.fields if key in self)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(self.keys())})"


def register_output(name, fields, doc):
    """A ModelOutput subclass, registered with Keras' tree utilities.

    Args:
        name: the class name.
        fields: the field names in transformers' order, as a list or one space-separated
            string (as `collections.namedtuple` takes them).
        doc: the class docstring.

    Returns:
        The new class.
    """
    if isinstance(fields, str):
        fields = fields.split()
    cls = type(name, (ModelOutput,), {"fields": tuple(fields), "__doc__": doc})
    optree.register_pytree_node(
        cls,
        lambda output: (tuple(output.values()), tuple(output.keys()), tuple(output.keys())),
        lambda keys, values: cls(zip(keys, values)),
        namespace="keras",
    )
    return cls


BaseModelOutputWithPooling = register_output(
    "BaseModelOutputWithPooling",
    "last_hidden_state pooler_output hidden_states attentions",
    "Output of an encoder with a pooled first token.",
)
BaseModelOutputWithPoolingAndCrossAttentions = register_output(
    "BaseModelOutputWithPoolingAndCrossAttentions",
    "last_hidden_state pooler_output past_key_values hidden_states attentions cross_attentions",
    "Output of the BLIP text model. `past_key_values` holds, per layer, the self-attention "
    "(key, value) and, when cross-attending, the cross-attention (key, value).",
)
CausalLMOutputWithCrossAttentions = register_output(
    "CausalLMOutputWithCrossAttentions",
    "loss logits past_key_values hidden_states attentions cross_attentions",
    "Output of the BLIP text decoder with its language-modeling head.",
)
BlipOutput = register_output(
    "BlipOutput",
    "loss logits_per_image logits_per_text text_embeds image_embeds text_model_output "
    "vision_model_output",
    "Output of TFBlipModel: scaled image-text similarities and normalized embeddings.",
)
BlipForConditionalGenerationModelOutput = register_output(
    "BlipForConditionalGenerationModelOutput",
    "loss logits image_embeds last_hidden_state hidden_states attentions",
    "Output of TFBlipForConditionalGeneration.",
)
BlipTextVisionModelOutput = register_output(
    "BlipTextVisionModelOutput",
    "loss image_embeds last_hidden_state hidden_states attentions decoder_logits",
    "Output of TFBlipForQuestionAnswering. `decoder_logits` are the answer decoder's logits "
    "(transformers 4.x returned them; 5.x dropped the field).",
)
BlipImageTextMatchingModelOutput = register_output(
    "BlipImageTextMatchingModelOutput",
    "itm_score loss image_embeds last_hidden_state hidden_states vision_pooler_output "
    "attentions question_embeds",
    "Output of TFBlipForImageTextRetrieval.",
)
