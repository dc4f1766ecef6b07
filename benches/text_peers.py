#!/usr/bin/env python3
"""cleanlab beside labelgate on text: 5-fold cross-validated logistic regression on the same
sentence embeddings (`labelgate embed --output`) and the same noisy labels (`labelgate eval
--export-labels`); cleanlab's `find_label_issues` flags, its self-confidence ranks.
Prints one JSON object."""
import argparse, json, time

import numpy as np


def label_metrics(scores, noisy):
    """Precision among the top-k (k = the number of wrong labels) and average precision."""
    order = np.argsort(-scores, kind="stable")
    k = int(noisy.sum())
    hits = noisy[order]
    lp = hits[:k].mean() if k else 0.0
    cum = np.cumsum(hits)
    ap = (cum[hits] / (np.flatnonzero(hits) + 1)).mean() if k else 0.0
    return float(lp), float(ap)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--embeddings", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    table = np.loadtxt(a.labels, delimiter=",", skiprows=1, dtype=np.int64)
    true, given = table[:, 1], table[:, 2]
    x = np.array([json.loads(l)["embedding"] for l in open(a.embeddings)], dtype=np.float32)[: len(given)]
    started = time.perf_counter()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=a.seed)
    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, given, cv=folds, method="predict_proba")
    issues = find_label_issues(given, probs)
    quality = get_label_quality_scores(given, probs)
    noisy = true != given
    lp, ap = label_metrics(-quality, noisy)
    tp = int((issues & noisy).sum())
    precision = tp / max(int(issues.sum()), 1)
    recall = tp / max(int(noisy.sum()), 1)
    print(json.dumps({"peer": "cleanlab-logreg", "samples": len(given), "label_precision": lp, "average_precision": ap,
                      "precision_auto": precision, "recall_auto": recall, "f1_auto": 2 * precision * recall / max(precision + recall, 1e-12),
                      "flagged_auto": int(issues.sum()), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
