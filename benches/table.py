#!/usr/bin/env python3
"""Formats the results of benches/peers.sh as one markdown table."""
import json, sys

out, settings = sys.argv[1], sys.argv[2:]
print("| setting | method | label precision | average precision | precision / recall / F1 (auto) | noise rate est. (true) | wall s | train samples/s | vs PyTorch |")
print("|---|---|---|---|---|---|---|---|---|")
for setting in settings:
    name = setting.replace(":", "-")
    lg = json.load(open(f"{out}/{name}.labelgate.json"))
    peers = {p["peer"]: p for p in map(json.loads, open(f"{out}/{name}.peers.jsonl"))}
    torch_sps = peers.get("o2u-torch", {}).get("samples_per_second")
    true_rate = f"({lg['true_noise_rate']:.3f})"
    def row(method, r, auto, ratio=""):
        print(f"| {setting} | {method} | {r['label_precision']:.4f} | {r['average_precision']:.4f} | {auto} "
              f"| {r.get('noise_rate_estimate', float('nan')):.3f} {true_rate} | {r['wall_seconds']:.1f} | {r['samples_per_second']:,.0f} | {ratio} |")
    ratio = f"{lg['samples_per_second'] / torch_sps:.2f}×" if torch_sps else ""
    row("labelgate", lg, f"{lg['precision_auto']:.3f} / {lg['recall_auto']:.3f} / {lg['f1_auto']:.4f}", ratio)
    if "cleanlab" in peers:
        c = peers["cleanlab"]
        row("cleanlab 2.x (5-fold CV)", c, f"{c['precision_auto']:.3f} / {c['recall_auto']:.3f} / {c['f1_auto']:.4f}")
    if "o2u-torch" in peers:
        o = dict(peers["o2u-torch"]); o.setdefault("noise_rate_estimate", float("nan"))
        row("O2U-Net in PyTorch", o, "top-k only", "1.00×")
