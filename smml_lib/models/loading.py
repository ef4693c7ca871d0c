"""Load a Llama (model + tokenizer) from a hub id, a local folder, or the offline ``"tiny"`` model.

All three sources end in the same call, ``from_pretrained(<local folder>)``: the hub id is first
downloaded into the Hugging Face cache, the tiny model is first built into the smml cache. So smoke
mode on a laptop exercises the same loading code as Llama-3.2-1B on a GPU.

Failures a learner will meet are turned into ``ModelLoadError`` with a message that says what to do,
and they come within seconds (the hub is probed with a short timeout before any download):

- a gated model (Meta's Llama repos) without a token -> accept the license, set ``HF_TOKEN``;
- no network / hub unreachable / ``HF_HUB_OFFLINE=1`` and not cached -> use a local folder or "tiny";
- a path that does not exist, or a checkpoint that is not a Llama.

The token is never printed.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from smml_lib.common.device import NoGpuError, resolve_device, resolve_dtype
from smml_lib.common.object_storage import StorageError, fetch_folder
from smml_lib.models.anatomy import count_params_from_config
from smml_lib.models.tiny import tiny_llama_path

# Only what from_pretrained needs: skips Meta's original/*.pth copies (another 2.5 GB for the 1B model).
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def _looks_like_path(model_id: str) -> bool:
    """A hub id is exactly 'org/name'; anything path-shaped, or existing on disk, is a folder."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or Path(model_id).expanduser().exists()


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _probe(endpoint: str, timeout_s: float) -> None:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ModelLoadError(
            f"Cannot reach the model hub at {endpoint} ({type(exc).__name__}: {exc}). Without network, pass a "
            "local checkpoint folder (model_id='/path/to/Llama-3.2-1B'), or model_id='tiny' for the offline "
            "tiny Llama (smoke mode).") from None


def download_from_hub(repo_id: str, *, token: str | None = None, revision: str | None = None,
                      timeout_s: float = 5.0) -> Path:
    """Return a local folder with ``repo_id``'s config, tokenizer and safetensors, downloading if needed."""
    try:  # 1. already in the local Hugging Face cache? No network needed.
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if _offline():
        raise ModelLoadError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                             "downloading. Download it on a machine with network (hf download "
                             f"{repo_id}), pass a local folder, or use model_id='tiny'.")
    endpoint = _hub_endpoint()
    _probe(endpoint, timeout_s)  # 2. fail in seconds, not minutes, when there is no network
    token = token or os.environ.get("HF_TOKEN") or None

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; we honour the environment as it is *now* (a learner
    # may have changed it in a notebook cell), so the library's flag follows it for the length of the download.
    imported_offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:  # 3. download (the hub's own progress bars show how far it got)
        return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=HUB_PATTERNS,
                                      etag_timeout=timeout_s, endpoint=endpoint))
    except GatedRepoError:
        how = "Your token has not been granted access" if token else "No Hugging Face token is configured"
        raise ModelLoadError(
            f"{repo_id!r} is a gated model. {how}: accept its license at https://huggingface.co/{repo_id}, "
            "create a read token at https://huggingface.co/settings/tokens and set HF_TOKEN (or run "
            "`hf auth login`). Or pass a local folder, or model_id='tiny'.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"No model {repo_id!r} on the hub (check the spelling; a private repo also needs "
                             "HF_TOKEN).") from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"{repo_id!r} has no revision {revision!r}.") from None
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"The hub refused {repo_id!r}: {exc}. Check HF_TOKEN and the model id.") from None
    except (OSError, ConnectionError) as exc:
        raise ModelLoadError(f"Download of {repo_id!r} failed ({type(exc).__name__}: {exc}). Check the network "
                             "and free disk (smml doctor), or pass a local folder.") from None
    finally:
        constants.HF_HUB_OFFLINE = imported_offline


def resolve_checkpoint(model_id: str, *, token: str | None = None, revision: str | None = None,
                       timeout_s: float = 5.0) -> tuple[Path, str]:
    """Map ``model_id`` to a local checkpoint folder. Returns ``(folder, kind)``, kind in tiny/local/hub/s3.

    ``s3://bucket/prefix`` is downloaded once into the smml cache (``smml_lib.common.object_storage.fetch_folder``;
    ``AWS_ENDPOINT_URL_S3`` points it at an S3-compatible server).
    """
    if model_id == "tiny":
        return tiny_llama_path(), "tiny"
    if model_id.startswith("s3://"):
        try:
            return fetch_folder(model_id), "s3"
        except StorageError as exc:
            raise ModelLoadError(f"Cannot fetch {model_id!r} from S3: {exc}") from None
    if _looks_like_path(model_id):
        path = Path(model_id).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"No checkpoint folder at {path}. Pass a folder that holds config.json, "
                                 "tokenizer files and *.safetensors, a hub id such as 'meta-llama/Llama-3.2-1B', "
                                 "or 'tiny'.")
        return path.resolve(), "local"
    if model_id.count("/") != 1:
        raise ModelLoadError(f"{model_id!r} is neither a folder nor a hub id of the form 'org/name' "
                             "(e.g. 'meta-llama/Llama-3.2-1B'); use 'tiny' for the offline model.")
    return download_from_hub(model_id, token=token, revision=revision, timeout_s=timeout_s), "hub"


def check_llama_folder(path: Path) -> dict:
    """Read ``config.json`` and make sure it is a Llama checkpoint with weights; return the config dict."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face checkpoint folder.")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("model_type") != "llama":
        raise ModelLoadError(f"{path} holds a {cfg.get('model_type')!r} model, not a Llama checkpoint "
                             "(config.json model_type must be 'llama'). The labs' predictions assume Llama.")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no *.safetensors weight files (convert .bin/.pth weights with "
                             "transformers' save_pretrained first).")
    return cfg


def load_llama(model_id: str = "tiny", *, dtype: Any = "auto", device: Any = "auto", device_map: Any = None,
               max_memory: dict | None = None, attn_implementation: str | None = None, token: str | None = None,
               revision: str | None = None, timeout_s: float = 5.0) -> tuple[Any, Any]:
    """Load a Llama causal LM and its tokenizer, ready for inference (``model.eval()``).

    Args:
        model_id: ``"tiny"`` (offline tiny Llama), a local folder, or a hub id like ``"meta-llama/Llama-3.2-1B"``.
        dtype: ``"auto"`` (bf16 on GPU, fp32 on CPU), ``"fp32"``, ``"bf16"``, ``"fp16"`` or a ``torch.dtype``.
        device: ``"auto"``, ``"cpu"``, ``"cuda:0"``... ignored when ``device_map`` is given.
        device_map, max_memory: passed to ``from_pretrained`` to split a big model over GPUs (Module 02).
        attn_implementation: ``"eager"`` or ``"sdpa"`` (default: transformers' choice).
        token: Hugging Face token for gated models (default: ``HF_TOKEN``). Never printed.
        timeout_s: how long to wait for the hub before giving up with a clear error.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left (right for training is up to you).
    """
    path, kind = resolve_checkpoint(model_id, token=token, revision=revision, timeout_s=timeout_s)
    check_llama_folder(path)  # a wrong folder fails here, before any weight is read
    # deferred: heavy (2-3 s of imports); callers that only resolve or check a checkpoint never need it,
    # and a wrong path or an offline hub fails before paying for it
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        dev = resolve_device(device) if device_map is None else None
    except NoGpuError as exc:
        raise ModelLoadError(str(exc)) from None
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs.update(device_map=device_map, max_memory=max_memory)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if dev is not None:
            model = model.to(dev)
    except torch.OutOfMemoryError:
        need = count_params_from_config(json.loads((path / "config.json").read_text())) * torch_dtype.itemsize / 1e9
        raise ModelLoadError(
            f"Out of GPU memory loading {model_id!r}: its weights alone need about {need:.1f} GB in "
            f"{str(torch_dtype).replace('torch.', '')}. Split it over GPUs (device_map='auto', Module 02), use a "
            "smaller dtype, or a smaller model.") from None
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right, so pad prompts on the left
    model.smml_source = {"model_id": model_id, "kind": kind, "path": str(path)}
    return model, tokenizer
