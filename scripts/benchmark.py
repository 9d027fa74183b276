"""tfblip against transformers' PyTorch BLIP, timed side by side in the same run.

    python scripts/benchmark.py                      # every in-process benchmark
    python scripts/benchmark.py --only generation    # processor, vision, generation, saved_model
    python scripts/benchmark.py --cold               # whole processes (with --only: both)

Each benchmark runs the same work through tfblip and through transformers on the same inputs
and prints the ratio tfblip / PyTorch of the best time over --repeats runs (below 1.0 means
tfblip is faster). Absolute times on a shared machine are noise; the ratios are the result.

- processor: BlipImageProcessor on 32 photographs (scikit-image's samples, several sizes)
  against transformers' BlipImageProcessorPil, both returning numpy arrays.
- vision: the base-size ViT-B/16 vision encoder at 384x384, batch 1, fp32, random weights;
  tfblip runs it in a tf.function. First-call (trace) time is reported separately.
- generation: base-size random-weight captioning and VQA checkpoints built with transformers;
  `generate()` with exactly 20 new tokens (min_new_tokens = max_new_tokens = 20): caption at
  batch 1 (also with XLA), batch 8 and beam 3; VQA at batch 1; bfloat16 (the Keras
  "bfloat16" policy: bf16 weights, LayerNorm statistics and softmax in float32) and int8
  (`quantize="int8"`: weight-only int8) against PyTorch fp32, on a base model whose logits
  were spread so greedy choices are clear (`make_decisive`), with the share of greedy tokens
  equal to tfblip fp32's, the largest logit difference relative to the largest logit, and
  the weights' bytes against fp32's. First-call (trace/compile) times are printed beside.
- saved_model: the caption export (`tfblip.export_saved_model`) loaded with
  `tf.saved_model.load` and run in graph mode without XLA, as stock TF Serving runs it, on JPEG
  bytes (decoding, preprocessing, 20 greedy tokens, detokenizing) against transformers doing
  the same work from the same bytes. Beside it, the memory a fresh process (TensorFlow alone)
  gains by loading the export and answering one request, as a multiple of the checkpoint's
  size, with the TF2 loader and with a TF1 Session (TF Serving's C++ runtime path).

--cold measures what every fresh process pays (the CLI, each Beam worker, each TF Serving
restart), each command in its own new process, on a base-size random-weight captioning
checkpoint with processor files and the sample photographs as JPEGs, all in a temporary
directory. Times are wall times of the whole process, the median of --cold-runs (3) runs, the
tfblip and PyTorch commands taken in turn; the PyTorch side is a 15-line transformers script
(BlipProcessor, BlipForConditionalGeneration.generate with default greedy options, one image
at a time, printing `path<TAB>caption`).
- `tfblip caption` (the installed command beside this Python, else `python -m tfblip`) on 1
  image and on 24 (default --batch-size, and --batch-size 1 like for like) against the script;
  a warning names the first line where the captions differ (greedy tokens should agree). The
  children share a trace cache (tfblip.ops.trace_cache) that starts empty: one untimed-median
  "first run" traces and fills it (its time is printed too), the timed runs import the graphs,
  as any run after a user's first does.
- Peak resident memory (VmHWM) of the 1-image processes, tfblip / PyTorch.
- `tfblip export --task caption` wall time, and a fresh process's `tf.saved_model.load` + first
  request on a JPEG (TensorFlow's import timed apart), beside the PyTorch script's 1-image
  time and the targets (export <= 30 s, load + first request <= 8 s).
- The phases of a 1-image caption in one fresh process (imports, processor, from_pretrained,
  image, first generate, decode), and generate()'s first-call cost (first call minus a warm
  call of the same shape) at batch 1, at batch 2 and with two prompt lengths: a large
  difference means that call traced a new graph.
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from measure_load_memory import STATUS_BYTES_SOURCE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_model():
    """The processor's model name (these benchmarks' ratios differ between CPU models)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(function, repeats):
    """Best wall time of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name, tfblip_seconds, torch_seconds, extra=""):
    ratio = tfblip_seconds / torch_seconds
    print(
        f"{name:<40} tfblip {tfblip_seconds * 1e3:9.1f} ms   transformers "
        f"{torch_seconds * 1e3:9.1f} ms   ratio {ratio:5.2f}{extra}"
    )
    return ratio


def sample_photos(count=32):
    """`count` RGB photographs of several sizes and aspect ratios, as PIL images."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    sizes = [(512, 512), (640, 427), (427, 640), (800, 600), (300, 451), (1024, 768)]
    photos = []
    for index in range(count):
        image = Image.fromarray(sources[index % len(sources)])
        photos.append(image.resize(sizes[index % len(sizes)], Image.BICUBIC))
    return photos


def benchmark_processor(repeats):
    import transformers

    import tfblip

    photos = sample_photos()
    ours = tfblip.BlipImageProcessor()
    theirs = transformers.BlipImageProcessorPil()
    ours_output = ours(photos, return_tensors="np")["pixel_values"]
    theirs_output = theirs(photos, return_tensors="np")["pixel_values"]
    difference = float(np.max(np.abs(ours_output - theirs_output)))
    ours_time = best_time(lambda: ours(photos, return_tensors="np"), repeats)
    theirs_time = best_time(lambda: theirs(photos, return_tensors="np"), repeats)
    return report(
        "image processor, 32 photos", ours_time, theirs_time, f"   max abs diff {difference:.1e}"
    )


def benchmark_vision(repeats):
    import tensorflow as tf
    import torch
    import transformers

    import tfblip

    torch.manual_seed(0)
    reference = transformers.BlipVisionModel(transformers.BlipVisionConfig()).eval()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = tfblip.TFBlipVisionModel.from_pretrained(directory)
    pixels = np.random.default_rng(0).normal(size=(1, 3, 384, 384)).astype(np.float32)
    pixels_tf, pixels_torch = tf.constant(pixels), torch.from_numpy(pixels)
    forward = tf.function(lambda x: model(pixel_values=x).last_hidden_state)

    start = time.perf_counter()
    forward(pixels_tf).numpy()
    first_call = time.perf_counter() - start

    def run_torch():
        with torch.no_grad():
            reference(pixel_values=pixels_torch)

    ours_time = best_time(lambda: forward(pixels_tf).numpy(), repeats)
    theirs_time = best_time(run_torch, repeats)
    return report(
        "vision encoder, base 384, batch 1",
        ours_time,
        theirs_time,
        f"   (tfblip first call {first_call:.1f} s)",
    )


def save_base_captioning_checkpoint(directory):
    """Writes a base-size random-weight captioning checkpoint with transformers; returns the
    PyTorch model."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BlipConfig()
    reference = transformers.BlipForConditionalGeneration(config).eval()
    reference.save_pretrained(directory)
    return reference


def base_captioning_pair(directory):
    """A base-size random-weight captioning checkpoint, in transformers and in tfblip."""
    import tfblip

    reference = save_base_captioning_checkpoint(directory)
    return reference, tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)


FIXED_20_TOKENS = {"max_new_tokens": 20, "min_new_tokens": 20}


def time_generation(name, tfblip_generate, torch_generate, repeats, options=None):
    """Reports tfblip against PyTorch for one decoding setup, first call shown apart."""
    options = options or {}
    start = time.perf_counter()
    tfblip_generate(**options)
    first_call = time.perf_counter() - start
    ours = best_time(lambda: tfblip_generate(**options), repeats)
    theirs = best_time(torch_generate, repeats)
    return report(name, ours, theirs, f"   (first call {first_call:.1f} s)")


def benchmark_generation(repeats):
    """Captioning and VQA decoding; every run produces exactly 20 new tokens."""
    import torch

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        reference, model = base_captioning_pair(directory)
    cases = [
        ("caption, batch 1, greedy", 1, {}),
        ("caption, batch 1, greedy, XLA", 1, {"jit_compile": True}),
        ("caption, batch 8, greedy", 8, {}),
        ("caption, batch 1, beam 3", 1, {"num_beams": 3}),
    ]
    for name, batch, options in cases:
        pixels = rng.normal(size=(batch, 3, 384, 384)).astype(np.float32)
        torch_options = {k: v for k, v in options.items() if k != "jit_compile"}

        def run_torch(pixels=pixels, torch_options=torch_options):
            with torch.no_grad():
                reference.generate(
                    pixel_values=torch.from_numpy(pixels), **FIXED_20_TOKENS, **torch_options
                )

        def run_tfblip(pixels=pixels, **options):
            model.generate(pixels, **FIXED_20_TOKENS, **options)

        time_generation(name, run_tfblip, run_torch, repeats, options)
    benchmark_precisions(rng, repeats)
    benchmark_vqa(rng, repeats)


def benchmark_vqa(rng, repeats):
    import torch
    import transformers

    import tfblip

    torch.manual_seed(0)
    reference = transformers.BlipForQuestionAnswering(transformers.BlipConfig()).eval()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = tfblip.TFBlipForQuestionAnswering.from_pretrained(directory)
    pixels = rng.normal(size=(1, 3, 384, 384)).astype(np.float32)
    question = np.array([[101, 2054, 2003, 1999, 1996, 3861, 1029, 102]])

    def run_torch():
        with torch.no_grad():
            reference.generate(
                input_ids=torch.from_numpy(question),
                pixel_values=torch.from_numpy(pixels),
                **FIXED_20_TOKENS,
            )

    def run_tfblip():
        model.generate(question, pixels, **FIXED_20_TOKENS)

    time_generation("vqa, batch 1, greedy", run_tfblip, run_torch, repeats)


def make_decisive(reference):
    """Makes a random base model caption like a trained one: clear choices that depend on the
    image. Random weights give next-token margins of a few hundredths among 30k tokens, so a
    precision comparison would count near-ties, not rounding: the LM head's LayerNorm is
    scaled by 20 (logits spread over about +-30). And transformers initializes BLIP's vision
    weights with std 1e-10, so every image would get one caption: the vision tower's
    matrices and embeddings are drawn again with std 0.02, as a ViT's."""
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in reference.vision_model.named_parameters():
            if parameter.dim() > 1 or "embedding" in name:
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
        norm = reference.text_decoder.cls.predictions.transform.LayerNorm
        norm.weight.mul_(20)
        norm.bias.mul_(20)
    return reference


def weight_bytes(model):
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)


def benchmark_precisions(rng, repeats):
    """bfloat16 and int8 against PyTorch fp32 on a decisive base model (`make_decisive`), with
    the share of their greedy tokens equal to tfblip fp32's and the largest logit difference
    (teacher-forced on fp32's tokens) relative to the largest fp32 logit."""
    import torch
    import transformers

    import tfblip

    torch.manual_seed(0)
    reference = transformers.BlipForConditionalGeneration(transformers.BlipConfig()).eval()
    reference = make_decisive(reference)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        load = tfblip.TFBlipForConditionalGeneration.from_pretrained
        full = load(directory)
        variants = {"bfloat16": load(directory, dtype="bfloat16")}
        variants["int8"] = load(directory, quantize="int8")
    fixed = FIXED_20_TOKENS
    pixels = rng.normal(size=(8, 3, 384, 384)).astype(np.float32)
    full_tokens = full.generate(pixels, **fixed)
    full_logits = full(pixel_values=pixels, input_ids=full_tokens).logits.numpy()
    single = pixels[:1]

    def run_torch():
        with torch.no_grad():
            reference.generate(pixel_values=torch.from_numpy(single), **fixed)

    theirs = best_time(run_torch, repeats)
    distinct = len({tuple(row) for row in full_tokens.numpy().tolist()})
    print(f"decisive model: {distinct} distinct fp32 captions of the 8 images", flush=True)
    for name, model in variants.items():
        tokens = model.generate(pixels, **fixed)
        logits = model(pixel_values=pixels, input_ids=full_tokens).logits.numpy()
        difference = np.abs(logits - full_logits).max() / np.abs(full_logits).max()
        agreement = np.mean(tokens.numpy()[:, 1:] == full_tokens.numpy()[:, 1:])
        memory = weight_bytes(model) / weight_bytes(full)
        details = (
            f"   ({agreement:.0%} of 8x20 greedy tokens equal to fp32, logits within "
            f"{difference:.1e}, weights {memory:.2f}x fp32)"
        )
        option_sets = (("", {}), (", XLA", {"jit_compile": True}))
        for suffix, options in option_sets if name == "bfloat16" else option_sets[:1]:
            model.generate(single, **fixed, **options)
            ours = best_time(
                lambda model=model, options=options: model.generate(single, **fixed, **options),
                repeats,
            )
            report(f"caption, batch 1, greedy, {name}{suffix}", ours, theirs, details)


def write_processor_files(directory):
    """A BERT-layout vocabulary (30522 entries, then [DEC] and [ENC] as BLIP adds them) and
    BLIP's tokenizer and image-processor configs, so the checkpoint loads with a processor."""
    import tfblip

    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    vocab += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"word{i}" for i in range(30522 - len(vocab))]
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    special = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512, **special}, f)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    tfblip.BlipImageProcessor().save_pretrained(directory)


# Runs in a fresh process: TensorFlow only, its runtime started by a first small op before the
# baseline, then the export loaded and one request answered, either by the TF2 object loader
# (`tf.saved_model.load`) or by a TF1 Session (`loader.load` + `Session.run`: the C++ runtime
# path TF Serving takes). VmRSS is what the process holds afterwards; VmHWM its peak.
SERVING_MEMORY_CHILD = (
    """
import json, sys
import tensorflow as tf
"""
    + STATUS_BYTES_SOURCE
    + """
loader, export_dir, image_path = sys.argv[1:]
with open(image_path, "rb") as f:
    image = f.read()
tf.reduce_sum(tf.matmul(tf.ones((8, 8)), tf.ones((8, 8)))).numpy()
before = status_bytes("VmRSS")
if loader == "tf2":
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    serve(image_bytes=tf.constant([image]))["caption"].numpy()
    after = status_bytes("VmRSS")
else:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = signature.signature_def["serving_default"]
        session.run(
            signature.outputs["caption"].name, {signature.inputs["image_bytes"].name: [image]}
        )
        after = status_bytes("VmRSS")
print(json.dumps({"before": before, "after": after, "peak": status_bytes("VmHWM")}))
"""
)


def serving_memory(loader, export_dir, jpeg, checkpoint_bytes):
    """(grown, peak growth) of a fresh process that loads `export_dir` with `loader` ("tf2" or
    "session") and captions `jpeg`, each as a multiple of `checkpoint_bytes`."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as image:
        image.write(jpeg)
        image.flush()
        completed = subprocess.run(
            [sys.executable, "-c", SERVING_MEMORY_CHILD, loader, export_dir, image.name],
            capture_output=True,
            text=True,
            check=True,
        )
    sizes = json.loads(completed.stdout.strip().splitlines()[-1])
    grown = (sizes["after"] - sizes["before"]) / checkpoint_bytes
    return grown, (sizes["peak"] - sizes["before"]) / checkpoint_bytes


def benchmark_saved_model(repeats):
    """The exported caption SavedModel (graph mode, no XLA, as stock TF Serving runs it) on
    JPEG bytes, against transformers decoding the JPEG, preprocessing, generating and
    detokenizing; batch 1, greedy, 20 new tokens."""
    import io

    import tensorflow as tf
    import torch
    import transformers
    from PIL import Image

    import tfblip

    buffer = io.BytesIO()
    sample_photos(1)[0].resize((640, 480)).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    with tempfile.TemporaryDirectory() as directory:
        reference, model = base_captioning_pair(directory)
        write_processor_files(directory)
        processor = tfblip.BlipProcessor.from_pretrained(directory)
        reference_processor = transformers.BlipProcessor.from_pretrained(directory)
        export_dir = os.path.join(directory, "saved_model", "1")
        start = time.perf_counter()
        tfblip.export_saved_model(model, processor, export_dir, **FIXED_20_TOKENS)
        export_time = time.perf_counter() - start
        checkpoint_bytes = os.path.getsize(os.path.join(directory, "model.safetensors"))
        memory = {
            loader: serving_memory(loader, export_dir, jpeg, checkpoint_bytes)
            for loader in ("tf2", "session")
        }
        start = time.perf_counter()
        serve = tf.saved_model.load(export_dir).signatures["serving_default"]
        images = tf.constant([jpeg])
        first_caption = serve(image_bytes=images)["caption"].numpy()
        first_call = time.perf_counter() - start

    def run_saved_model():
        serve(image_bytes=images)["caption"].numpy()

    def run_torch():
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        inputs = reference_processor(images=image, return_tensors="pt")
        with torch.no_grad():
            ids = reference.generate(pixel_values=inputs["pixel_values"], **FIXED_20_TOKENS)
        reference_processor.batch_decode(ids, skip_special_tokens=True)

    ours = best_time(run_saved_model, repeats)
    theirs = best_time(run_torch, repeats)
    assert first_caption.shape == (1,)
    ratio = report(
        "SavedModel caption, JPEG, batch 1, greedy",
        ours,
        theirs,
        f"   (export {export_time:.0f} s, load + first call {first_call:.1f} s)",
    )
    for loader, (grown, peak) in memory.items():
        print(
            f"{'SavedModel load + 1 request, ' + loader:<40} process grew {grown:.2f}x the "
            f"checkpoint ({checkpoint_bytes / 2**20:.0f} MiB), peak {peak:.2f}x"
        )
    return ratio


# ----------------------------------------------------------------------------- --cold

# The PyTorch side of the whole-process comparisons: what a transformers user writes to
# caption images from the command line (greedy, the checkpoint's generation defaults).
TORCH_CAPTION_SCRIPT = """import sys

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

model_dir, paths = sys.argv[1], sys.argv[2:]
processor = BlipProcessor.from_pretrained(model_dir)
model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
for path in paths:
    inputs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs)
    print(path, processor.decode(ids[0], skip_special_tokens=True), sep="\\t")
"""

# Runs every --cold child: `python -c PEAK_WRAPPER PEAK_FILE SCRIPT ARGS...` (or `-m MODULE
# ARGS...`) runs the script as `python SCRIPT ARGS...` would, and at exit writes the process's
# peak resident memory (VmHWM) to PEAK_FILE. Why not the alternatives: getrusage
# (RUSAGE_CHILDREN, or os.wait4 for one child) reports ru_maxrss, which Linux carries across
# exec from the process that forked, so every child would weigh at least this benchmark's own
# process (TensorFlow and PyTorch loaded); /usr/bin/time avoids that through its small
# intermediate process but is missing from many container images. VmHWM describes the child's
# own address space only, which exec starts afresh. (The child starts no processes of its own.)
PEAK_WRAPPER = (
    """
import atexit, runpy, sys
"""
    + STATUS_BYTES_SOURCE
    + """
peak_file = sys.argv.pop(1)

def write_peak():
    with open(peak_file, "w") as f:
        f.write(str(status_bytes("VmHWM")))

atexit.register(write_peak)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""
)

# A fresh process: TensorFlow imported (timed apart), then the caption export loaded and one
# JPEG captioned; the file is read before the clock starts.
LOAD_AND_REQUEST_CHILD = """
import json, sys, time
start = time.perf_counter()
import tensorflow as tf
imported = time.perf_counter()
export_dir, image_path = sys.argv[1:]
with open(image_path, "rb") as f:
    image = f.read()
start_load = time.perf_counter()
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
loaded = time.perf_counter()
caption = serve(image_bytes=tf.constant([image]))["caption"].numpy()[0].decode()
done = time.perf_counter()
print(json.dumps({"import": imported - start, "load": loaded - start_load,
                  "request": done - loaded, "caption": caption}))
"""

# A fresh process doing the 1-image caption's steps one by one as the CLI does them (timed
# phases), then first-call costs of generate(): each case's first call (tracing a new
# tf.function, plus one-time kernel set-up) minus a warm call of the same shape. The prompts
# are right-padded token ids from the processor, as `tfblip caption --prompt` passes them.
GENERATE_CHILD = """
import json, sys, time
phases, clock = {}, [time.perf_counter()]

def phase(name):
    now = time.perf_counter()
    phases[name] = now - clock[0]
    clock[0] = now

import tensorflow as tf
phase("import tensorflow")
import numpy as np
import tfblip
phase("import tfblip")
checkpoint, image_path = sys.argv[1:]
processor = tfblip.BlipProcessor.from_pretrained(checkpoint)
phase("processor")
model = tfblip.TFBlipForConditionalGeneration.from_pretrained(checkpoint)
phase("from_pretrained")
pixels = processor.image_processor(image_path, return_tensors="np")["pixel_values"]
phase("read image")
ids = model.generate(pixels)
phase("first generate")
processor.batch_decode(ids, skip_special_tokens=True)
phase("decode")

def seconds(**inputs):
    start = time.perf_counter()
    model.generate(**inputs)
    return time.perf_counter() - start

def prompt(text):
    encoded = processor(text=[text], return_tensors="np")
    inputs = {"pixel_values": pixels, "input_ids": encoded["input_ids"],
              "attention_mask": encoded["attention_mask"]}
    return f"prompt {encoded['input_ids'].shape[1]} tokens", inputs

first_calls = {"batch 1": (phases["first generate"], seconds(pixel_values=pixels))}
cases = [("batch 2", {"pixel_values": np.concatenate([pixels, pixels])}),
         prompt("a picture of"), prompt("a picture of a cat sitting on a couch")]
for name, inputs in cases:
    first_calls[name] = (seconds(**inputs), seconds(**inputs))
print(json.dumps({"phases": phases, "first_calls": first_calls}))
"""


def tfblip_command():
    """(argument list, description) of the tfblip command: the installed console script beside
    this Python, else `python -m tfblip`. Both run under PEAK_WRAPPER."""
    script = os.path.join(os.path.dirname(sys.executable), "tfblip")
    if os.path.isfile(script):
        return [script], f"installed command {script}"
    return ["-m", "tfblip"], "python -m tfblip (no tfblip command beside this Python)"


def run_child(arguments, directory):
    """Runs `python ARGUMENTS...` in a fresh process, under PEAK_WRAPPER, in `directory`.

    Returns:
        (wall seconds, peak resident bytes, stdout).
    """
    peak_file = os.path.join(directory, "peak")
    command = [sys.executable, "-c", PEAK_WRAPPER, peak_file, *arguments]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(arguments[:3])}... exited with {completed.returncode}:\n"
            + completed.stderr[-3000:]
        )
    with open(peak_file) as f:
        peak = int(f.read())
    os.remove(peak_file)
    return seconds, peak, completed.stdout


def runs_in_turn(commands, runs, directory):
    """{name: [run_child result, ...]}: `runs` runs of each command, the commands taken in turn
    (A, B, A, B, ...) so that a change in the machine's load falls on both alike."""
    results = {name: [] for name in commands}
    for _ in range(runs):
        for name, arguments in commands.items():
            results[name].append(run_child(arguments, directory))
    return results


def median_seconds(results):
    return statistics.median(seconds for seconds, _, _ in results)


def median_peak(results):
    return statistics.median(peak for _, peak, _ in results)


def first_difference(ours, theirs):
    """The first line where two outputs differ, as (our line, their line), or None if equal.
    A line one output lacks shows as "<no line>"."""
    for our_line, their_line in itertools.zip_longest(
        ours.splitlines(), theirs.splitlines(), fillvalue="<no line>"
    ):
        if our_line != their_line:
            return our_line, their_line
    return None


def check_same_captions(name, ours, theirs):
    """Prints a warning naming the first differing line when two caption outputs differ."""
    difference = first_difference(ours, theirs)
    if difference is not None:
        print(
            f"WARNING {name}: captions differ; first difference:\n"
            f"    tfblip:  {difference[0]!r}\n    PyTorch: {difference[1]!r}"
        )


def report_seconds(name, tfblip_seconds, torch_seconds, extra=""):
    print(
        f"{name:<40} tfblip {tfblip_seconds:7.1f} s    PyTorch {torch_seconds:7.1f} s    "
        f"ratio {tfblip_seconds / torch_seconds:5.2f}{extra}",
        flush=True,
    )


def target_note(seconds, target):
    return f"target <= {target} s: {'met' if seconds <= target else 'missed'}"


def write_sample_jpegs(directory, count):
    """`count` sample photographs as JPEG files in `directory`; returns their paths."""
    paths = []
    for index, photo in enumerate(sample_photos(count)):
        path = os.path.join(directory, f"photo_{index:02d}.jpg")
        photo.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def write_script(directory, name, source):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(source)
    return path


def cold_captions(tfblip, checkpoint, paths, runs, directory):
    """`tfblip caption` against the PyTorch script, on one image and on all of `paths`.

    Returns:
        (median seconds of the PyTorch script on one image, tfblip's caption of paths[0]).
    """
    torch_script = write_script(directory, "torch_caption.py", TORCH_CAPTION_SCRIPT)

    def caption(image_paths, *options):
        return [*tfblip, "caption", *image_paths, "--model", checkpoint, *options]

    # The trace cache starts empty (benchmark_cold points it at a new directory): this run
    # traces and fills it, the timed ones below import the graphs, as a user's second run.
    first_run = run_child(caption(paths[:1]), directory)[0]
    one = runs_in_turn(
        {"tfblip": caption(paths[:1]), "torch": [torch_script, checkpoint, paths[0]]},
        runs,
        directory,
    )
    torch_one = median_seconds(one["torch"])
    report_seconds("cold: caption 1 image", median_seconds(one["tfblip"]), torch_one)
    report_seconds("cold: caption 1 image, first run", first_run, torch_one, "   (traces)")
    check_same_captions("caption 1 image", one["tfblip"][0][2], one["torch"][0][2])
    ours_peak, theirs_peak = median_peak(one["tfblip"]), median_peak(one["torch"])
    print(
        f"{'cold: peak memory, caption 1 image':<40} tfblip {ours_peak / 2**20:7.0f} MiB  "
        f"PyTorch {theirs_peak / 2**20:7.0f} MiB  ratio {ours_peak / theirs_peak:5.2f}",
        flush=True,
    )

    many = runs_in_turn(
        {
            "tfblip": caption(paths),
            "tfblip batch 1": caption(paths, "--batch-size", "1"),
            "torch": [torch_script, checkpoint, *paths],
        },
        runs,
        directory,
    )
    torch_many = median_seconds(many["torch"])
    lines = (
        ("tfblip", f"cold: caption {len(paths)} images", "   (tfblip's default --batch-size)"),
        ("tfblip batch 1", f"cold: caption {len(paths)} images, batch 1", ""),
    )
    for name, label, note in lines:
        report_seconds(label, median_seconds(many[name]), torch_many, note)
        check_same_captions(f"{name}, {len(paths)} images", many[name][0][2], many["torch"][0][2])
    return torch_one, one["tfblip"][0][2].split("\t", 1)[1].rstrip("\n")


def cold_saved_model(tfblip, checkpoint, jpeg, cli_caption, torch_seconds, runs, directory):
    """`tfblip export` of the caption SavedModel, then its load and first request in fresh
    processes, beside the issue's targets and the PyTorch script's 1-image time."""
    export_dir = os.path.join(directory, "saved_model", "1")
    export = [*tfblip, "export", "--model", checkpoint, "--task", "caption", "--output", export_dir]
    export_seconds = run_child(export, directory)[0]
    print(
        f"{'cold: tfblip export (caption)':<40} {export_seconds:7.1f} s    "
        f"({target_note(export_seconds, 30)})",
        flush=True,
    )
    child = write_script(directory, "load_and_request.py", LOAD_AND_REQUEST_CHILD)
    loads = [
        json.loads(run_child([child, export_dir, jpeg], directory)[2].splitlines()[-1])
        for _ in range(runs)
    ]
    load = statistics.median(r["load"] + r["request"] for r in loads)
    middle = min(loads, key=lambda r: abs(r["load"] + r["request"] - load))
    report_seconds(
        "cold: SavedModel load + first request",
        load,
        torch_seconds,
        f"   (PyTorch: its whole 1-image script; {target_note(load, 8)}; load "
        f"{middle['load']:.1f} s + request {middle['request']:.1f} s; TF import apart "
        f"{statistics.median(r['import'] for r in loads):.1f} s)",
    )
    if middle["caption"] != cli_caption:
        print(f"WARNING SavedModel caption {middle['caption']!r} is not the CLI's {cli_caption!r}")


def cold_generate(checkpoint, jpeg, directory):
    """The phases of a 1-image caption and generate()'s first-call costs, in a fresh process."""
    child = write_script(directory, "generate_phases.py", GENERATE_CHILD)
    profile = json.loads(run_child([child, checkpoint, jpeg], directory)[2].splitlines()[-1])
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in profile["phases"].items())
    print(
        "cold: phases of a 1-image caption in a fresh process (the CLI's steps, one by one): "
        f"{phases}; total {sum(profile['phases'].values()):.1f} s",
        flush=True,
    )
    for name, (first, warm) in profile["first_calls"].items():
        print(
            f"{'cold: first generate(), ' + name:<40} first - warm {first - warm:5.1f} s"
            f"   (first {first:.1f} s, warm {warm:.1f} s)",
            flush=True,
        )


def benchmark_cold(runs):
    """Whole-process costs, each command in fresh processes: see the module docstring."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "checkpoint")
        save_base_captioning_checkpoint(checkpoint)
        write_processor_files(checkpoint)
        images = os.path.join(directory, "images")
        os.mkdir(images)
        paths = write_sample_jpegs(images, 24)
        tfblip, description = tfblip_command()
        # The children's traced graphs go to an empty cache of this run's own.
        os.environ["TFBLIP_TRACE_CACHE"] = os.path.join(directory, "traces")
        print(
            f"cold: {description}; median of {runs} fresh processes each, taken in turn",
            flush=True,
        )
        torch_seconds, cli_caption = cold_captions(tfblip, checkpoint, paths, runs, directory)
        cold_saved_model(tfblip, checkpoint, paths[0], cli_caption, torch_seconds, runs, directory)
        cold_generate(checkpoint, paths[0], directory)


BENCHMARKS = {
    "processor": benchmark_processor,
    "vision": benchmark_vision,
    "generation": benchmark_generation,
    "saved_model": benchmark_saved_model,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="whole-process comparisons in fresh processes (with --only, those benchmarks too)",
    )
    parser.add_argument(
        "--cold-runs", type=int, default=3, help="fresh processes per --cold command (median)"
    )
    args = parser.parse_args()
    if args.cold_runs < 1:
        parser.error(f"--cold-runs must be at least 1, got {args.cold_runs}")

    import tensorflow as tf
    import torch

    print(
        f"{cpu_model()}, {os.cpu_count()} CPUs; "
        f"tensorflow {tf.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    for name in args.only or ([] if args.cold else BENCHMARKS):
        BENCHMARKS[name](args.repeats)
    if args.cold:
        benchmark_cold(args.cold_runs)


if __name__ == "__main__":
    main()
