"""An offline tiny Llama, built deterministically on the learner's own machine.

Smoke mode (CI, a laptop, no network) needs a model that goes through *exactly* the same code path
as a real checkpoint. So this is not a mock: it is a real ``LlamaConfig`` + ``LlamaForCausalLM``
(Llama-3 shape: grouped-query attention, RoPE, SwiGLU MLP, tied embeddings) with random weights
from a fixed seed, saved as ``model.safetensors`` + ``config.json``, with a byte-level BPE
tokenizer trained here on a small bundled text and saved as ``tokenizer.json``. ``load_llama("tiny")``
then loads that folder with ``from_pretrained``, the same call that loads Llama-3.2-1B.

The folder is cached under ``~/.cache/smml/models/tiny-llama-<hash>``; the hash covers the config,
the corpus and the builder version, so a change rebuilds it. Building takes about a second and is
safe when several processes (e.g. torchrun ranks) ask at once: one builds, the others wait.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

from smml_lib.common.device import resolve_dtype
from smml_lib.common.paths import cache_dir
from smml_lib.models.anatomy import preset_config

BUILDER_VERSION = 2
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
TOKENIZER_VOCAB = 1024  # BPE target size (the small corpus may stop the trainer a little short)

# Llama-3 architecture, scaled down: 4 layers, width 256, 8 query heads sharing 4 key/value heads.
TINY_CONFIG: dict = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    # Wider than a real model's 0.02: with 0.02, greedy decoding of random weights collapses to one repeated
    # token ("XXXX..."), which would make output-equality checks (batched vs solo, compiled vs eager) trivial.
    "initializer_range": 0.1,
}


# A chat template of the tiny tokenizer's own, so smoke mode serves /v1/chat/completions through the same
# ``apply_chat_template`` call as Llama-3.2-1B-Instruct (whose template uses header tokens the tiny one lacks).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def _corpus() -> str:
    return resources.files("smml_lib").joinpath("data/tiny_corpus.txt").read_text()


def _key() -> str:
    blob = json.dumps({"v": BUILDER_VERSION, "cfg": TINY_CONFIG, "vocab": TOKENIZER_VOCAB}, sort_keys=True) + _corpus()
    blob += CHAT_TEMPLATE
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_tokenizer(corpus: str, vocab_size: int = TOKENIZER_VOCAB) -> "object":
    """Train a byte-level BPE tokenizer (the GPT-2 / Llama-3 family of tokenizers) on ``corpus``.

    Byte-level means every possible byte is in the base alphabet, so any text can be encoded:
    there is no "unknown token". BPE then merges the most frequent pairs into longer tokens.
    """
    # deferred: only building the cached folder trains a tokenizer; tiny_llama_path() usually just finds it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line for line in corpus.splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama 3: every encoded text starts with the begin-of-text token.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return tok


def save_tokenizer(dest: Path, max_len: int) -> tuple["object", "object"]:
    """Train the tiny tokenizer and save it into ``dest`` as a transformers tokenizer. Returns (raw, wrapped)."""
    # deferred: heavy (transformers' tokenizer stack); a cached folder needs none of it
    from transformers import PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer(_corpus())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                        model_max_length=max_len)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)
    return raw, tokenizer


def build_tiny_llama(dest: Path, seed: int = 0) -> Path:
    """Build the tiny Llama checkpoint into ``dest`` (weights, config, tokenizer). Deterministic."""
    # deferred: heavy (about 3 s of imports on a 2-core machine); only a build creates a model here
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    raw, tokenizer = save_tokenizer(dest, TINY_CONFIG["max_position_embeddings"])
    vocab = -(-len(tokenizer) // 64) * 64  # round the embedding table up to a multiple of 64, as real models do
    config = LlamaConfig(vocab_size=vocab, bos_token_id=raw.token_to_id(BOS), eos_token_id=raw.token_to_id(EOS),
                         pad_token_id=raw.token_to_id(EOS), **TINY_CONFIG)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id, do_sample=False)
    model.save_pretrained(dest)  # model.safetensors + config.json + generation_config.json
    (dest / "SMML_TINY.md").write_text(
        "Offline tiny Llama built by smml_lib.models.tiny (random weights, fixed seed) for smoke mode.\n"
        f"builder version {BUILDER_VERSION}, key {_key()}\n")
    return dest


def pad_vocabulary(dest: Path, vocab_size: int) -> int:
    """Give every id below ``vocab_size`` a token in ``dest/tokenizer.json``; returns how many were added.

    A twin keeps the published vocabulary size (128,256 for Llama-3.2-1B) with the tiny tokenizer's
    ~1,000 tokens, so its random weights produce ids the tokenizer never learnt, which then decode to
    ``None``. Each missing id gets a filler token ``<|twin_<id>|>``: printable ASCII, which the byte-level
    decoder passes through as text. No merge produces a filler, so encoding is unchanged.
    """
    path = Path(dest) / "tokenizer.json"
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in spec.get("added_tokens", [])}
    missing = [i for i in range(vocab_size) if i not in taken]
    vocab.update({f"<|twin_{i}|>": i for i in missing})
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return len(missing)


def build_twin(preset: str, dest: Path, *, device: str = "cpu", dtype: str = "bf16", seed: int = 0,
               overrides: dict | None = None) -> Path:
    """A published Llama's *architecture* with random weights, saved as a checkpoint folder in ``dest``.

    For timing where the real weights cannot be downloaded (a borrowed GPU machine with no network):
    speed and memory depend on the shapes and the dtype, not on the weights' values, so a twin of
    Llama-3.2-1B moves the same bytes and does the same FLOPs per token as the real one. Its text is
    noise, and the tokenizer is the tiny one, padded so that every id of the big vocabulary decodes. A file
    ``SMML_TWIN.md`` says so, and results measured on it should say so too.

    Args:
        preset: a name ``anatomy.preset_config`` knows, e.g. ``"Llama-3.2-1B"``.
        device: where to initialise the weights (``"cuda"`` is much faster for billions of them).
        dtype: the dtype the weights are saved in (``"bf16"`` as the published checkpoints).
        overrides: config entries to change (tests use a few layers of the real width).
    """
    # deferred: heavy (about 3 s of imports on a 2-core machine); only a build creates a model here
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = preset_config(preset) | dict(overrides or {})
    dest = Path(dest)
    raw, _ = save_tokenizer(dest, shape["max_position_embeddings"])
    pad_vocabulary(dest, shape["vocab_size"])  # every id the model can produce decodes to text
    ids = {f"{k}_token_id": raw.token_to_id(t) for k, t in (("bos", BOS), ("eos", EOS), ("pad", EOS))}
    config = LlamaConfig(hidden_act="silu", **ids, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(resolve_dtype(dtype, device))
    model.generation_config = GenerationConfig(**ids, do_sample=False)
    model.save_pretrained(dest)
    params = sum(p.numel() for p in model.parameters())
    (dest / "SMML_TWIN.md").write_text(
        f"Architecture twin of {preset} built by smml_lib.models.tiny.build_twin: the published shape "
        f"({params:,} parameters, {dtype}) with RANDOM weights (seed {seed}) and the tiny tokenizer.\n"
        "Timings and memory are representative of the real model; generated text is noise.\n"
        + (f"Changed from the published config: {overrides}\n" if overrides else ""))
    return dest


def tiny_llama_path(rebuild: bool = False) -> Path:
    """Return the cached tiny Llama folder, building it first if needed (about a second)."""
    root = cache_dir("models")
    dest = root / f"tiny-llama-{_key()}"
    if (dest / "model.safetensors").exists() and not rebuild:
        return dest
    with open(root / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same folder
        try:
            if (dest / "model.safetensors").exists() and not rebuild:
                return dest
            tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
            try:
                build_tiny_llama(tmp)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(tmp, dest)  # atomic: readers never see a half-written folder
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml tiny", description="Build (or locate) the offline tiny Llama.")
    p.add_argument("--rebuild", action="store_true", help="build again even if cached")
    p.add_argument("--twin", metavar="PRESET",
                   help="instead: build an architecture twin of a published Llama (random weights), e.g. Llama-3.2-1B")
    p.add_argument("--dest", type=Path, help="folder for --twin")
    p.add_argument("--device", default="cpu", help="where --twin initialises its weights (cpu or cuda)")
    p.add_argument("--layers", type=int, help="--twin: keep this many decoder layers (the rest as published)")
    args = p.parse_args(argv)
    if args.twin:
        if not args.dest:
            p.error("--twin needs --dest FOLDER")
        if args.device.startswith("cuda"):
            if not torch.cuda.is_available():
                p.error(f"--device {args.device}: torch sees no CUDA GPU here; use --device cpu (slower, same result)")
        overrides = {"num_hidden_layers": args.layers} if args.layers else None
        print(build_twin(args.twin, args.dest, device=args.device, overrides=overrides))
        return 0
    print(tiny_llama_path(rebuild=args.rebuild))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(cli(sys.argv[1:]))
