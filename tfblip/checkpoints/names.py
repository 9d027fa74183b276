"""The PyTorch state-dict key and layout of every Keras variable of a model.

The key comes from a walk over layer names: each sublayer is named after the PyTorch attribute
it mirrors, so `text_decoder.bert.encoder.layer.3.attention.self.query.weight` is the kernel of
the Dense layer reached through layers of those names. Only the leaf parameter names and
layouts (Dense kernel = transposed Linear weight, ...) are spelled out here.
"""

import keras
import numpy as np

# Keras leaf layer -> {variable attribute: (PyTorch parameter name, layout)}.
_LEAF_PARAMETERS = (
    (keras.layers.Dense, {"kernel": ("weight", "linear"), "bias": ("bias", "same")}),
    (keras.layers.Conv2D, {"kernel": ("weight", "conv"), "bias": ("bias", "same")}),
    (keras.layers.LayerNormalization, {"gamma": ("weight", "same"), "beta": ("bias", "same")}),
    (keras.layers.Embedding, {"embeddings": ("weight", "same")}),
)

# Axis permutations between layouts: Linear (out, in) <-> Dense (in, out); Conv2d
# (O, I, kh, kw) <-> Conv2D (kh, kw, I, O).
TO_KERAS_AXES = {"linear": (1, 0), "conv": (2, 3, 1, 0), "same": None}
TO_PYTORCH_AXES = {"linear": (1, 0), "conv": (3, 2, 0, 1), "same": None}


def _child_layers(layer):
    """Direct sublayers in attribute order (lists of layers included)."""
    children, seen = [], set()
    for attribute, value in vars(layer).items():
        if attribute.startswith("_"):
            continue
        candidates = value if isinstance(value, (list, tuple)) else [value]
        for candidate in candidates:
            if isinstance(candidate, keras.layers.Layer) and id(candidate) not in seen:
                seen.add(id(candidate))
                children.append(candidate)
    return children


def pytorch_named_variables(model):
    """The PyTorch name and layout of every weight of `model`.

    Args:
        model: a tfblip Keras model (or layer) whose sublayers are named as in PyTorch.

    Returns:
        {PyTorch state-dict key: (Keras variable, layout)}, the layout one of "linear",
        "conv" or "same" (keys of TO_KERAS_AXES / TO_PYTORCH_AXES).

    Raises:
        RuntimeError: some variable of `model` got no name (a layer the walk cannot reach).
    """
    named = {}

    def walk(layer, prefix):
        for leaf_type, parameters in _LEAF_PARAMETERS:
            if isinstance(layer, leaf_type):
                for attribute, (name, layout) in parameters.items():
                    variable = getattr(layer, attribute, None)
                    if variable is not None:
                        named[prefix + name] = (variable, layout)
                return
        children = _child_layers(layer)
        owned_by_children = {id(v) for child in children for v in child.weights}
        for variable in layer.weights:
            if id(variable) not in owned_by_children:
                named[prefix + variable.name] = (variable, "same")
        for child in children:
            walk(child, f"{prefix}{child.name}.")

    walk(model, "")
    unaccounted = {id(v) for v in model.weights} - {id(v) for v, _ in named.values()}
    if unaccounted:
        raise RuntimeError(
            "Some model variables have no PyTorch name; the layer walk is incomplete."
        )
    return named


def pytorch_layout_shape(variable, layout):
    """The shape of `variable` in PyTorch's `layout` (a Dense kernel's (in, out) -> (out, in)).

    Args:
        variable: a Keras variable.
        layout: its layout, as pytorch_named_variables gives it.

    Returns:
        The shape tuple of the matching PyTorch tensor.
    """
    axes = TO_PYTORCH_AXES[layout]
    shape = tuple(variable.shape)
    return tuple(shape[a] for a in axes) if axes else shape


def pytorch_state_dict(model):
    """The state dict of `model` as transformers' PyTorch BLIP names and lays it out.

    Args:
        model: a tfblip Keras model.

    Returns:
        {PyTorch key: numpy array in PyTorch layout}, in the variables' dtype.
    """
    state = {}
    for key, (variable, layout) in pytorch_named_variables(model).items():
        value = keras.ops.convert_to_numpy(variable)
        axes = TO_PYTORCH_AXES[layout]
        if axes:
            value = np.transpose(value, axes)
        state[key] = np.array(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    return state
