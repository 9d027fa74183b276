"""`python -m tfblip.beam caption|embed|vqa`: the ready pipelines on any Beam runner.

Every option this parser does not know is a Beam pipeline option (`--runner`,
`--direct_num_workers`, `--direct_running_mode`, Dataflow's `--project`, `--region`, ...).
Without `--runner`, the pipeline runs in this process on Beam's FnApiRunner: Beam's
DirectRunner would first try its Prism runner, which downloads a binary.
"""

import argparse
import sys

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from tfblip.beam.pipelines import caption_pipeline, embed_pipeline, vqa_pipeline

LOCAL_RUNNER = "FnApiRunner"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfblip.beam",
        description="Caption, embed or question images with a tfblip SavedModel export on "
        "Apache Beam. Unknown options go to Beam (--runner, --direct_num_workers, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, inputs in (
        ("caption", "caption images (a caption export)", "pattern"),
        ("embed", "image embeddings as Gallery .npz shards (a features export)", "pattern"),
        ("vqa", "answer questions (a vqa export; a JSONL manifest of image + question)", None),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--model", required=True, help="the export's version directory")
        command.add_argument("--output", required=True, metavar="PREFIX", help="output prefix")
        if inputs == "pattern":
            source = command.add_mutually_exclusive_group(required=True)
            source.add_argument(
                "--input", metavar="PATTERN", help="image files, e.g. 'gs://b/*.jpg'"
            )
            source.add_argument(
                "--manifest", metavar="FILE.jsonl", help='JSON lines of {"image": path}'
            )
            if name == "embed":
                source.add_argument(
                    "--texts",
                    metavar="FILE.jsonl",
                    help='embed texts instead: JSON lines of {"text": ..., "id": optional}',
                )
        else:
            command.add_argument(
                "--manifest",
                required=True,
                metavar="FILE.jsonl",
                help='JSON lines of {"image": path, "question": text}',
            )
        command.add_argument(
            "--batch-size", type=int, default=8, metavar="N", help="largest batch (default 8)"
        )
    return parser


def main(argv=None):
    arguments, beam_arguments = build_parser().parse_known_args(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_arguments):
        beam_arguments = ["--runner", LOCAL_RUNNER, *beam_arguments]
    options = PipelineOptions(beam_arguments)
    # The DoFns are module-level classes; workers import tfblip, so nothing to pickle.
    options.view_as(SetupOptions).save_main_session = False
    import apache_beam as beam

    common = {"export_dir": arguments.model, "output": arguments.output}
    common["batch_size"] = arguments.batch_size
    try:
        with beam.Pipeline(options=options) as pipeline:
            if arguments.command == "vqa":
                vqa_pipeline(pipeline, manifest=arguments.manifest, **common)
            elif arguments.command == "embed":
                embed_pipeline(
                    pipeline,
                    pattern=arguments.input,
                    manifest=arguments.manifest,
                    texts=arguments.texts,
                    **common,
                )
            else:
                caption_pipeline(
                    pipeline, pattern=arguments.input, manifest=arguments.manifest, **common
                )
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
