"""sentence-transformers (PyTorch) beside labelgate's candle encoder on the same sentences.

Prints JSON lines:
  {"check": "cosine", ...}  per-sentence cosine between the two encoders' embeddings
  {"check": "speed", "encoder": "sentence-transformers", "threads": T, "batch_size": B, ...}
Run by benches/encoder_peers.sh, which also runs `labelgate embed` for its side.
"""
import argparse, json, sys, time


def sentences(data_dir, limit):
    """The sentence_polarity sentences in labelgate's order: positive and negative alternate."""
    read = lambda n: [l.strip() for l in open(f"{data_dir}/sentence_polarity/{n}", encoding="latin-1") if l.strip()]
    pos, neg = read("rt-polarity.pos"), read("rt-polarity.neg")
    out = []
    for i in range(max(len(pos), len(neg))):
        for s in (pos, neg):
            if i < len(s):
                out.append(s[i])
    return out[:limit]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--labelgate-embeddings", help="JSONL of `labelgate embed --output`")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 32, 64, 128])
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    import numpy as np, torch
    from sentence_transformers import SentenceTransformer
    texts = sentences(a.data_dir, a.limit)
    model = SentenceTransformer(a.model_dir, device="cpu")
    if a.labelgate_embeddings:
        ours = np.array([json.loads(l)["embedding"] for l in open(a.labelgate_embeddings)], dtype=np.float64)
        theirs = model.encode(texts, batch_size=32, normalize_embeddings=False).astype(np.float64)
        cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        print(json.dumps({"check": "cosine", "sentences": len(texts), "min": float(cos.min()), "mean": float(cos.mean()), "p01": float(np.quantile(cos, 0.01))}))
    for threads in a.threads:
        torch.set_num_threads(threads)
        for batch in a.batch_sizes:
            best = float("inf")
            for _ in range(a.repeat):
                started = time.perf_counter()
                model.encode(texts, batch_size=batch)
                best = min(best, time.perf_counter() - started)
            print(json.dumps({"check": "speed", "encoder": "sentence-transformers", "threads": threads, "batch_size": batch, "texts": len(texts), "seconds": best, "texts_per_second": len(texts) / best}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
