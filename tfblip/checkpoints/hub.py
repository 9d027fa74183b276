"""Finding a checkpoint: a local path, or a Hugging Face Hub repo id downloaded with
huggingface_hub."""

import inspect
import os

# snapshot_download arguments that from_pretrained sets itself, or that would make it return
# something other than the downloaded directory.
_HUB_ARGUMENTS_SET_HERE = frozenset({"repo_id", "allow_patterns", "dry_run"})
# The download options accepted when huggingface_hub is not installed, so its signature cannot
# be read: a local path ignores them (as transformers does), a repo id needs the package anyway.
_COMMON_HUB_OPTIONS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "revision", "token"}
)


def hub_download_options():
    """Names of the keyword arguments that from_pretrained passes on to huggingface_hub's
    `snapshot_download`: its named parameters in the installed version.

    Returns:
        A frozenset of names; without huggingface_hub, the options common to its versions.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return _COMMON_HUB_OPTIONS
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(snapshot_download).parameters.values()
    return frozenset(p.name for p in parameters if p.kind in named) - _HUB_ARGUMENTS_SET_HERE


def check_hub_options(caller, hub_kwargs, own_arguments):
    """Raises a TypeError naming the keywords of `hub_kwargs` that are no download option.

    A local path ignores the download options, so without this check a typo (`dtyp=`) or an
    option of another release would be dropped without a word.

    Args:
        caller: the function's name for the message (e.g. "TFBlipModel.from_pretrained").
        hub_kwargs: the keyword arguments meant for `snapshot_download`.
        own_arguments: the caller's own optional arguments, listed in the message.

    Raises:
        TypeError: some keyword is no option of `snapshot_download`.
    """
    accepted = hub_download_options()
    unknown = sorted(set(hub_kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}. "
            f"It takes {', '.join(own_arguments)} and, for downloads from the Hugging Face Hub "
            f"(ignored for local paths), huggingface_hub.snapshot_download's options: "
            f"{', '.join(sorted(accepted))}."
        )


def resolve_checkpoint_path(name_or_path, **hub_kwargs):
    """A local directory (or file) for `name_or_path`, downloading a hub repo id if needed.

    Args:
        name_or_path: a local path, or a Hugging Face Hub repo id ("owner/name").
        **hub_kwargs: options of huggingface_hub's `snapshot_download`.

    Returns:
        `name_or_path` when it exists, else the downloaded snapshot's directory.

    Raises:
        FileNotFoundError: a path that does not exist and is no repo id.
        ImportError: a repo id without huggingface_hub installed.
        OSError: the download failed.
    """
    if os.path.exists(name_or_path):
        return name_or_path
    looks_like_repo = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if not looks_like_repo:
        raise FileNotFoundError(f"Checkpoint path {name_or_path!r} does not exist.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ImportError(
            f"{name_or_path!r} is not a local path, and downloading it from the Hugging Face Hub "
            "needs huggingface_hub (pip install 'tfblip[hub]'). Or pass a local checkpoint "
            "directory holding config.json and model.safetensors."
        ) from error
    try:
        return snapshot_download(
            name_or_path,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "pytorch_model*.bin"],
            **hub_kwargs,
        )
    except Exception as error:  # network, auth and not-found errors differ by version
        raise OSError(
            f"Could not download {name_or_path!r} from the Hugging Face Hub ({error}). "
            "Offline, pass a local checkpoint directory holding config.json and weights."
        ) from error
