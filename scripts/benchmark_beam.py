"""Throughput of the Beam caption pipeline against `tfblip caption` in one process.

    python scripts/benchmark_beam.py --beam-python /path/to/beam-env/bin/python

The Beam side needs an environment with the `beam` extra (apache-beam pins protobuf<7; see
tests/test_beam_environment.py), named by --beam-python; both commands run in it, each as a
whole fresh process, so start-up (imports, loading) counts on both sides. This Python builds a
base-size random-weight captioning checkpoint with transformers (as scripts/benchmark.py does),
its processor files, its caption export, and --images sample JPEGs. Then, taken in turn,
--runs times each (median reported, images per second of the whole process):

- `tfblip caption DIR --model CHECKPOINT` (default --batch-size 8; one untimed first run fills
  the trace cache, as a user's second run finds it);
- `python -m tfblip.beam caption --model EXPORT --input 'DIR/*'` with 2 local worker processes
  (`--direct_num_workers 2 --direct_running_mode multi_processing`), and in one process.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import tempfile
import time

from benchmark import (
    cpu_model,
    save_base_captioning_checkpoint,
    write_processor_files,
    write_sample_jpegs,
)

TWO_WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def timed(command, environment):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{done.stderr[-3000:]}")
    return seconds


def pipeline_captions(prefix):
    captions = {}
    for name in glob.glob(f"{prefix}-*.jsonl"):
        if "-errors-" not in name:
            with open(name) as f:
                captions.update((r["path"], r["caption"]) for r in map(json.loads, f))
    return captions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beam-python", required=True, help="python of the beam environment")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import tfblip

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "checkpoint")
        save_base_captioning_checkpoint(checkpoint)
        write_processor_files(checkpoint)
        model = tfblip.TFBlipForConditionalGeneration.from_pretrained(checkpoint)
        export = tfblip.export_saved_model(
            model, tfblip.BlipProcessor.from_pretrained(checkpoint), f"{directory}/export/1"
        )
        images = os.path.join(directory, "images")
        os.mkdir(images)
        write_sample_jpegs(images, args.images)
        environment = {**os.environ, "TFBLIP_TRACE_CACHE": os.path.join(directory, "traces")}
        python = args.beam_python
        cli = [python, "-m", "tfblip", "caption", images, "--model", checkpoint, "--quiet"]
        cli += ["--format", "jsonl"]

        def pipeline(name, *options):
            prefix = os.path.join(directory, name)
            command = [python, "-m", "tfblip.beam", "caption", "--model", export]
            return [*command, "--input", f"{images}/*", "--output", prefix, *options], prefix

        two, two_prefix = pipeline("two_workers", *TWO_WORKERS)
        one, _ = pipeline("one_process")
        timed(cli, environment)  # fills the trace cache
        seconds = {"tfblip caption": [], "beam, 2 workers": [], "beam, in process": []}
        for _ in range(args.runs):
            for name, command in zip(seconds, (cli, two, one)):
                seconds[name].append(timed(command, environment))

        done = subprocess.run(cli, capture_output=True, text=True, env=environment, check=True)
        expected = {r["path"]: r["caption"] for r in map(json.loads, done.stdout.splitlines())}
        same = pipeline_captions(two_prefix) == expected
        print(f"{cpu_model()}, {os.cpu_count()} CPUs; {args.images} JPEGs, base-size export")
        baseline = args.images / statistics.median(seconds["tfblip caption"])
        for name, values in seconds.items():
            rate = args.images / statistics.median(values)
            print(
                f"{name:18s} {statistics.median(values):6.1f} s  {rate:5.2f} images/s  "
                f"ratio to tfblip caption {rate / baseline:.2f}"
            )
        print(f"pipeline captions equal tfblip caption's: {same}")


if __name__ == "__main__":
    main()
