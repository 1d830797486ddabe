"""Why the held-out answers score what they score (issue 21): two measurements that need no training.

    python bench/answer_anatomy.py --copy-probe CKPT [CKPT ...]
    python bench/answer_anatomy.py --f1 ANSWERS.jsonl [...] --train TRAIN.jsonl

--copy-probe: can the model copy from its context (what "induction heads" do)? 20 spans of 60 tokens from the
end of Nutuk (seed 0), each fed twice in a row; the mean loss (nats/token) on the first pass and on the repeat.
A model that copies predicts the repeat almost exactly (loss near 0); one that cannot scores both alike.
Answering a question by restating its subject, as the reference answers do, needs that ability.

--f1: token F1 of the model's answers (an `eval-instruct --answers` file) beside texts that need no model: the
question itself ("echo"), the question followed by the model's answer, and the best constant answer of the
training pairs (``chat/baselines.py``) cut to the model's mean answer length and whole. It separates what
the answers lack: length (the constant answer cut to the model's length scores what the model scores) and the
question's words (echoing the question alone scores near copying the nearest training answer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, md_table  # noqa: E402

SPAN, N_SPANS = 60, 20


def copy_probe(ckpt: str) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    from sifirdan.checkpoint import load_model
    from sifirdan.data.catalog import materialize

    torch.set_num_threads(1)
    model, tok = load_model(ckpt)
    model.eval()
    ids = tok.encode(materialize("nutuk").read_text(encoding="utf-8")[-200_000:])
    g = torch.Generator().manual_seed(0)
    first = repeat = 0.0
    with torch.no_grad():
        for _ in range(N_SPANS):
            s = int(torch.randint(0, len(ids) - SPAN, (1,), generator=g))
            seq = ids[s : s + SPAN] * 2
            logits, _ = model(torch.tensor([seq[:-1]]))
            loss = F.cross_entropy(logits[0], torch.tensor(seq[1:]), reduction="none")
            first += loss[: SPAN - 1].mean().item() / N_SPANS  # targets 1..59: the span's own text
            repeat += loss[SPAN:].mean().item() / N_SPANS  # targets 61..119: the repeat, its first token excluded
    return first, repeat


def f1_anatomy(answers_path: str, train_path: str) -> dict:
    from sifirdan.chat.baselines import best_constant_answer
    from sifirdan.chat.evaluate import token_f1

    recs = [json.loads(x) for x in Path(answers_path).read_text(encoding="utf-8").splitlines() if x.strip()]
    train = [json.loads(x) for x in Path(train_path).read_text(encoding="utf-8").splitlines() if x.strip()]
    const = best_constant_answer([r["output"] for r in train])
    mean = lambda texts: sum(token_f1(t, r["reference"]) for t, r in zip(texts, recs)) / len(recs)  # noqa: E731
    chars = round(sum(len(r["answer"]) for r in recs) / len(recs))
    return {"answers": answers_path, "n": len(recs), "model_chars": chars,
            "ref_chars": round(sum(len(r["reference"]) for r in recs) / len(recs)),
            "model": mean([r["answer"] for r in recs]),
            "echo": mean([r["instruction"] for r in recs]),
            "echo_model": mean([r["instruction"] + " " + r["answer"] for r in recs]),
            "const_cut": mean([const[:chars]] * len(recs)), "const": mean([const] * len(recs)), "const_chars": len(const)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copy-probe", nargs="+", metavar="CKPT")
    p.add_argument("--f1", nargs="+", metavar="ANSWERS")
    p.add_argument("--train", metavar="TRAIN", help="the training pairs of --f1's answers (for the constant answer)")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    if args.copy_probe:
        rows = []
        for c in args.copy_probe:
            first, repeat = copy_probe(c)
            print(f"{c}: first pass {first:.3f}, repeat {repeat:.3f} nats/token", flush=True)
            rows.append([c, f"{first:.3f}", f"{repeat:.3f}", f"{first - repeat:.3f}"])
        table = md_table(["checkpoint", "first pass nats/token", "repeat nats/token", "gain from the repeat"], rows)
        title = "answer anatomy: can the model copy from its context? (issue 21)"
    elif args.f1:
        if not args.train:
            p.error("--f1 needs --train (the training pairs, for the constant answer)")
        rows = []
        for a in args.f1:
            r = f1_anatomy(a, args.train)
            print(json.dumps(r), flush=True)
            rows.append([a, r["n"], f"{r['model_chars']} / {r['ref_chars']}", f"{r['model']:.3f}", f"{r['echo']:.3f}",
                         f"{r['echo_model']:.3f}", f"{r['const_cut']:.3f}", f"{r['const']:.3f} ({r['const_chars']} chars)"])
        table = md_table(["answers", "n", "chars: model / reference", "F1 model", "F1 the question (echo)",
                          "F1 question + model", "F1 constant, cut to the model's length", "F1 constant"], rows)
        title = "answer anatomy: what the held-out answers lack (issue 21)"
    else:
        p.error("give --copy-probe CKPT or --f1 ANSWERS --train TRAIN")
    print(table)
    if not args.no_append:
        append_results(title, table)


if __name__ == "__main__":
    main()
