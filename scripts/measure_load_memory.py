"""Peak memory of loading a checkpoint with `from_pretrained`, relative to the file's size.

    python scripts/measure_load_memory.py --config base

Builds a random-weight transformers BLIP captioning checkpoint of the given size in a
temporary directory, then loads it with tfblip in a fresh Python process (so nothing else
is in memory) and reports how much the process's peak resident memory grew during the
load, as a multiple of the checkpoint's size. The weights themselves account for 1.0x.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CONFIGS = {
    "tiny": {
        "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        "vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "base": {"text_config": {}, "vision_config": {}},
}
WARM_UP_CONFIG = {
    "text_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
    "vision_config": {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 16,
    },
}

# `status_bytes(field)` for child processes: a /proc/self/status figure in bytes.
STATUS_BYTES_SOURCE = """
def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field + " not in /proc/self/status")
"""

# Runs in the child process. TensorFlow's runtime grows on its first ops (thread pools,
# kernels), so a tiny model runs once before the baseline is taken. The peak is VmHWM of
# this process's own memory map: getrusage's ru_maxrss would also count the parent's memory
# at fork time, which Linux carries over into the child across exec.
CHILD = (
    """
import json, sys
import tfblip
"""
    + STATUS_BYTES_SOURCE
    + """
tiny = tfblip.BlipConfig(**json.loads(sys.argv[2]))
tfblip.TFBlipForConditionalGeneration(tiny)(
    pixel_values=[[[[0.0] * 32] * 32] * 3], input_ids=[[1, 2]]
)
before = status_bytes("VmRSS")
tfblip.TFBlipForConditionalGeneration.from_pretrained(sys.argv[1])
print(json.dumps({"before": before, "peak": status_bytes("VmHWM"), "after": status_bytes("VmRSS")}))
"""
)


def write_checkpoint(config_name, directory):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BlipConfig(**CONFIGS[config_name])
    transformers.BlipForConditionalGeneration(config).save_pretrained(directory)


def measure(config_name):
    """{'checkpoint_bytes', 'load_growth_bytes', 'ratio'} for one configuration."""
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoint(config_name, directory)
        size = os.path.getsize(os.path.join(directory, "model.safetensors"))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run(
            [sys.executable, "-c", CHILD, directory, json.dumps(WARM_UP_CONFIG)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    usage = json.loads(result.stdout.strip().splitlines()[-1])
    growth = usage["peak"] - usage["before"]
    return {"checkpoint_bytes": size, "load_growth_bytes": growth, "ratio": growth / size, **usage}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="base")
    args = parser.parse_args()
    result = measure(args.config)
    print(
        f"{args.config}: checkpoint {result['checkpoint_bytes'] / 2**20:.0f} MiB, "
        f"peak memory growth while loading {result['load_growth_bytes'] / 2**20:.0f} MiB "
        f"= {result['ratio']:.2f}x the checkpoint"
    )


if __name__ == "__main__":
    main()
