#!/usr/bin/env python3
"""Input generator and read_committed verifier for benches/chaos.sh (standard library only).

  chaos.py gen OUT_DIR RECORDS DELIVERIES RUN_ID   # writes main-NNN.txt, late.txt, oversized.txt, expected.json
  chaos.py verify OUT_DIR                           # reads the dumps made by chaos.sh, prints JSON, exit 1 on a violation

Produce files are `key<TAB>value` lines for `kcat -P -K '\\t'`. Every value is unique, so the
verifier finds what each input record should become (valid, marker, or a DLQ reason) by its hash.
"""
import base64
import hashlib
import json
import random
import re
import sys
from collections import Counter, defaultdict

DIM = 32
CLASSES = [str(c) for c in range(10)]


def J(o):
    return json.dumps(o, separators=(",", ":"))


def sha(b):
    return hashlib.sha1(b).hexdigest()


def features(rng, cls):
    # Class-dependent means: a small network separates them in a few steps.
    return [round(rng.gauss(3.0 if i % 10 == cls else 0.0, 1.0), 3) for i in range(DIM)]


def gen(out, records, deliveries, run_id):
    rng = random.Random(run_id)
    expected = {}  # sha1(value) -> "valid" | "marker" | dlq reason
    valid_by_batch = {}
    lines = []

    def add(key, value, what):
        v = value.encode()
        assert sha(v) not in expected
        expected[sha(v)] = what
        lines.append(f"{key}\t{value}")

    per = records // deliveries
    for d in range(deliveries):
        batch = f"{run_id}-d{d:04d}"
        vendor = f"vendor-{d % 3}"
        n = per + (records - per * deliveries if d == deliveries - 1 else 0)
        for i in range(n):
            cls = rng.randrange(10)
            label = cls if rng.random() > 0.05 else rng.randrange(10)  # 5% label noise
            rec = {"sample_id": f"{batch}-s{i}", "batch_id": batch, "vendor_id": vendor,
                   "label": str(label), "features": features(rng, cls)}
            add(batch, json.dumps(rec, separators=(",", ":")), "valid")
        valid_by_batch[batch] = n
        # Every tenth delivery has no batch_end and closes by timeout.
        if d % 10 != 9:
            add(batch, json.dumps({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": n}), "marker")
            if d == 1:
                add(batch, json.dumps({"type": "batch_end", "batch_id": batch, "vendor_id": vendor, "count": n, "again": 1}),
                    "duplicate_batch_end")

    # Bad input, one delivery of its own with valid records around the bad ones, placed early.
    bad = []
    bb = f"{run_id}-bad"

    def b(key, value, what):
        v = value.encode()
        expected[sha(v)] = what
        bad.append(f"{key}\t{value}")

    def rec(sid, **kw):
        r = {"sample_id": sid, "batch_id": bb, "vendor_id": "vendor-bad", "label": "1", "features": features(rng, 1)}
        r.update(kw)
        return r

    good = 0
    for i in range(5):
        b(bb, J(rec(f"{bb}-ok{i}")), "valid"); good += 1
    b(bb, '{"sample_id":"%s-ij","batch_id":' % bb, "invalid_json")
    b(bb, J(rec(f"{bb}-nan", features=[0.5] * (DIM - 1))).replace('"features":[', '"features":[NaN,', 1), "invalid_json")
    r = rec(f"{bb}-mf"); del r["label"]; b(bb, J(r), "missing_field")
    b(bb, J({"type": "batch_start", "batch_id": bb, "vendor_id": "vendor-bad"}), "unknown_message_type")
    b(bb, J(rec(f"{bb}-wfl", features=[0.5] * (DIM - 1))), "wrong_feature_length")
    b(bb, J(rec(f"{bb}-nf", features=[0.5] * (DIM - 1))).replace('"features":[', '"features":[1e309,', 1), "non_finite_feature")
    r = rec(f"{bb}-img"); del r["features"]; r["image"] = {"shape": [4, 4, 2], "data_b64": "!!not base64!!"}
    b(bb, J(r), "invalid_image")
    b(bb, J(rec(f"{bb}-uc", label="cat")), "unknown_class")
    b(bb, J(rec(f"{bb}-ok0", ts="dup")), "duplicate_sample_id")
    b(bb, J(rec(f"{bb}-vm", vendor_id="vendor-other")), "vendor_mismatch")
    b(bb, J(rec("x" * 300)), "field_too_long")
    b("not-the-batch", J(rec(f"{bb}-km")), "key_mismatch")
    for i in range(5, 10):
        b(bb, J(rec(f"{bb}-ok{i}")), "valid"); good += 1
    # Hostile ids: a dead letter whose message quotes a vendor id with a newline, a NUL and an
    # escape sequence (the DLQ headers must carry them escaped) ...
    b(bb, J(rec(f"{bb}-vm2", vendor_id="evil\n\u0000\u001b[2J")), "vendor_mismatch")
    b(bb, J({"type": "batch_end", "batch_id": bb, "vendor_id": "vendor-bad", "count": good}), "marker")
    valid_by_batch[bb] = good
    lines = bad + lines
    # ... and, last, a valid delivery from a vendor whose id rings the bell and clears the screen
    # (the /metrics label values of the process that gates it must carry them escaped).
    hb, hv = f"{run_id}-hostile", "evil-\u001b[2J\u0007\u0000-vendor"
    for i in range(20):
        add(hb, J({"sample_id": f"{hb}-s{i}", "batch_id": hb, "vendor_id": hv, "label": "2", "features": features(rng, 2)}), "valid")
    add(hb, J({"type": "batch_end", "batch_id": hb, "vendor_id": hv, "count": 20}), "marker")
    valid_by_batch[hb] = 20

    # Chunks hold whole deliveries: a delivery cut between two chunks fed seconds apart would close
    # by timeout on its first part (as documented), and its rest would be late records.
    groups, cur, key = [], [], None
    for line in lines:
        k = line.split("\t", 1)[0]
        if cur and k != key and not k.startswith("not-the-batch") and key != "not-the-batch":
            groups.append(cur); cur = []
        cur.append(line); key = k
    groups.append(cur)
    per_chunk = (len(groups) + 19) // 20
    chunks = (len(groups) + per_chunk - 1) // per_chunk
    for c in range(chunks):
        with open(f"{out}/main-{c:03d}.txt", "w") as f:
            f.write("\n".join(l for g in groups[c * per_chunk:(c + 1) * per_chunk] for l in g) + "\n")
    # Produced once everything else is gated: a record for a gated delivery.
    late_batch = f"{run_id}-d0000"
    late = json.dumps({"sample_id": f"{late_batch}-late", "batch_id": late_batch, "vendor_id": "vendor-0",
                       "label": "1", "features": features(rng, 1)})
    expected[sha(late.encode())] = "late_record"
    with open(f"{out}/late.txt", "w") as f:
        f.write(f"{late_batch}\t{late}\n")
    # Oversized: 2 MiB, above the gate's kafka.max_message_bytes (1 MiB).
    big = json.dumps(rec(f"{bb}-big", ts="x" * (2 << 20)))
    with open(f"{out}/oversized.txt", "w") as f:
        f.write(f"{bb}\t{big}\n")
    json.dump({"expected": expected, "valid_by_batch": valid_by_batch,
               "oversized_sha256": hashlib.sha256(big.encode()).hexdigest(), "oversized_bytes": len(big.encode())},
              open(f"{out}/expected.json", "w"))
    print(json.dumps({"records": sum(1 for v in expected.values() if v != "marker"), "valid": sum(valid_by_batch.values()),
                      "deliveries": len(valid_by_batch), "bad": sum(1 for v in expected.values() if v not in ("valid", "marker"))}))


def header(h, name):
    m = re.search(r"(?:^|,)" + re.escape(name) + r"=([^,]*)", h)
    return m.group(1) if m else None


def verify(out):
    e = json.load(open(f"{out}/expected.json"))
    expected, valid_by_batch = e["expected"], e["valid_by_batch"]
    problems = []
    # Input: partition, offset, size, key, value.
    inputs = {}
    by_id = {}
    kinds = Counter()
    with open(f"{out}/input.dump", "rb") as f:
        for line in f:
            p, o, size, _key, value = line.rstrip(b"\n").split(b"\t", 4)
            po = (int(p), int(o))
            if int(size) > 1 << 20:
                what = "oversized"
            else:
                what = expected.get(sha(value))
                if what is None:
                    problems.append(f"input record {po} was not produced by this run")
                    continue
            inputs[po] = what
            kinds[what] += 1
            if what == "valid":
                r = json.loads(value)
                by_id[(r["batch_id"], r["sample_id"])] = po
    hits = Counter()
    routed = Counter()
    for topic in ("accepted", "rereview"):
        with open(f"{out}/{topic}.dump", "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                po = by_id.get((r["batch_id"], r["sample_id"]))
                if po is None:
                    problems.append(f"{topic}: {r['batch_id']}/{r['sample_id']} is no valid input record")
                    continue
                hits[po] += 1
                routed[topic] += 1
    dlq_reasons = Counter()
    valid_in_dlq = []
    wrong_reason = []
    with open(f"{out}/dlq.dump", "rb") as f:
        for line in f:
            h, size = line.rstrip(b"\n").decode(errors="replace").rsplit("\t", 1)
            cls = header(h, "labelgate-error-class")
            po = (int(header(h, "labelgate-source-partition")), int(header(h, "labelgate-source-offset")))
            dlq_reasons[cls] += 1
            hits[po] += 1
            routed["dlq"] += 1
            what = inputs.get(po)
            if what in ("valid", "marker"):
                valid_in_dlq.append((po, cls, what))
            elif what != cls:
                wrong_reason.append((po, cls, what))
            if cls == "oversized":
                if header(h, "labelgate-payload-sha256") != e["oversized_sha256"] or int(size) != 0:
                    problems.append(f"oversized dead letter {po}: wrong sha256 header or non-empty value")
    lost = [po for po, what in inputs.items() if what != "marker" and hits[po] == 0]
    dup = [po for po, n in hits.items() if n > 1]
    verdicts = Counter()
    verdict_records = {}
    with open(f"{out}/verdicts.dump", "rb") as f:
        for line in f:
            if line.strip():
                v = json.loads(line)
                verdicts[v["batch_id"]] += 1
                verdict_records[v["batch_id"]] = v.get("records")
    no_verdict = [bt for bt in valid_by_batch if verdicts[bt] == 0]
    many_verdicts = [bt for bt, n in verdicts.items() if n > 1]
    stray = [bt for bt in verdicts if bt not in valid_by_batch]
    wrong_count = [(bt, verdict_records[bt], n) for bt, n in valid_by_batch.items()
                   if bt in verdict_records and verdict_records[bt] is not None and verdict_records[bt] != n]
    expected_kinds = sorted(k for k in set(expected.values()) | {"oversized"} if k not in ("valid", "marker"))
    missing_kinds = [k for k in expected_kinds if dlq_reasons[k] == 0]
    for name, xs in (("lost", lost), ("duplicated", dup), ("valid records dead-lettered", valid_in_dlq),
                     ("dead letters with an unexpected reason", wrong_reason), ("deliveries without a verdict", no_verdict),
                     ("deliveries with several verdicts", many_verdicts), ("verdicts of unknown deliveries", stray),
                     ("verdicts whose record count is wrong", wrong_count), ("bad-input kinds not seen in the DLQ", missing_kinds)):
        if xs:
            problems.append(f"{len(xs)} {name}: {xs[:10]}")
    report = {"input_records": sum(n for k, n in kinds.items() if k != "marker"), "markers": kinds["marker"],
              "valid": kinds["valid"], "bad": sum(n for k, n in kinds.items() if k not in ("valid", "marker")),
              "deliveries": len(valid_by_batch), "verdicts": sum(verdicts.values()),
              "accepted": routed["accepted"], "rereview": routed["rereview"], "dlq": routed["dlq"],
              "lost": len(lost), "duplicated": len(dup), "valid_in_dlq": len(valid_in_dlq),
              "dlq_reasons": dict(sorted(dlq_reasons.items())), "problems": problems}
    print(json.dumps(report, indent=1))
    return 0 if not problems else 1


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(verify(sys.argv[2]))
