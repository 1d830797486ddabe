"""``sifirdan attention``: draw a model's attention weights as heat maps (guide §4's matrix, for real).

One panel per head: row i is the query token, column j the key token, the colour how much token i attends
to token j (each row sums to 1). The upper triangle is blank: causal masking forbids looking ahead.
The weights come from the explicit attention path (scores -> mask -> softmax); a model built with the fused
``sdpa`` path is switched to the explicit one for this single pass (same weights, same numbers).
"""

from __future__ import annotations

import io

from sifirdan.errors import UserError

MAX_TOKENS = 48  # more labels than this do not fit a readable plot
# the text drawn without --text: one sentence of Nutuk's vocabulary, about 15-25 tokens with a Nutuk tokenizer --
# enough rows to see heads look back at a word's start, at punctuation and at the sentence's first token
DEFAULT_TEXT = "Türk milleti, istiklâlini kurtarmak için Ankara'da toplanan Büyük Millet Meclisi'ne güvendi."
FONT = "DejaVu Sans"  # ships with matplotlib and has every Turkish letter plus the symbols used below


def register(subparsers) -> None:
    from sifirdan.cli import options

    p = subparsers.add_parser(
        "attention",
        help="plot attention weights as heat maps (PNG)",
        description=(
            f"Run a text through the model and draw each head's attention weights with the tokens as axis "
            f"labels (spaces shown as ·, newlines as ⏎). Texts longer than {MAX_TOKENS} tokens are cut to "
            f"their first {MAX_TOKENS}."
        ),
    )
    options.add(p, "--model", required=True)
    options.add(p, "--text", default=DEFAULT_TEXT)
    p.add_argument("--out", default="attention.png", metavar="PNG", help="the PNG image to write (default: attention.png)")
    p.add_argument("--layer", default="0", metavar="L", help="which layer, 0-based; negative counts from the end (default: 0)")
    p.add_argument("--head", default=None, metavar="H", help="one head, 0-based (default: all heads of the layer)")
    options.add(p, "--device", default="auto")
    p.set_defaults(func=cmd_attention)


def token_label(tokenizer, token_id: int, max_chars: int = 14) -> str:
    """A token as an axis label: spaces as ·, newlines as ⏎, tabs as →, bytes of a split character as \\xNN."""
    text = tokenizer.decode_bytes([token_id]).decode("utf-8", errors="backslashreplace")
    text = text.replace(" ", "·").replace("\n", "⏎").replace("\t", "→").replace("\r", "␍")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def attention_weights(model, ids: list[int], layer: int):
    """The attention weights of one layer for one text: a CPU tensor (n_head, T, T)."""
    import torch

    attn = model.blocks[layer].attention
    before = attn.record_attention
    attn.record_attention = True  # forces the explicit path for this pass, which keeps its softmax output
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device))
        weights = attn.last_attention[0].float().cpu()
    finally:
        attn.record_attention = before
        attn.last_attention = None
    return weights


def plot_attention(weights, labels: list[str], heads: list[int], title: str) -> bytes:
    """Heat maps (one per head) -> PNG bytes. Headless: a bare Agg Figure, no pyplot global state."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    T = len(labels)
    n = len(heads)
    cols = min(n, 4 if T <= 16 else 2)
    rows = (n + cols - 1) // cols
    panel = max(3.0, 0.2 * T + 1.5)  # inches: about 0.2" per token label
    with matplotlib.rc_context({"font.family": FONT}):
        fig = Figure(figsize=(cols * panel + 1.2, rows * panel + 0.8), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")  # the masked (future) triangle
        future = np.triu(np.ones((T, T), dtype=bool), k=1)
        fontsize = 9 if T <= 24 else 7
        image = None
        for ax, h in zip(axes.flat, heads):
            w = np.ma.masked_array(weights[h].numpy(), mask=future)
            image = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"head {h}", fontsize=fontsize + 2)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=fontsize)
            ax.set_yticks(range(T), labels, fontsize=fontsize)
            ax.set_xlabel("key (attended to)", fontsize=fontsize)
            ax.set_ylabel("query (attending)", fontsize=fontsize)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
        fig.suptitle(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _int(value, name: str) -> int:
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise UserError(f"--{name} must be an integer, got {value!r}") from None


def cmd_attention(args) -> int:
    from sifirdan.checkpoint import load_model
    from sifirdan.fileio import atomic_write_bytes
    from sifirdan.train.runtime import resolve_device

    layer = _int(args.layer, "layer")
    head = None if args.head is None else _int(args.head, "head")
    if not args.text:
        raise UserError("--text is empty; give the text whose attention you want to see")
    model, tokenizer = load_model(args.model, resolve_device(args.device))
    cfg = model.config
    if not -cfg.n_layer <= layer < cfg.n_layer:
        raise UserError(f"--layer {layer} does not exist: the model has {cfg.n_layer} layers (0..{cfg.n_layer - 1})")
    layer %= cfg.n_layer
    if head is not None and not 0 <= head < cfg.n_head:
        raise UserError(f"--head {head} does not exist: each layer has {cfg.n_head} heads (0..{cfg.n_head - 1})")

    ids = tokenizer.encode(args.text, allowed_special=())  # text that looks like <RESP> is ordinary text
    limit = min(MAX_TOKENS, cfg.block_size)
    note = ""
    if len(ids) > limit:
        note = f" (first {limit} of {len(ids)} tokens)"
        print(f"the text has {len(ids)} tokens; showing the first {limit}")
        ids = ids[:limit]
    weights = attention_weights(model, ids, layer)
    heads = list(range(cfg.n_head)) if head is None else [head]
    png = plot_attention(weights, [token_label(tokenizer, i) for i in ids], heads, f"layer {layer} attention{note}")
    atomic_write_bytes(args.out, png)
    print(f"wrote {args.out}: layer {layer}, {len(heads)} head(s), {len(ids)} tokens")
    return 0
