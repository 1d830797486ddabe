"""``sifirdan export hf`` and ``sifirdan import hf``: to and from Hugging Face transformers (a GPT-2 directory).

    sifirdan export hf --model runs/nutuk --out hf/nutuk      # AutoModelForCausalLM.from_pretrained("hf/nutuk")
    sifirdan export gguf --model runs/nutuk --out nutuk.gguf  # llama.cpp / Ollama (a Modelfile beside it)
    sifirdan import hf --from hf/some-gpt2 --out runs/gpt2   # then generate / chat / eval / finetune --model runs/gpt2

Both work offline (nothing is downloaded) and never load a pickle; see ``sifirdan/interop/``.
"""

from __future__ import annotations

import json
import re


def register(subparsers) -> None:
    from sifirdan.cli import options

    exp = subparsers.add_parser("export", help="export a model for other tools (hf: a transformers GPT-2 directory; gguf: llama.cpp / Ollama)")
    exp_sub = exp.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    hf = exp_sub.add_parser(
        "hf", help="a directory transformers loads as GPT2LMHeadModel + its tokenizer",
        description="Write a checkpoint as a Hugging Face transformers GPT-2 directory (config.json, model.safetensors, "
        "tokenizer.json, tokenizer_config.json with the chat template of a fine-tuned model, generation_config.json) "
        "that AutoModelForCausalLM and AutoTokenizer load offline with no custom code. An LM-head bias (GPT-2's head "
        "has none) is folded exactly into an untied head and ln_f's bias; a model GPT-2 cannot compute is refused.")
    options.add(hf, "--model", required=True)
    hf.add_argument("--out", required=True, metavar="DIR", help="the export directory (new, empty, or an earlier export)")
    hf.set_defaults(func=cmd_export)
    gg = exp_sub.add_parser(
        "gguf", help="one GGUF file for llama.cpp, Ollama and LM Studio, and an Ollama Modelfile beside it",
        description="Write a checkpoint as one GGUF file (llama.cpp's gpt2 architecture, the tokenizer with its merges "
        "and special tokens, the chat template of a fine-tuned model) that llama.cpp, llama-cpp-python, Ollama and LM "
        "Studio load, and an Ollama Modelfile (FROM, TEMPLATE, PARAMETER stop) in the same folder. Reports, measured, "
        "how far llama.cpp's own pre-tokenizer and GELU move ids and logits.")
    options.add(gg, "--model", required=True)
    gg.add_argument("--out", required=True, metavar="FILE.gguf", help="the GGUF file to write (new, or an earlier "
                    "export); the Modelfile goes beside it")
    # --outtype, llama.cpp's convert_hf_to_gguf.py name: --dtype is sifirdan's compute precision everywhere else
    gg.add_argument("--outtype", choices=("f32", "f16", "q8_0"), default="f32", help="storage of the weight matrices "
                    "in the file: f32 (exact), f16 (half the size) or q8_0 (8-bit blocks, about a quarter); norms and "
                    "biases stay f32 (default: f32)")
    gg.set_defaults(func=cmd_export_gguf)

    imp = subparsers.add_parser("import", help="import a model from other tools (hf: a local transformers GPT-2)")
    imp_sub = imp.add_subparsers(dest="import_format", metavar="FORMAT", required=True)
    hf = imp_sub.add_parser(
        "hf", help="a local transformers GPT-2 directory with a byte-level BPE tokenizer.json",
        description="Turn a local Hugging Face GPT-2 directory (config.json, model.safetensors, tokenizer.json) into a "
        "sifirdan checkpoint that generate, chat, eval and finetune accept. Only safetensors are read; options "
        "sifirdan cannot compute exactly (gelu_new, scale_attn_by_inverse_layer_idx, ...) are refused.")
    hf.add_argument("--from", dest="source", required=True, metavar="DIR", help="the transformers model directory")
    hf.add_argument("--out", required=True, metavar="DIR", help="the checkpoint directory to write (new or empty)")
    hf.set_defaults(func=cmd_import)


def cmd_export(args) -> int:
    from sifirdan.interop import export_hf

    report = export_hf(args.model, args.out)
    for note in report.notes:
        print(f"note: {note}")
    c = report.config
    # what was written: a folded LM-head bias makes a tied model's export untied
    tied = json.loads((report.path / "config.json").read_text(encoding="utf-8"))["tie_word_embeddings"]
    print(f"exported {args.model} -> {report.path} (GPT2LMHeadModel: {c.n_layer} layers, n_embd {c.n_embd}, "
          f"{c.n_head} heads, context {c.block_size}, vocab {c.vocab_size}, "
          f"{'tied' if tied else 'untied'} embeddings)")
    print(f"load it with: AutoModelForCausalLM.from_pretrained({str(report.path)!r}) and "
          f"AutoTokenizer.from_pretrained({str(report.path)!r})")
    return 0


def cmd_export_gguf(args) -> int:
    from sifirdan.interop.gguf import export_gguf

    report = export_gguf(args.model, args.out, args.outtype)
    for note in report.notes:
        print(f"note: {note}")
    size = report.path.stat().st_size
    print(f"exported {args.model} -> {report.path} ({report.architecture}, {args.outtype}, {size / 2**20:.1f} MiB) "
          f"and {report.modelfile}")
    name = re.sub(r"[^a-z0-9._-]+", "-", report.path.stem.lower()).strip("-.") or "sifirdan"  # Ollama's name rules
    print(f"run it: llama-cli -m {report.path}   or, with Ollama: ollama create {name} -f {report.modelfile} && "
          f"ollama run {name}")
    return 0


def cmd_import(args) -> int:
    from sifirdan.interop import import_hf

    report = import_hf(args.source, args.out)
    for note in report.notes:
        print(f"note: {note}")
    c = report.config
    print(f"imported {args.source} -> {report.path} ({c.n_layer} layers, n_embd {c.n_embd}, {c.n_head} heads, "
          f"context {c.block_size}, vocab {c.vocab_size}); try: sifirdan generate --model {report.path}")
    return 0
