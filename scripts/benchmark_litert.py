"""LiteRT exports at base size: file size, conversion time, caption latency, token agreement.

    python scripts/benchmark_litert.py [--photos 8] [--repeats 3]

A base-size captioning model with random weights, built by transformers and made decisive
(scripts/benchmark.py's `make_decisive`: its greedy choices are clear, so agreement measures
quantization, not near-ties), is exported with `tfblip.export_litert` as float32, float16 and
dynamic_int8 (20 new tokens). For each: the file's size and the conversion's time; one
caption's latency in the LiteRT interpreter (ai-edge-litert, 2 threads) beside PyTorch
`generate()` and tfblip `generate()` on the same photo in the same run (best of --repeats);
and, on --photos different real photos (scikit-image's samples), the share of greedy tokens equal to
the float32 file's, and the float32 file's agreement with tfblip generate().
"""

import argparse
import os
import tempfile
import time

import numpy as np
from benchmark import best_time, cpu_model, make_decisive, write_processor_files
from PIL import Image

VARIANTS = (None, "float16", "dynamic_int8")
NEW_TOKENS = 20


PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page",
               "immunohistochemistry", "hubble_deep_field", "brick", "grass")  # fmt: skip


def distinct_photos(count):
    """`count` different scikit-image photographs (greyscale ones as RGB), as PIL images."""
    from skimage import data

    if count > len(PHOTO_NAMES):
        raise ValueError(f"--photos is at most {len(PHOTO_NAMES)}")
    return [Image.fromarray(getattr(data, name)()) for name in PHOTO_NAMES[:count]]


def run_tflite(interpreter, image):
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers
    from ai_edge_litert.interpreter import Interpreter

    import tfblip

    torch.set_num_threads(2)
    torch.manual_seed(0)
    reference = transformers.BlipForConditionalGeneration(transformers.BlipConfig()).eval()
    reference = make_decisive(reference)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        write_processor_files(directory)
        model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
        processor = tfblip.BlipProcessor.from_pretrained(directory)
        size = model.config.vision_config.image_size
        photos = [
            np.asarray(photo.convert("RGB").resize((size, size), Image.BICUBIC))[None]
            for photo in distinct_photos(args.photos)
        ]
        print(f"{cpu_model()}, {os.cpu_count()} CPUs; base size, {NEW_TOKENS} new tokens")
        pixels = processor(images=[Image.fromarray(photos[0][0])], return_tensors="tf")[
            "pixel_values"
        ]
        options = {"max_new_tokens": NEW_TOKENS}
        model.generate(pixels, **options)
        tfblip_seconds = best_time(lambda: model.generate(pixels, **options), args.repeats)
        torch_pixels = torch.from_numpy(pixels.numpy())

        def torch_caption():
            with torch.no_grad():
                return reference.generate(pixel_values=torch_pixels, **options)

        torch_seconds = best_time(torch_caption, args.repeats)
        print(f"PyTorch generate {torch_seconds * 1000:.0f} ms, tfblip generate "
              f"{tfblip_seconds * 1000:.0f} ms")  # fmt: skip
        tokens = {}
        for variant in VARIANTS:
            path = os.path.join(directory, f"caption_{variant or 'float32'}.tflite")
            start = time.perf_counter()
            tfblip.export_litert(
                model, processor, path, quantize=variant, max_new_tokens=NEW_TOKENS
            )
            conversion = time.perf_counter() - start
            interpreter = Interpreter(model_path=path, num_threads=2)
            interpreter.allocate_tensors()
            run_tflite(interpreter, photos[0])
            seconds = best_time(lambda i=interpreter: run_tflite(i, photos[0]), args.repeats)
            tokens[variant] = [run_tflite(interpreter, photo)[0] for photo in photos]
            line = (
                f"{variant or 'float32':13s} {os.path.getsize(path) / 2**20:7.1f} MiB  "
                f"converted in {conversion:5.1f} s  caption {seconds * 1000:6.0f} ms  "
                f"(x{seconds / torch_seconds:.2f} PyTorch, x{seconds / tfblip_seconds:.2f} tfblip)"
            )
            if variant is not None:
                agreement = np.mean(
                    [np.mean(a[1:] == b[1:]) for a, b in zip(tokens[variant], tokens[None])]
                )
                line += f"  {agreement:.0%} of greedy tokens equal float32's"
            print(line, flush=True)
        generated = []
        for photo in photos:
            photo_pixels = processor(images=[Image.fromarray(photo[0])], return_tensors="tf")
            ids = model.generate(photo_pixels["pixel_values"], max_new_tokens=NEW_TOKENS)
            generated.append(ids.numpy()[0])
        same = np.mean([np.array_equal(a[: len(b)], b) for a, b in zip(tokens[None], generated)])
        print(f"float32 file equal to tfblip generate() on {same:.0%} of {len(photos)} photos")
        distinct = len({tuple(row) for row in tokens[None]})
        print(f"{distinct} distinct captions among the {len(photos)} photos (float32 file)")


if __name__ == "__main__":
    main()
