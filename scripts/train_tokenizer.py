"""Train the bundled byte-level BPE tokenizer on an offline corpus.

The corpus is everything a CPU-only, network-less machine is guaranteed to have:

* every ``*.py`` file of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``), in sorted relative-path order, skipping
  test directories (``test``, ``tests``, ``idle_test``) and ``site-packages``;
* when present, GSM8K ``train.jsonl`` (question, newline, answer per record),
  which gives the model some English prose and arithmetic next to the code.

The result is a transformers-loadable folder (``tokenizer.json`` +
``tokenizer_config.json``) at ``moebench/models/embedded/tokenizer/``; it is shared
by the trained default model and the random tiny presets. ``<|endoftext|>`` is
the only special token and doubles as bos, eos and pad.

The corpus helpers here are imported by ``train_default_model.py`` and
``routing_report.py`` so all three scripts see exactly the same text.

Examples::

    .venv/bin/python scripts/train_tokenizer.py
    .venv/bin/python scripts/train_tokenizer.py --vocab-size 2048 --gsm8k /data/gsm8k/train.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DIR = REPO_ROOT / "moebench" / "models" / "embedded"
TOKENIZER_DIR = EMBEDDED_DIR / "tokenizer"
DEFAULT_GSM8K = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
EOT = "<|endoftext|>"
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages"})


@dataclass(frozen=True)
class Document:
    source: str  # "stdlib" or "gsm8k"
    name: str  # relative path, or "gsm8k:<line>"
    text: str


def stdlib_files() -> list[Path]:
    """Standard-library ``*.py`` files, sorted by relative path (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in root.rglob("*.py")
        if not (SKIPPED_DIRS & set(p.relative_to(root).parts[:-1]))
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    # errors="replace": a few lib2to3 fixtures are not UTF-8; a stray U+FFFD is harmless.
    return [
        Document("stdlib", p.relative_to(root).as_posix(), p.read_text(encoding="utf-8", errors="replace"))
        for p in stdlib_files()
    ]


def gsm8k_documents(path: Path | None) -> list[Document]:
    if path is None or not path.exists():
        print(f"gsm8k: {path} not found, corpus is stdlib only", file=sys.stderr)
        return []
    docs = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                rec = json.loads(line)
                docs.append(Document("gsm8k", f"gsm8k:{i}", rec["question"] + "\n" + rec["answer"]))
    return docs


def corpus_documents(gsm8k: Path | None = DEFAULT_GSM8K) -> list[Document]:
    """The full corpus: stdlib first, then GSM8K (if present), in a fixed order."""
    return stdlib_documents() + gsm8k_documents(gsm8k)


def resolve_gsm8k(arg: str) -> Path:
    p = Path(arg)
    return p if p.is_absolute() else REPO_ROOT / p


def train_tokenizer(docs: list[Document], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in docs), trainer=trainer, length=len(docs))
    return tok


def save_tokenizer(tok, out_dir: Path, model_max_length: int = 512) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        model_max_length=model_max_length,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes its internal class name ("TokenizersBackend"), which 4.x cannot
    # resolve; "PreTrainedTokenizerFast" names the same class in both.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gsm8k", default="../shared/data/gsm8k/train.jsonl",
                    help="GSM8K train.jsonl, relative to the repo root (skipped if absent)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--out", default=str(TOKENIZER_DIR))
    args = ap.parse_args(argv)
    if args.vocab_size > 4096:
        ap.error("--vocab-size must be <= 4096")

    t0 = time.perf_counter()
    docs = corpus_documents(resolve_gsm8k(args.gsm8k))
    n_bytes = sum(len(d.text.encode()) for d in docs)
    by_src = {s: sum(d.source == s for d in docs) for s in ("stdlib", "gsm8k")}
    print(f"corpus: {len(docs)} documents ({by_src}), {n_bytes / 1e6:.1f} MB")
    tok = train_tokenizer(docs, args.vocab_size)
    out = Path(args.out)
    save_tokenizer(tok, out)
    digest = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()[:16]
    print(f"vocab {tok.get_vocab_size()} -> {out} (tokenizer.json sha256 {digest}) "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    # One rayon thread: the machine is shared, and it keeps merge order reproducible.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
