"""Models whose variables are created without values and then given each value once.

Keras gives a variable its value when it creates it: a model built and then loaded draws
every weight from its random initializer only to overwrite it (for the base model, 224M
random numbers, half the time `from_pretrained` took). Built under
`keras.StatelessScope(initialize_variables=False)`, a model's variables are created without
values and listed as pending; a pending variable takes its value from its initializer at
`_deferred_initialize()`.

This module is the one place that relies on those Keras internals: the pending list
("uninitialized_variables" in Keras's global state), `Variable._initializer` and
`Variable._deferred_initialize()`. Each use is checked, so a Keras release that changes them
makes loading raise a RuntimeError saying so, never return a model with values that did not
come from where they should.
"""

import keras
from keras.src.backend.common import global_state

_PENDING = "uninitialized_variables"


def _pending_variables():
    """Keras's list of variables created without values, as Keras itself reads it."""
    pending = global_state.get_global_attribute(_PENDING, [], set_to_default=True)
    if isinstance(pending, list):
        return pending
    raise RuntimeError(
        f"Keras {keras.__version__} keeps its uninitialized variables as "
        f"{type(pending).__name__}, not the list tfblip's fast loading expects."
    )


def build_uninitialized(build):
    """Calls `build()`, which creates a Keras layer, with its variables left without values.

    The variables are taken out of Keras's pending list: they belong to the caller, who gives
    each its value with `initialize` (left there, the next StatelessScope to close, such as
    any symbolic call, would initialize them itself, and a model that fails to load would stay
    referenced until then).

    Args:
        build: a function of no arguments that constructs the layer or model.

    Returns:
        What `build` returned; none of its variables has a value yet.

    Raises:
        RuntimeError: Keras gave some variable a value anyway (a Keras release that changed
            StatelessScope).
    """
    earlier = {id(variable) for variable in _pending_variables()}
    try:
        with keras.StatelessScope(initialize_variables=False):
            layer = build()
    finally:
        pending = _pending_variables()
        created = {id(variable) for variable in pending if id(variable) not in earlier}
        pending[:] = [variable for variable in pending if id(variable) in earlier]
    initialized = [variable.path for variable in layer.variables if id(variable) not in created]
    if initialized:
        raise RuntimeError(
            f"Keras {keras.__version__} created {initialized[0]} with a value under "
            "StatelessScope(initialize_variables=False); tfblip's fast loading relies on it "
            "deferring every variable of the model."
        )
    return layer


def initialize(variable, initializer=None):
    """Gives a variable of a `build_uninitialized` layer its value, once.

    Args:
        variable: the Keras variable.
        initializer: called as `initializer(shape, dtype)` (a Keras initializer's signature)
            for the value, a tensor of the variable's shape and dtype; None to use the
            variable's own initializer.

    Raises:
        RuntimeError: Keras did not take the value from `initializer` (a Keras release that
            changed deferred initialization).
        ValueError: the variable already has a value (raised by Keras).
    """
    if initializer is None:
        variable._deferred_initialize()
        return
    calls = []

    def recorded(shape, dtype=None):
        calls.append(shape)
        value = initializer(shape, dtype)
        # Keras does not check a deferred value against the shape it gave the variable.
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{variable.path} has shape {tuple(shape)}; its initial value has shape "
                f"{tuple(value.shape)}."
            )
        return value

    variable._initializer = recorded
    variable._deferred_initialize()
    if not calls:
        raise RuntimeError(
            f"Keras {keras.__version__} initialized {variable.path} without calling the "
            "initializer tfblip's fast loading gave it, so its value is not the checkpoint's."
        )
