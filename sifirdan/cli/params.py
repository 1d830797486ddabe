"""``sifirdan params``: where a model's parameters are, counted by PyTorch, beside the guide's arithmetic.

The guide (§3-7) counts the parameters of its 128/4/4 model by hand and gets 935,680. PyTorch's count of the
same model is 938,228: the hand count leaves out the biases of the four attention Linears and of the LM head.
This command instantiates the model (on the ``meta`` device: shapes only, no memory, instant even for
``medium``), groups ``named_parameters()`` by component, and prints each group next to the guide's formula
and a line on every difference -- so the table in the guide can be checked, not just believed.
"""

from __future__ import annotations

import argparse
import json

# The guide's §10 table gives only a rough total per size; printed beside the truth for each preset.
GUIDE_SECTION10_CLAIM = {"nano": "~200K", "guide": "~936K", "small": "~10M", "medium": "~100M"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "params",
        help="count a model's parameters per component (PyTorch's count beside the guide's)",
        description="Instantiate a model preset and count its parameters per component (guide §3-7), "
        "next to the guide's hand-computed numbers, with a note on every difference.",
    )
    from sifirdan.cli import options

    options.add(p, "--preset", default="guide")
    # the same flags as pretrain's model flags; each given one overrides the preset
    for flag in ("--vocab-size", "--block-size", "--n-embd", "--n-head", "--n-layer"):
        options.add(p, flag, type=int, note="the preset's")
    options.add(p, "--bias", note="the preset's")
    options.add(p, "--tie-weights", note="the preset's")
    options.add(p, "--json")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ counting
def _instantiate(config):
    """Build the model with shapes only (meta device): counting 38M parameters should not allocate them."""
    import torch

    from sifirdan.model import GPT

    try:
        with torch.device("meta"):
            return GPT(config)
    except Exception:  # a torch without meta-device support for some init: fall back to real memory
        return GPT(config)


def count_components(model) -> dict[str, int]:
    """PyTorch's own counts, from ``named_parameters()`` grouped by component.

    Keys: token_embedding, position_embedding, attention_weights, attention_biases, ffn, layernorms (all
    blocks together), final_ln, lm_head_weight, lm_head_bias, other, total. A tied LM-head weight is one tensor
    (``named_parameters`` yields it once, as the token embedding), so it counts 0 under lm_head_weight.
    """
    c = dict.fromkeys(
        ["token_embedding", "position_embedding", "attention_weights", "attention_biases", "ffn", "layernorms",
         "final_ln", "lm_head_weight", "lm_head_bias", "other"], 0,
    )
    for name, p in model.named_parameters():  # yields each shared tensor once
        n = p.numel()
        if name.startswith("embeddings.token_embedding."):
            c["token_embedding"] += n
        elif name.startswith("embeddings.position_embedding."):
            c["position_embedding"] += n
        elif name.startswith("blocks."):
            part = name.split(".")[2]
            if part == "attention":
                c["attention_biases" if name.endswith(".bias") else "attention_weights"] += n
            elif part == "feed_forward":
                c["ffn"] += n
            elif part in ("ln1", "ln2"):
                c["layernorms"] += n
            else:
                c["other"] += n
        elif name.startswith("ln_f."):
            c["final_ln"] += n
        elif name == "lm_head.weight":
            c["lm_head_weight"] += n
        elif name == "lm_head.bias":
            c["lm_head_bias"] += n
        else:
            c["other"] += n
    c["total"] = sum(p.numel() for p in model.parameters())
    assert c["total"] == sum(v for k, v in c.items() if k != "total"), "a parameter was counted twice or not at all"
    return c


def guide_formula(config) -> dict[str, int]:
    """The guide's hand count (§3-7), generalised to any shape: attention = 4 * n_embd^2 (no biases),
    FFN with its two biases, 2 * n_embd per LayerNorm, LM head = vocab_size * n_embd (no bias)."""
    V, T, C, L = config.vocab_size, config.block_size, config.n_embd, config.n_layer
    attention = 4 * C * C
    ffn = 2 * C * 4 * C + 4 * C + C
    ln = 2 * 2 * C
    block = attention + ffn + ln
    g = {
        "token_embedding": V * C, "position_embedding": T * C, "embeddings": V * C + T * C,
        "attention": attention, "ffn": ffn, "layernorms": ln, "block": block, "blocks": block * L,
        "final_ln": 2 * C, "lm_head": V * C,
    }
    g["total"] = g["embeddings"] + g["blocks"] + g["final_ln"] + g["lm_head"]
    return g


def report(config, preset: str | None = None) -> dict:
    """Rows (component, PyTorch's count, the guide's count), the totals and a note per difference."""
    model = _instantiate(config)
    c = count_components(model)
    g = guide_formula(config)
    L = config.n_layer
    per = lambda k: c[k] // L  # noqa: E731 -- every block has the same shape
    att_block = per("attention_weights") + per("attention_biases")
    block_true = att_block + per("ffn") + per("layernorms")
    lm_head = c["lm_head_weight"] + c["lm_head_bias"]
    rows = [
        ("token embedding", c["token_embedding"], g["token_embedding"]),
        ("position embedding", c["position_embedding"], g["position_embedding"]),
        ("embeddings", c["token_embedding"] + c["position_embedding"], g["embeddings"]),
        ("attention / block: q,k,v,o weights", per("attention_weights"), g["attention"]),
        ("attention / block: q,k,v,o biases", per("attention_biases"), 0),
        ("attention / block", att_block, g["attention"]),
        ("FFN / block", per("ffn"), g["ffn"]),
        ("LayerNorms / block (ln1 + ln2)", per("layernorms"), g["layernorms"]),
        ("block", block_true, g["block"]),
        (f"all blocks (x{L})", block_true * L, g["blocks"]),
        ("final LayerNorm", c["final_ln"], g["final_ln"]),
        ("LM head weight" + (" (tied: shared with token embedding)" if config.tie_weights else ""),
         c["lm_head_weight"], g["lm_head"]),
        ("LM head bias", c["lm_head_bias"], 0),
        ("LM head", lm_head, g["lm_head"]),
        ("total", c["total"], g["total"]),
    ]
    notes = _notes(config, c, g, preset)
    return {
        "preset": preset,
        "config": config.to_dict(),
        "rows": [{"component": n, "pytorch": t, "guide": gd, "difference": t - gd} for n, t, gd in rows],
        "total": c["total"],
        "guide_total": g["total"],
        "guide_section10": GUIDE_SECTION10_CLAIM.get(preset or ""),
        "counts": c,
        "notes": notes,
    }


def _notes(config, c: dict, g: dict, preset: str | None) -> list[str]:
    """A note per place where PyTorch's count and the guide's formula (or its §10 table) differ."""
    L, C, V = config.n_layer, config.n_embd, config.vocab_size
    notes = []
    if c["attention_biases"]:
        notes.append(
            f"attention biases: the guide counts W_Q, W_K, W_V, W_O as {C}x{C} matrices only, but nn.Linear adds "
            f"a bias of {C} to each: 4 x {L} blocks x {C} = {c['attention_biases']:,} more parameters"
        )
    if c["lm_head_bias"]:
        notes.append(f"LM-head bias: nn.Linear(n_embd, vocab_size) has a bias of vocab_size = {V:,} the guide leaves out")
    if not config.bias:
        notes.append("bias=False: no Linear or LayerNorm biases, so the FFN and LayerNorms are smaller than the guide's formula")
    if config.tie_weights:
        notes.append(f"tie_weights: the LM head reuses the token-embedding matrix, saving {V * C:,} parameters")
    if c["other"]:
        notes.append(f"{c['other']:,} parameters in components this table does not know")
    diff = c["total"] - g["total"]
    notes.append(
        f"total: PyTorch counts {c['total']:,}; the guide's formula gives {g['total']:,} "
        f"({'+' if diff >= 0 else ''}{diff:,})"
    )
    claim = GUIDE_SECTION10_CLAIM.get(preset or "")
    if claim == "~936K":
        notes.append("the guide's §10 table says ~936K for this size: its hand count, without the biases above")
    elif claim:
        stated = float(claim.strip("~KM")) * (1e6 if claim.endswith("M") else 1e3)
        ratio = stated / c["total"]
        notes.append(
            f"the guide's §10 table says {claim} for the {preset} size; PyTorch counts {_human(c['total'])} at "
            f"vocab_size {V:,} (the table is {ratio:.1f}x {'too high' if ratio > 1 else 'too low'}; "
            f"it does not follow from the guide's own formula)"
        )
    return notes


def _human(n: int) -> str:
    for unit, div in (("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_table(rep: dict) -> str:
    cfg = rep["config"]
    head = (
        f"Model: preset {rep['preset'] or '-'} | vocab_size {cfg['vocab_size']}, block_size {cfg['block_size']}, "
        f"n_embd {cfg['n_embd']}, n_head {cfg['n_head']}, n_layer {cfg['n_layer']}, bias {cfg['bias']}, "
        f"tie_weights {cfg['tie_weights']}"
    )
    w = max(len(r["component"]) for r in rep["rows"])
    lines = [head, "", f"{'component':<{w}}  {'PyTorch':>12}  {'guide':>12}  {'difference':>10}", "-" * (w + 40)]
    for r in rep["rows"]:
        d = r["difference"]
        if r["component"] == "total":
            lines.append("-" * (w + 40))
        lines.append(f"{r['component']:<{w}}  {r['pytorch']:>12,}  {r['guide']:>12,}  {(f'{d:+,}' if d else ''):>10}")
    lines.append("")
    lines += [f"* {n}" for n in rep["notes"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sifirdan.model import GPTConfig

    overrides = dict(
        vocab_size=args.vocab_size, block_size=args.block_size, n_embd=args.n_embd, n_head=args.n_head,
        n_layer=args.n_layer,
    )
    for name in ("bias", "tie_weights"):  # None: the preset's
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    config = GPTConfig.from_preset(args.preset, **overrides)  # raises UserError naming the presets
    changed = any(v is not None for k, v in overrides.items() if k not in ("bias", "tie_weights"))
    rep = report(config, preset=args.preset if not changed else None)
    if changed:
        rep["preset"] = f"{args.preset} (modified)"
    if args.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(format_table(rep))
    return 0
