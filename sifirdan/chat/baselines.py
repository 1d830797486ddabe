"""Two answers that need no model, to read a model's held-out F1 against (``sifirdan demo``, bench/finetune.py).

* ``nearest_answers``: for each held-out question, the answer of the most similar training question (TF-IDF
  over character 3-5-grams, cosine similarity): what copying from the training set scores.
* ``best_constant_answer``: the one training answer with the highest mean F1 against all training answers,
  given to every held-out question: what a fixed, question-blind text scores.

A model that scores below the constant answer is not answering the questions at all; one above copying is
doing better than looking its training set up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from sifirdan.chat.evaluate import normalize_tr


def _grams(text: str) -> Counter:
    t = f" {text.lower()} "
    return Counter(t[i : i + n] for n in (3, 4, 5) for i in range(len(t) - n + 1))


def nearest_answers(train_questions: Sequence[str], train_answers: Sequence[str], questions: Sequence[str]) -> list[str]:
    """The training answer whose question is most similar (TF-IDF on char 3-5-grams) to each question."""
    if not train_questions:
        raise ValueError("nearest_answers needs at least one training pair")
    docs = [_grams(q) for q in train_questions]
    df = Counter(g for d in docs for g in d)
    n = len(docs)
    idf = {g: math.log((1 + n) / (1 + c)) + 1 for g, c in df.items()}
    unseen = math.log(1 + n) + 1

    def vec(counts: Counter) -> dict[str, float]:
        v = {g: c * idf.get(g, unseen) for g, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {g: x / norm for g, x in v.items()}

    train_vecs = [vec(d) for d in docs]
    out = []
    for q in questions:
        qv = vec(_grams(q))
        scores = [sum(w * tv.get(g, 0.0) for g, w in qv.items()) for tv in train_vecs]
        out.append(train_answers[max(range(n), key=scores.__getitem__)])
    return out


def best_constant_answer(train_answers: Sequence[str], candidates: int = 300) -> str:
    """The training answer (of the first ``candidates``) with the highest mean token F1 against every training
    answer. Bags of normalised words are built once, so this is O(candidates x answers) Counter intersections."""
    if not train_answers:
        raise ValueError("best_constant_answer needs at least one training answer")
    bags = [Counter(normalize_tr(a).split()) for a in train_answers]
    sizes = [sum(b.values()) for b in bags]

    def mean_f1(i: int) -> float:
        total = 0.0
        for bag, size in zip(bags, sizes):
            same = sum((bags[i] & bag).values())
            if same and sizes[i]:
                p, r = same / sizes[i], same / size
                total += 2 * p * r / (p + r)
        return total / len(bags)

    best = max(range(min(candidates, len(train_answers))), key=mean_f1)
    return train_answers[best]
