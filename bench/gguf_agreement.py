"""Benchmark: how often llama.cpp's own tokenizer gives sifirdan's ids, on Nutuk's validation split.

    python bench/gguf_agreement.py [--vocab-size 4096] [--no-append]

For each pre-tokenizer `sifirdan tokenizer train --pre-tokenizer` offers (turkish, the default; llama.cpp,
llama.cpp's "ufakzeka"): a tokenizer trained on Nutuk's train split, a tiny model exported with it by
`sifirdan export gguf`, and llama.cpp (llama-cpp-python, vocab only) tokenizing every non-empty line of the
validation split. Reports lines encoded to identical ids, sifirdan tokens that llama.cpp also makes at the same
byte offset, token counts, and whether the export's own prediction (``as_llama_cpp_splits``, what its printed
agreement rate is computed from) equals llama.cpp on every line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import append_results, machine_info, md_table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36")
    from sifirdan import checkpoint as ckpt
    from sifirdan.data.split import standard_split
    from sifirdan.interop import gguf as gg
    from sifirdan.model import GPT, GPTConfig
    from sifirdan.tokenizer import BPETokenizer
    from sifirdan.tokenizer.pattern import PRE_TOKENIZERS

    train, val, _ = standard_split(None)
    lines = [line for line in val.split("\n") if line.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="gguf_agree_"))
    rows = []
    for name, pattern in PRE_TOKENIZERS.items():
        tok = BPETokenizer.train(train, vocab_size=args.vocab_size, pattern=pattern)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_embd=32, n_head=2))
        ck = ckpt.save_model(tmp / f"ck-{name}", model, tok, {})
        (tmp / name).mkdir()
        report = gg.export_gguf(ck, tmp / name / "m.gguf", measure_text=lines)
        llm = llama_cpp.Llama(str(tmp / name / "m.gguf"), vocab_only=True, verbose=False)
        predicted = gg.as_llama_cpp_splits(tok, llm.metadata["tokenizer.ggml.pre"])
        same_lines = tokens = same_tokens = theirs_n = predicted_ok = 0
        for line in lines:
            ours, theirs = tok.encode(line), llm.tokenize(line.encode("utf-8"), add_bos=False, special=False)
            predicted_ok += theirs == predicted.encode(line)
            tokens += len(ours)
            theirs_n += len(theirs)
            if ours == theirs:
                same_lines += 1
                same_tokens += len(ours)
            else:
                same_tokens += len(gg._spans(tok, ours) & gg._spans(tok, theirs))
        rows.append([name, llm.metadata["tokenizer.ggml.pre"], f"{same_lines}/{len(lines)} ({100 * same_lines / len(lines):.2f} %)",
                     f"{100 * same_tokens / tokens:.3f} %", f"{tokens:,}", f"{theirs_n:,}",
                     f"{len(val) / tokens:.3f}", f"{predicted_ok}/{len(lines)}",
                     "yes" if any("splits this model's text differently" in n for n in report.notes) else "no"])
    table = md_table(["--pre-tokenizer", "tokenizer.ggml.pre", "lines with identical ids", "sifirdan tokens llama.cpp "
                      "also makes", "sifirdan tokens", "llama.cpp tokens", "chars/token (sifirdan)",
                      "export's prediction == llama.cpp", "export warns"], rows)
    notes = (f"Nutuk's standard split (dedup, last 10 % of characters = val), {len(lines)} non-empty validation lines; "
             f"tokenizers of {args.vocab_size} ids trained on the train split; llama.cpp through llama-cpp-python "
             f"{llama_cpp.__version__} (vocab only). Where the Turkish pre-tokenizer differs it is the digits: "
             "llama.cpp's 'ufakzeka' cuts them one by one, sifirdan's groups three.")
    print(table)
    print(notes)
    if not args.no_append:
        append_results("gguf: llama.cpp's tokenizer vs sifirdan's on Nutuk val (issue 22)", table, notes, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
