"""Make a tiny random-weight Llama model (tokenizer + weights) on this machine.

Usage: python make_tiny_model.py OUTDIR [--seed N] [--prefill-heavy]

Why: the demo and the integration tests run a real vLLM server, but no model hub is
reachable from the development and CI machines, so we cannot download even a small model.
Instead we build one locally, deterministically (fixed seeds, sorted inputs):

* a byte-level BPE tokenizer (vocab ~1024) trained with `tokenizers` on a few MB of the
  Python standard library sources, wrapped in `transformers.PreTrainedTokenizerFast` with
  bos/eos/pad tokens and a minimal chat template (so /v1/chat/completions works);
* a random-init `LlamaForCausalLM`: hidden 128, 4 heads (vLLM's CPU attention needs
  head_dim >= 32), 2 layers, intermediate 256, 1024 positions, float32 safetensors.

Its output is gibberish; it exists to exercise the serving path (~2 MB, made in seconds).

``--prefill-heavy`` makes a wider one for the cache-routing benchmark (benchmarks/cache_routing.py):
hidden 512, 8 heads, 4 layers, intermediate 1536, 4,096 positions (~60 MB). The tiny model's prefill
is so cheap that a prompt of 1,000 tokens costs less than the mesh's own overhead, so a prefix-cache
hit saves nothing visible; this one prefills about as a real model does against its serving
overhead, and a cache hit shows in the time to first token as it does on a GPU.

Runs under the vLLM venv's python (needs torch, transformers, tokenizers). The model is
written to OUTDIR.tmp and renamed into place, so OUTDIR is either absent or complete; if
OUTDIR is already complete the script exits 0 at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import sysconfig
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 1024
CORPUS_BYTES = 4 * 1024 * 1024  # enough text for 1k merges; keeps training to a few seconds
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Minimal template: role headers + EOS after each turn. vLLM renders it for chat requests
# (and tokenizes the result without adding BOS again, hence the explicit bos_token).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Files whose presence means a previous run finished (the rename makes it all-or-nothing).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_complete(outdir: Path) -> bool:
    return all((outdir / name).is_file() for name in REQUIRED_FILES)


def corpus_files(limit: int = CORPUS_BYTES) -> list[str]:
    """Stdlib .py files in a stable order, up to `limit` bytes in total."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files: list[str] = []
    total = 0
    # Sorted relative paths: the same Python version gives the same corpus, hence the same
    # tokenizer. Skip site-packages (varies by venv) and tests (odd encodings, huge files).
    for path in sorted(stdlib.rglob("*.py"), key=lambda p: p.relative_to(stdlib).as_posix()):
        rel = path.relative_to(stdlib).parts
        if "site-packages" in rel or "test" in rel or "tests" in rel:
            continue
        size = path.stat().st_size
        if total + size > limit:
            break
        files.append(str(path))
        total += size
    if not files:
        raise SystemExit(f"no Python sources found under {stdlib}")
    return files


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    tok.train(corpus_files(), trainer)
    # Prepend BOS for plain completions, like Llama tokenizers do.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=1024,
        chat_template=CHAT_TEMPLATE,
    )


TINY_SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
"""head_dim 32: the minimum vLLM's CPU attention accepts."""
PREFILL_HEAVY_SHAPE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8}
PREFILL_HEAVY_POSITIONS = 4096


def build_model(tokenizer, seed: int = SEED, shape: dict = TINY_SHAPE, positions: int = 1024):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **shape,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    return model


def main(argv: list[str]) -> int:
    seed = SEED
    heavy = "--prefill-heavy" in argv
    argv = [a for a in argv if a != "--prefill-heavy"]
    if len(argv) == 4 and argv[2] == "--seed" and argv[3].isdigit():
        # Other weights, the same tokenizer: a different model under the same name (the
        # verification benchmark's dishonest provider).
        seed = int(argv[3])
        argv = argv[:2]
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    outdir = Path(argv[1]).absolute()
    if is_complete(outdir):
        return 0

    # Determinism and quiet: no telemetry, no hub, no thread-count-dependent surprises.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    # Two concurrent runs (two CI steps, two shells) would share OUTDIR.tmp: serialise them,
    # then look again in case the other run has just finished.
    outdir.parent.mkdir(parents=True, exist_ok=True)
    with open(outdir.with_name(outdir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(outdir):
            build(outdir, seed, heavy)
    return 0


def build(outdir: Path, seed: int = SEED, heavy: bool = False) -> None:
    tmp = outdir.with_name(outdir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted run
    tmp.mkdir()

    tokenizer = train_tokenizer()
    if heavy:
        tokenizer.model_max_length = PREFILL_HEAVY_POSITIONS
        model = build_model(tokenizer, seed, PREFILL_HEAVY_SHAPE, PREFILL_HEAVY_POSITIONS)
    else:
        model = build_model(tokenizer, seed)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if not is_complete(tmp):
        raise SystemExit(f"incomplete output in {tmp}: {sorted(p.name for p in tmp.iterdir())}")

    for path in tmp.iterdir():
        path.chmod(0o644)  # safetensors are written 0600; containers may read as another uid
    if outdir.exists():  # an incomplete OUTDIR (not written by us: ours appear atomically)
        shutil.rmtree(outdir)
    os.replace(tmp, outdir)
    size = sum(p.stat().st_size for p in outdir.rglob("*") if p.is_file())
    print(f"tiny model: {outdir} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
