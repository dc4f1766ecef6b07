#!/usr/bin/env python3
"""Builds tests/data/crowd_text/ (the crowd-labelled text set) and its item features.

The files are not committed (the set carries no licence; tests/data/crowd_text/README.md).
Recompute the features from texts.csv (rewrites gold.csv, keeps its truth column):

  ~/.cache/labelgate/bench-venv/bin/python benches/crowd_text_features.py

Rebuild every file from the upstream crowd file (see tests/data/crowd_text/README.md for the
repository, commit and path it comes from):

  ~/.cache/labelgate/bench-venv/bin/python benches/crowd_text_features.py --source crowd_answers.csv

Features: scikit-learn TF-IDF on word 1- and 2-grams (lower-cased, sublinear tf, terms in at
least 2 reviews), TruncatedSVD to 64 dimensions (randomized, random_state=0), each row then
scaled to unit L2 norm (latent semantic analysis), rounded to 4 decimals. Deterministic: no
randomness other than the fixed SVD seed. Needs scikit-learn, numpy and pandas (the bench venv).
"""
import argparse
import csv
import os

import numpy as np
import pandas as pd
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "crowd_text")
DIM = 64
SEED = 0
CLASSES = {0: "other", 1: "book"}


def item_id(q):
    return f"r{int(q):04d}"


def worker_id(w):
    return f"w{int(w):03d}"


def from_source(path, out):
    """Upstream columns: question, worker, crowd_label, gold_label, text (one row per worker label)."""
    src = pd.read_csv(path)
    src = src.sort_values(["question", "worker"], kind="stable")
    answers = pd.DataFrame({"item_id": src.question.map(item_id), "worker_id": src.worker.map(worker_id),
                            "label": src.crowd_label.map(CLASSES)})
    items = src.drop_duplicates("question")
    if (src.groupby("question").gold_label.nunique() != 1).any() or (src.groupby("question").text.nunique() != 1).any():
        raise SystemExit("an item has more than one gold label or text")
    texts = pd.DataFrame({"item_id": items.question.map(item_id), "text": items.text})
    truth = items.gold_label.map(CLASSES).to_numpy()
    answers.to_csv(os.path.join(out, "answers.csv"), index=False)
    texts.to_csv(os.path.join(out, "texts.csv"), index=False, quoting=csv.QUOTE_NONNUMERIC)
    return texts, truth


def features(texts):
    tfidf = TfidfVectorizer(ngram_range=(1, 2), lowercase=True, sublinear_tf=True, min_df=2, dtype=np.float64)
    x = tfidf.fit_transform(texts)
    z = TruncatedSVD(n_components=DIM, algorithm="randomized", n_iter=10, random_state=SEED).fit_transform(x)
    return np.round(normalize(z), 4) + 0.0  # + 0.0 turns -0.0 into 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", help="upstream crowd_answers.csv: rebuild answers.csv and texts.csv too")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.source:
        texts, truth = from_source(args.source, args.out)
    else:
        texts = pd.read_csv(os.path.join(args.out, "texts.csv"), dtype=str, keep_default_na=False)
        gold = pd.read_csv(os.path.join(args.out, "gold.csv"), dtype=str, keep_default_na=False)
        if list(gold.item_id) != list(texts.item_id):
            raise SystemExit("gold.csv and texts.csv list different items")
        truth = gold.truth.to_numpy()
    z = features(texts.text.tolist())
    gold = pd.DataFrame(z, columns=[f"f{k + 1}" for k in range(DIM)])
    gold.insert(0, "item_id", texts.item_id.to_numpy())
    gold["truth"] = truth
    gold.to_csv(os.path.join(args.out, "gold.csv"), index=False, float_format="%.4f")
    print(f"{len(gold)} items, {DIM} features -> {os.path.join(args.out, 'gold.csv')}")


if __name__ == "__main__":
    main()
