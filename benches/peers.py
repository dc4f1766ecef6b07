#!/usr/bin/env python3
"""Peer baselines for labelgate's evaluation, on the same features and the same noisy labels.

- `o2u-torch`: an O2U-Net reference in PyTorch with labelgate's MLP, batch size, schedule,
  optimiser and epochs (stage 1 at a fixed rate, stage 2 cyclical, scores = mean normalised loss).
- `cleanlab`: cleanlab 2.x `find_label_issues` on 5-fold cross-validated predicted probabilities
  of the same MLP trained in PyTorch; ranking by cleanlab's self-confidence label quality.

Labels come from `labelgate eval --export-labels`, so all methods see identical noise.
Prints one JSON object per peer on stdout.
"""
import argparse, gzip, json, time

import numpy as np
import torch
import torch.nn as nn


def load_mnist(data_dir):
    with gzip.open(f"{data_dir}/mnist/train-images.idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    # labelgate standardises images with one mean / deviation over all training pixels
    x = (x - x.mean()) / x.std()
    return x


def load_music(data_dir):
    import csv
    rows = list(csv.reader(open(f"{data_dir}/music_genre_crowd/music_genre_gold.csv")))
    feats = {r[0]: np.array(r[1:-1], dtype=np.float32) for r in rows[1:]}
    answers = list(csv.reader(open(f"{data_dir}/music_genre_crowd/mturk_answers.csv")))[1:]
    x = np.stack([feats[a[1]] for a in answers])
    return (x - x.mean(0)) / np.where(x.std(0) < 1e-6, 1.0, x.std(0))


def mlp(dim, hidden, classes):
    layers, prev = [], dim
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers)


def run_epoch(model, opt, x, y, batch, lr, gen, record=None):
    for g in opt.param_groups:
        g["lr"] = lr
    perm = torch.randperm(len(y), generator=gen).to(x.device)
    model.train()
    for start in range(0, len(y), batch):
        idx = perm[start:start + batch]
        out = model(x[idx])
        loss = nn.functional.cross_entropy(out, y[idx], reduction="none")
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        if record is not None:
            record[idx] = loss.detach()


def label_metrics(scores, noisy):
    order = np.argsort(-scores, kind="stable")
    k = int(noisy.sum())
    lp = noisy[order[:k]].mean() if k else 1.0
    hits = np.cumsum(noisy[order])
    ap = (hits[noisy[order]] / (np.nonzero(noisy[order])[0] + 1)).mean()
    return float(lp), float(ap)


def prf(flags, noisy):
    tp = (flags & noisy).sum()
    p = tp / max(flags.sum(), 1)
    r = tp / max(noisy.sum(), 1)
    return float(p), float(r), float(2 * p * r / (p + r) if p + r else 0.0)


def o2u_torch(x, y, noisy, a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = mlp(x.shape[1], a.hidden, a.classes).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr1, momentum=0.9, weight_decay=5e-4)
    n = len(y)
    mean_loss = torch.zeros(n, dtype=torch.float64, device=x.device)
    t0 = time.perf_counter()
    for _ in range(a.stage1_epochs):
        run_epoch(model, opt, x, y, a.batch_size, a.lr1, gen)
    epochs2 = a.cycles * a.cycle_len
    for e in range(epochs2):
        t = (e % a.cycle_len + 1) / a.cycle_len
        lr = (1 - t) * a.lr_max + t * a.lr_min
        rec = torch.zeros(n, device=x.device)
        run_epoch(model, opt, x, y, a.batch_size, lr, gen, rec)
        mean_loss += (rec - rec.mean()).double()
    if x.is_cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    scores = (mean_loss / epochs2).cpu().numpy()
    lp, ap = label_metrics(scores, noisy)
    epochs = a.stage1_epochs + epochs2
    return {"peer": "o2u-torch", "label_precision": lp, "average_precision": ap,
            "training_seconds": secs, "wall_seconds": secs, "epochs": epochs,
            "samples_per_second": n * epochs / secs, "threads": torch.get_num_threads(),
            "device": str(x.device)}


def cleanlab_cv(x, y, noisy, a):
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold
    torch.manual_seed(a.seed)
    n = len(y)
    probs = np.zeros((n, a.classes), dtype=np.float32)
    t0 = time.perf_counter()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=a.seed)
    for fold, (tr, te) in enumerate(folds.split(np.zeros(n), y.numpy())):
        gen = torch.Generator().manual_seed(a.seed + fold)
        model = mlp(x.shape[1], a.hidden, a.classes)
        opt = torch.optim.SGD(model.parameters(), lr=a.lr1, momentum=0.9, weight_decay=5e-4)
        xt, yt = x[tr], y[tr]
        for _ in range(a.cv_epochs):
            run_epoch(model, opt, xt, yt, a.batch_size, a.lr1, gen)
        model.eval()
        with torch.no_grad():
            probs[te] = torch.softmax(model(x[te]), 1).numpy()
    train_secs = time.perf_counter() - t0
    labels = y.numpy()
    issues = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs)
    wall = time.perf_counter() - t0
    lp, ap = label_metrics(-quality, noisy)
    p, r, f1 = prf(issues, noisy)
    return {"peer": "cleanlab", "label_precision": lp, "average_precision": ap,
            "precision_auto": p, "recall_auto": r, "f1_auto": f1,
            "noise_rate_estimate": float(issues.mean()), "wall_seconds": wall,
            "training_seconds": train_secs, "epochs": 5 * a.cv_epochs,
            "samples_per_second": 0.8 * n * 5 * a.cv_epochs / train_secs, "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", choices=["mnist", "music-genre"], default="mnist")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--labels", required=True, help="CSV from labelgate eval --export-labels")
    p.add_argument("--peers", default="o2u-torch,cleanlab")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (o2u-torch only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", default="256,256")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--stage1-epochs", type=int, default=5)
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--cycle-len", type=int, default=10)
    p.add_argument("--lr1", type=float, default=0.01)
    p.add_argument("--lr-max", type=float, default=0.01)
    p.add_argument("--lr-min", type=float, default=0.001)
    p.add_argument("--cv-epochs", type=int, default=10)
    a = p.parse_args()
    a.hidden = [int(h) for h in a.hidden.split(",")]
    torch.set_num_threads(a.threads)
    x = load_mnist(a.data_dir) if a.dataset == "mnist" else load_music(a.data_dir)
    table = np.loadtxt(a.labels, delimiter=",", skiprows=1, dtype=np.int64)
    true, given = table[:, 1], table[:, 2]
    x = torch.from_numpy(np.ascontiguousarray(x[: len(given)]))
    a.classes = 10
    y = torch.from_numpy(given)
    if a.device != "cpu":
        x, y = x.to(a.device), y.to(a.device)
    noisy = true != given
    for peer in a.peers.split(","):
        result = {"o2u-torch": o2u_torch, "cleanlab": cleanlab_cv}[peer](x, y, noisy, a)
        result["dataset"] = a.dataset
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
