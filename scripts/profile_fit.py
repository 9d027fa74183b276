"""Where the first fit() step of a fresh process goes: captioning fine-tuning, phase by phase.

    python scripts/profile_fit.py CKPT                         # phases, tfblip as it is
    python scripts/profile_fit.py CKPT --keras-defaults        # phases, as Keras/TF default
    python scripts/profile_fit.py CKPT --fit                   # model.fit() itself, per step
    python scripts/profile_fit.py CKPT --grappler-log FILE     # + Grappler's per-pass times

CKPT is a base-size captioning checkpoint directory. The script builds
TFBlipForConditionalGeneration with from_pretrained, compiles it as scripts/finetune.py does
(AdamW with cosine decay, no compile loss) and trains on batches shaped as tfblip.data's
caption batches (random 384x384 pixel values, captions of 6-20 tokens padded per batch,
labels -100 on padding). It runs Keras' own train function by hand, timing:

- load: from_pretrained;
- make_train_function: with `fast_first_step` (tfblip's default) it builds the optimizer's
  variables; with --keras-defaults they are built while the step is traced, which makes
  TensorFlow trace the step twice;
- trace: Python tracing of the train function (forward, gradient, optimizer update) into a
  graph with `get_concrete_function`, before anything runs;
- first run: the first call of the traced function: TensorFlow's function instantiation,
  Grappler's graph optimisation and the kernels' first-run setup (oneDNN primitives, memory);
- later steps: each further step, the steady state.

The ratio first step (trace + first run) / later step is the number to bring down; --fit
measures the same through model.fit(). --grappler-log FILE writes TensorFlow's C++ log with
Grappler's per-pass timings to FILE and sums them; --no-grappler turns Grappler off for the
whole process (a diagnostic of what it costs and saves, not a setting to train with);
--trace-split traces the forward pass, then forward and gradient, alone first; --retrace
times a new train function's first step in the same, warm, process. The losses and a digest
of the trained weights are printed: runs that differ only in speed give equal digests.
Timings on a shared machine are noisy: compare runs made back to back.
"""

import argparse
import collections
import contextlib
import os
import re
import resource
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="captioning checkpoint directory (base size)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="train steps to time (at least 2)")
    parser.add_argument("--max-caption", type=int, default=20, help="longest caption, tokens")
    parser.add_argument(
        "--retrace",
        action="store_true",
        help="then make a new train function and time its first step again in this process "
        "(what the first step costs once kernels, allocator and caches are warm)",
    )
    parser.add_argument(
        "--trace-split",
        action="store_true",
        help="first trace the forward pass alone, then forward and gradient (diagnostic)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="time model.fit() itself, step by step, as scripts/finetune.py runs it",
    )
    parser.add_argument("--grappler-log", help="write Grappler's per-pass log here and sum it")
    parser.add_argument("--no-grappler", action="store_true", help="disable Grappler (diagnostic)")
    parser.add_argument(
        "--keras-defaults",
        action="store_true",
        help="model.fast_first_step = False: the optimizer built while the step is traced, "
        "Grappler's default passes (tfblip before issue 15)",
    )
    parser.add_argument(
        "--cprofile", type=int, default=0, help="print the N costliest tracing calls"
    )
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (a first and a later step)")
    return args


def redirect_native_log(path):
    """Send TensorFlow's C++ log (fd 2) to `path`, with Grappler's per-pass timings in it;
    must run before TensorFlow is imported."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    os.environ["TF_CPP_VMODULE"] = os.environ.get("TF_CPP_VMODULE", "meta_optimizer=1")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved_stderr = os.dup(2)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(saved_stderr, "w", buffering=1)


# "... meta_optimizer.cc:973] constant_folding: Graph size after: 32347 nodes (303), 63890 edges
# (-736), time = 3682.73ms."
PASS_LINE = re.compile(r"meta_optimizer\.cc:\d+\] ([\w-]+).*Graph size after: .* time = ([\d.]+)ms")


# "I0000 00:00:1796578343.045932   16047 meta_optimizer.cc:1059] Starting optimization ..."
LOG_TIME = re.compile(r"^\w\d{4} \d\d:\d\d:(\d+\.\d+) ")


def grappler_summary(path, since):
    """(wall seconds from the first Grappler item started after `since` (a time.time()) to the
    last one finished, per-pass milliseconds summed over those items)."""
    totals = collections.Counter()
    first = last = None
    with open(path, errors="replace") as log:
        for line in log:
            stamp = LOG_TIME.match(line)
            if not stamp or float(stamp.group(1)) < since:
                continue
            if "Starting optimization for grappler item" in line and first is None:
                first = float(stamp.group(1))
            if "meta_optimizer" in line:
                last = float(stamp.group(1))
            match = PASS_LINE.search(line)
            if match:
                totals[match.group(1)] += float(match.group(2))
    return (last - first if first is not None else 0.0), totals


def caption_batches(batch_size, max_caption, vocab_size, bos, sep, image_size, seed=0):
    """Batches shaped as tfblip.data.caption_dataset gives them: (B, 3, H, W) pixels and
    (B, L) ids/mask/labels, L the longest caption of the batch (unknown to the graph)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    count = batch_size * 8
    lengths = rng.integers(6, max_caption + 1, size=count)
    ids = [
        [bos, *rng.integers(1000, vocab_size - 2, size=length - 2).tolist(), sep]
        for length in lengths
    ]
    ids = tf.ragged.constant(ids, dtype=tf.int32)
    pixels = rng.standard_normal((count, 3, image_size, image_size), dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"pixel_values": pixels, "input_ids": ids, "labels": ids}
    ).map(lambda x: {**x, "attention_mask": tf.ones_like(x["input_ids"])})
    padding = {"pixel_values": 0.0, "input_ids": 0, "attention_mask": 0, "labels": -100}
    return dataset.padded_batch(batch_size, padding_values=padding).repeat()


def graph_size(concrete):
    """Nodes of the traced graph and of every function in its library (nested tf.functions,
    gradient functions), the work Grappler is handed."""
    graph_def = concrete.graph.as_graph_def()
    library = sum(len(function.node_def) for function in graph_def.library.function)
    return len(graph_def.node), len(graph_def.library.function), library


def trace_split(model, dataset):
    """Seconds to trace the forward pass and loss, then forward, loss and gradient, each as a
    tf.function of its own (what the train step's trace spends before the optimizer)."""
    import tensorflow as tf

    def forward(x):
        return model.compute_loss(x, y_pred=model(x, training=True))

    def forward_and_gradient(x):
        with tf.GradientTape() as tape:
            loss = forward(x)
        return tape.gradient(loss, model.trainable_variables)

    seconds = {}
    for name, function in (("forward", forward), ("forward + gradient", forward_and_gradient)):
        start = time.perf_counter()
        tf.function(function).get_concrete_function(dataset.element_spec)
        seconds[f"trace of {name} alone"] = time.perf_counter() - start
    return seconds


def fit_step_times(model, dataset, steps):
    """model.fit() over `steps` batches: seconds from the fit() call to the end of the first
    batch, then each later batch."""
    import keras

    marks = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[Marks()], verbose=0)
    return [later - earlier for earlier, later in zip([start, *marks], marks)]


def digest(model):
    """A hash of every trainable weight's bytes: equal digests, bitwise equal weights."""
    import hashlib

    hasher = hashlib.sha256()
    for variable in model.trainable_variables:
        hasher.update(variable.numpy().tobytes())
    return hasher.hexdigest()[:16]


def traced_step_function(train_function):
    """The tf.function Keras' train function calls with the iterator (found by its name in
    the closure: Keras keeps it there, not on the model)."""
    cells = dict(zip(train_function.__code__.co_freevars, train_function.__closure__))
    return cells["multi_step_on_iterator"].cell_contents


def main(argv=None):
    args = parse_args(argv)
    if args.grappler_log:
        redirect_native_log(args.grappler_log)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    phases = {}
    start = time.perf_counter()
    import keras
    import tensorflow as tf

    import tfblip
    from tfblip.modeling.train_functions import lean_graph_rewrites

    phases["import"] = time.perf_counter() - start
    if args.no_grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    keras.utils.set_random_seed(0)

    start = time.perf_counter()
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(args.checkpoint)
    phases["load (from_pretrained)"] = time.perf_counter() - start

    config = model.config
    dataset = caption_batches(
        args.batch_size,
        args.max_caption,
        config.text_config.vocab_size,
        config.text_config.bos_token_id,
        config.text_config.sep_token_id,
        config.vision_config.image_size,
    )
    schedule = keras.optimizers.schedules.CosineDecay(1e-5, 1000)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.05))

    model.fast_first_step = not args.keras_defaults
    if args.fit:
        # fit() builds the optimizer's variables while it traces the first step.
        step_times = fit_step_times(model, dataset, args.steps)
        first, later = step_times[0], min(step_times[1:])
        print(
            f"model.fit(), fast_first_step {model.fast_first_step}: step times "
            + " ".join(f"{seconds:.2f}" for seconds in step_times)
        )
        print(
            f"first fit() step {first:.2f} s, later step {later:.2f} s, ratio {first / later:.2f}"
            f"; load {phases['load (from_pretrained)']:.2f} s; weights digest {digest(model)}"
        )
        return
    if args.trace_split:
        phases.update(trace_split(model, dataset))

    iterator = iter(dataset)
    start = time.perf_counter()
    train_function = model.make_train_function()  # fast_first_step: builds the optimizer
    phases["make_train_function"] = time.perf_counter() - start
    step_function = traced_step_function(train_function.__wrapped__)
    rewrites = contextlib.nullcontext if args.keras_defaults else lean_graph_rewrites
    start = time.perf_counter()
    if args.cprofile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        with rewrites():
            concrete = profiler.runcall(step_function.get_concrete_function, iterator)
    else:
        with rewrites():
            concrete = step_function.get_concrete_function(iterator)
    phases["trace"] = time.perf_counter() - start

    step_times, losses = [], []
    first_run_began = time.time()
    for _ in range(args.steps):
        start = time.perf_counter()
        logs = train_function(iterator)
        losses.append(float(logs["loss"]))
        step_times.append(time.perf_counter() - start)
    phases["first run (instantiate, Grappler, first kernels)"] = step_times[0]
    for index, seconds in enumerate(step_times[1:], start=2):
        phases[f"step {index}"] = seconds
    traces = step_function.experimental_get_tracing_count()
    if args.retrace:
        start = time.perf_counter()
        float(model.make_train_function(force=True)(iterator)["loss"])
        phases["first step of a new train function, same process"] = time.perf_counter() - start

    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, tfblip {tfblip.__file__}")
    grappler = "off" if args.no_grappler else "default" if args.keras_defaults else "lean"
    print(f"batch {args.batch_size}, fast_first_step {model.fast_first_step}, grappler {grappler}")
    for name, seconds in phases.items():
        print(f"  {name:<50} {seconds:8.2f} s")
    nodes, functions, function_nodes = graph_size(concrete)
    print(f"  graph: {nodes} nodes, {functions} library functions with {function_nodes} nodes")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  peak memory {peak:.1f} GiB")
    print(f"  train function traced {traces} time(s) over {args.steps} steps (and --retrace)")
    later = min(step_times[1:])
    first = phases["trace"] + step_times[0]
    print(f"  losses {' '.join(repr(loss) for loss in losses)}, weights digest {digest(model)}")
    print(
        f"first step (trace + first run) {first:.2f} s, later step {later:.2f} s, "
        f"ratio {first / later:.2f}"
    )
    if args.cprofile:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(
            args.cprofile
        )
    if args.grappler_log:
        sys.stderr.flush()
        wall, totals = grappler_summary(args.grappler_log, first_run_began)
        print(
            f"grappler during the first run: {wall:.2f} s wall, "
            f"{sum(totals.values()) / 1e3:.2f} s in passes"
        )
        for name, milliseconds in totals.most_common():
            print(f"  {name:<40} {milliseconds / 1e3:8.2f} s")


if __name__ == "__main__":
    main()
