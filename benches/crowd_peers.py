#!/usr/bin/env python3
"""The two crowd-model peers of labelgate's vendor-accuracy estimates, on the same labels.

For each crowd set every worker's number of labels and true accuracy (share of its labels equal
to the gold class) are computed, then two peers estimate each worker's accuracy:

- `dawid_skene`: one-coin Dawid-Skene fitted by EM on the votes only (no features). Each worker
  w has one accuracy a_w; a wrong label is uniform over the other K-1 classes; the class prior is
  estimated; the posterior starts from the (soft) majority vote and EM runs to convergence. The
  estimate of a worker's accuracy is the expected share of its labels equal to the true class:
  sum over its labels of posterior(label is the true class), divided by its count.
- `crowdlab`: cleanlab's CROWDLAB, `cleanlab.multiannotator.get_label_quality_multiannotator`
  on the items x workers label matrix (NaN where a worker did not label the item) and 5-fold
  out-of-fold predicted probabilities (`cross_val_predict(..., method="predict_proba")`,
  StratifiedKFold with shuffle and a fixed seed) of a LogisticRegression(max_iter=2000) on
  standardised item features, trained on each item's majority-vote label as cleanlab's docs do.
  `annotator_quality` ranks the workers (Spearman); `agreement_with_consensus` is the accuracy
  estimate (MAE).

Sets (`--sets`):
- `music-genre`: ../shared/data/music_genre_crowd (mturk_answers.csv, music_genre_gold.csv), the
  same songs, workers and labels that labelgate's `src/data/music_genre.rs` reads.
- `music-genre-noise`: the same labels, the 124 features replaced by i.i.d. N(0, 1) noise
  (seed 0): what the feature-based peer is worth when the features say nothing.
- `crowd-text`: tests/data/crowd_text (answers.csv, gold.csv), see its README.md.

Prints one JSON object per set and peer:
  {"set", "peer", "workers", "spearman", "mae"}
where `workers` counts the workers with at least --min-labels labels, over which Spearman's rho
(estimate vs true accuracy) and the mean absolute error of the accuracy estimate are taken.

  ~/.cache/labelgate/bench-venv/bin/python benches/crowd_peers.py \
      [--data-dir ../shared/data] [--sets music-genre music-genre-noise crowd-text] \
      [--min-labels 20] [--per-worker per_worker.csv] [--seed 0]

CROWDLAB depends on the 5-fold split: on music-genre its Spearman moves between about 0.86 and
0.92 (MAE 0.04 to 0.055) over seeds 0-3; Dawid-Skene uses no randomness.
"""
import argparse
import csv
import json
import os
import sys
import warnings

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0


class CrowdSet:
    """items (ids), X (items x D features), gold (item class index), answers (item idx, worker, class idx)."""

    def __init__(self, items, x, gold, answers, classes):
        self.items, self.x, self.gold, self.classes = items, x, np.asarray(gold), classes
        self.workers = sorted({w for _, w, _ in answers})
        widx = {w: j for j, w in enumerate(self.workers)}
        self.a_item = np.array([i for i, _, _ in answers])
        self.a_worker = np.array([widx[w] for _, w, _ in answers])
        self.a_label = np.array([l for _, _, l in answers])


def read_gold(path):
    """id, f1..fD, class: returns ids, features, class names (as in music_genre.rs)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    ids = [r[0] for r in rows[1:]]
    x = np.array([r[1:-1] for r in rows[1:]], dtype=np.float64)
    truth = [r[-1] for r in rows[1:]]
    return ids, x, truth


def load_music(data_dir, noise=False):
    ids, x, truth = read_gold(os.path.join(data_dir, "music_genre_crowd", "music_genre_gold.csv"))
    classes = sorted(set(truth))
    cls = {c: k for k, c in enumerate(classes)}
    feat = dict(zip(ids, x))
    genre = dict(zip(ids, truth))
    items, index, answers = [], {}, []
    with open(os.path.join(data_dir, "music_genre_crowd", "mturk_answers.csv"), newline="") as f:
        for row in csv.DictReader(f):
            song, worker, answer = row["Input.song"], row["WorkerID"], row["Answer.pred_label"]
            if song not in feat:
                raise SystemExit(f"song {song} has no features")
            if song not in index:
                index[song] = len(items)
                items.append(song)
            answers.append((index[song], worker, cls[answer]))
    xs = np.stack([feat[s] for s in items])
    if noise:
        xs = np.random.default_rng(SEED).standard_normal(xs.shape)
    gold = [cls[genre[s]] for s in items]
    return CrowdSet(items, xs, gold, answers, classes)


def load_crowd_text(path):
    ids, x, truth = read_gold(os.path.join(path, "gold.csv"))
    classes = sorted(set(truth))
    with open(os.path.join(path, "answers.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted(set(classes) | {r["label"] for r in rows})
    cls = {c: k for k, c in enumerate(classes)}
    pos = {i: n for n, i in enumerate(ids)}
    used = sorted({pos[r["item_id"]] for r in rows})
    remap = {p: n for n, p in enumerate(used)}
    answers = [(remap[pos[r["item_id"]]], r["worker_id"], cls[r["label"]]) for r in rows]
    return CrowdSet([ids[p] for p in used], x[used], [cls[truth[p]] for p in used], answers, classes)


def majority_vote(s, k):
    votes = np.zeros((len(s.items), k))
    np.add.at(votes, (s.a_item, s.a_label), 1.0)
    return votes


def dawid_skene_one_coin(s, tol=1e-10, max_iter=10000):
    k = len(s.classes)
    votes = majority_vote(s, k)
    post = votes / votes.sum(1, keepdims=True)  # soft majority vote
    nw = np.bincount(s.a_worker, minlength=len(s.workers)).astype(float)
    eps = 1e-9
    for it in range(max_iter):
        acc = np.bincount(s.a_worker, weights=post[s.a_item, s.a_label], minlength=len(s.workers)) / nw
        acc = np.clip(acc, eps, 1 - eps)
        prior = np.clip(post.mean(0), eps, None)
        log_right, log_wrong = np.log(acc), np.log((1 - acc) / (k - 1))
        # log-likelihood of each item's labels under each true class: every label adds log_wrong
        # for every class, and (log_right - log_wrong) for the class it names.
        logp = np.tile(np.log(prior), (len(s.items), 1))
        np.add.at(logp, s.a_item, log_wrong[s.a_worker][:, None])
        np.add.at(logp, (s.a_item, s.a_label), log_right[s.a_worker] - log_wrong[s.a_worker])
        logp -= logp.max(1, keepdims=True)
        new = np.exp(logp)
        new /= new.sum(1, keepdims=True)
        delta = np.abs(new - post).max()
        post = new
        if delta < tol:
            break
    est = np.bincount(s.a_worker, weights=post[s.a_item, s.a_label], minlength=len(s.workers)) / nw
    return est, it + 1


def crowdlab(s):
    from cleanlab.multiannotator import get_label_quality_multiannotator, get_majority_vote_label
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mat = np.full((len(s.items), len(s.workers)), np.nan)
    mat[s.a_item, s.a_worker] = s.a_label
    labels = pd.DataFrame(mat, columns=s.workers)
    consensus = get_majority_vote_label(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred_probs = cross_val_predict(model, s.x, consensus, cv=folds, method="predict_proba")
        res = get_label_quality_multiannotator(labels, pred_probs, verbose=False)
    stats = res["annotator_stats"].reindex(s.workers)
    return stats["annotator_quality"].to_numpy(), stats["agreement_with_consensus"].to_numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--crowd-text-dir", default=os.path.join(REPO, "tests", "data", "crowd_text"))
    ap.add_argument("--sets", nargs="+", default=["music-genre", "music-genre-noise", "crowd-text"])
    ap.add_argument("--min-labels", type=int, default=20)
    ap.add_argument("--per-worker", help="write every worker's figures to this CSV")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the 5-fold split and of the noise features")
    args = ap.parse_args()
    globals()["SEED"] = args.seed

    per_worker = []
    for name in args.sets:
        if name == "music-genre":
            s = load_music(args.data_dir)
        elif name == "music-genre-noise":
            s = load_music(args.data_dir, noise=True)
        elif name == "crowd-text":
            s = load_crowd_text(args.crowd_text_dir)
        else:
            raise SystemExit(f"unknown set {name}")
        n = np.bincount(s.a_worker, minlength=len(s.workers))
        right = np.bincount(s.a_worker, weights=(s.a_label == s.gold[s.a_item]).astype(float),
                            minlength=len(s.workers))
        true_acc = right / n
        keep = n >= args.min_labels
        ds_acc, iters = dawid_skene_one_coin(s)
        cl_quality, cl_agree = crowdlab(s)
        print(f"{name}: {len(s.items)} items, {len(s.workers)} workers, {len(s.a_label)} labels, "
              f"{len(s.classes)} classes, {keep.sum()} workers with >= {args.min_labels} labels, "
              f"DS EM {iters} iterations", file=sys.stderr)
        for peer, rank_est, acc_est in (("dawid_skene", ds_acc, ds_acc), ("crowdlab", cl_quality, cl_agree)):
            rho = spearmanr(rank_est[keep], true_acc[keep]).statistic
            mae = float(np.mean(np.abs(acc_est[keep] - true_acc[keep])))
            print(json.dumps({"set": name, "peer": peer, "workers": int(keep.sum()),
                              "spearman": round(float(rho), 4), "mae": round(mae, 4)}), flush=True)
        for j, w in enumerate(s.workers):
            per_worker.append({"set": name, "worker": w, "labels": int(n[j]), "true_accuracy": true_acc[j],
                               "dawid_skene_accuracy": ds_acc[j], "crowdlab_quality": cl_quality[j],
                               "crowdlab_agreement": cl_agree[j]})
    if args.per_worker:
        pd.DataFrame(per_worker).to_csv(args.per_worker, index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
