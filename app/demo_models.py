"""The demo's models and data, made by the project from the Python standard library.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the stdlib's own source,
the teacher is a small Llama trained on most of the stdlib (this module, run once, output
shipped in ``app/assets/demo-teacher``), and the student is a smaller Llama with the same
tokenizer, randomly initialised from a fixed seed when the demo starts.

The stdlib files are split by a stable hash of their path: files in the *demo* split are
never seen by the teacher, so the demo's held-out loss measures generalisation, not recall.

    python -m distillq.app.demo_models build-teacher --out app/assets/demo-teacher --steps 6000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VOCAB_SIZE = 4096
EOS = "<|endoftext|>"
# A plain chat template so `messages` records work with the demo tokenizer too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + EOS + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEACHER_ASSET = Path(__file__).parent / "assets" / "demo-teacher"


@dataclass(frozen=True)
class TinyLlama:
    """Shape of a small Llama; the teacher and student differ only here."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int = 512


TEACHER_SHAPE = TinyLlama(hidden=256, layers=6, heads=8, intermediate=704)
STUDENT_SHAPE = TinyLlama(hidden=128, layers=3, heads=4, intermediate=352)


def stdlib_files() -> list[Path]:
    """Source files of this interpreter's stdlib, tests and site-packages excluded, sorted."""
    root = Path(sysconfig.get_path("stdlib"))
    skip = {"site-packages", "test", "tests", "idle_test"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def in_demo_split(path: Path) -> bool:
    """One file in ten, chosen by a hash of its stdlib-relative path, is reserved for the demo."""
    rel = path.relative_to(Path(sysconfig.get_path("stdlib"))).as_posix()
    return hashlib.sha1(rel.encode()).digest()[0] % 10 == 0


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def chunks(text: str, max_chars: int) -> Iterator[str]:
    """Cut text at line boundaries into pieces of at most ``max_chars`` (longer lines are cut)."""
    piece: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            yield line[:max_chars]
            line = line[max_chars:]
        if size + len(line) > max_chars and piece:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    if piece and "".join(piece).strip():
        yield "".join(piece)


def demo_split_records(n: int, max_chars: int = 300) -> list[dict[str, str]]:
    """Up to ``n`` text records from the demo split of the stdlib's sources (each once)."""
    out: list[dict[str, str]] = []
    for p in stdlib_files():
        if in_demo_split(p):
            out += [{"text": c} for c in chunks(read_text(p), max_chars) if len(c) > 40]
        if len(out) >= n:
            break
    return out[:n]


def write_demo_dataset(out: Path, max_records: int = 1600, max_chars: int = 480) -> Path:
    """Write the demo JSONL (``{"text"}`` records) from the demo split of the stdlib."""
    records = [
        c for p in stdlib_files() if in_demo_split(p) for c in chunks(read_text(p), max_chars)
    ]
    records = [r for r in records if len(r.strip()) > 40]
    random.Random(0).shuffle(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for text in records[:max_records]:
            f.write(json.dumps({"text": text}) + "\n")
    return out


def train_tokenizer(texts: list[str], out: Path) -> None:
    """Train a byte-level BPE on ``texts`` and save it as a transformers tokenizer in ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def llama(shape: TinyLlama, vocab_size: int, eos_id: int, seed: int) -> Any:  # LlamaForCausalLM
    """A randomly initialised Llama of ``shape``; deterministic for a given seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def build_student(out: Path, tokenizer_dir: Path = TEACHER_ASSET, seed: int = 1234) -> Path:
    """Save a randomly initialised demo student (with the teacher's tokenizer) to ``out``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = llama(STUDENT_SHAPE, len(tok), tok.eos_token_id, seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _token_stream(texts: list[str], tok: Any) -> list[int]:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t)["input_ids"])
        ids.append(tok.eos_token_id)
    return ids


def build_teacher(
    out: Path, steps: int, seq_len: int = 256, batch: int = 16, seed: int = 0
) -> None:
    """Train the demo tokenizer and teacher on the stdlib's non-demo split; save both to ``out``.

    Plain next-token training, AdamW, linear warm-up then cosine decay. The last 2% of the
    token stream is held out and its loss is written to ``out/training.json``.
    """
    import torch

    out.mkdir(parents=True, exist_ok=True)
    files = [p for p in stdlib_files() if not in_demo_split(p)]
    texts = [read_text(p) for p in files]
    log.info("teacher corpus: %d files, %.1f MB", len(files), sum(map(len, texts)) / 1e6)
    train_tokenizer(texts, out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    stream = torch.tensor(_token_stream(texts, tok), dtype=torch.long)
    cut = int(len(stream) * 0.98)
    train, held = stream[:cut], stream[cut:]
    log.info("tokens: %d train, %d held out", len(train), len(held))

    model = llama(TEACHER_SHAPE, len(tok), tok.eos_token_id, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(train) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([train[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            rate = (step + 1) * batch * seq_len / (time.time() - t0)
            log.info("step %d/%d loss %.3f  %.0f tok/s", step, steps, loss.item(), rate)
    held_loss = _held_out_loss(model, held, seq_len)
    model = model.to(torch.float16)  # halves the shipped size; loaded back as float32 on CPU
    model.save_pretrained(out)
    info = {
        "steps": steps,
        "seq_len": seq_len,
        "batch": batch,
        "train_tokens_seen": steps * batch * seq_len,
        "held_out_loss": held_loss,
        "seconds": round(time.time() - t0, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("teacher done: %s", info)


def _held_out_loss(model: Any, held: Any, seq_len: int) -> float:
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, len(held) - seq_len - 1, seq_len):
            x = held[i : i + seq_len].unsqueeze(0)
            losses.append(model(input_ids=x, labels=x).loss.item())
    model.train()
    return float(sum(losses) / max(1, len(losses)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillq.app.demo_models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("build-teacher", help="train and save the demo teacher + tokenizer")
    t.add_argument("--out", type=Path, default=TEACHER_ASSET)
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    build_teacher(args.out, steps=args.steps)


if __name__ == "__main__":
    main()
