//! Arbitrary input never panics the wire parser or the gate: random bytes, and valid records
//! mutated (bytes flipped, cut, spliced, fields swapped for odd JSON values), through
//! `Schema::parse` and `Gate::ingest_parsed`, with every input ending buffered or dead-lettered.
//! `LABELGATE_FUZZ_INPUTS` sets the count (CI: 50,000; the benchmark in docs/benchmarks.md:
//! 1,000,000).

use std::time::Instant;

use labelgate::{
    config::Config,
    gate::{Gate, Ingested, InputMessage, SourcePos},
};
use rand::{RngExt, SeedableRng};

const SEEDS: [&str; 6] = [
    r#"{"sample_id":"s1","batch_id":"b1","vendor_id":"v","label":"a","features":[0.5,1.5,-2.0]}"#,
    r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#,
    r#"{"sample_id":"s2","batch_id":"b1","vendor_id":"v","annotator_id":"w","label":"b","gold_label":"a","features":[1,2,3]}"#,
    r#"{"sample_id":"s3","batch_id":"b2","vendor_id":"v","label":"a","image":{"shape":[1,3,1],"data_b64":"AP8z"}}"#,
    r#"{"sample_id":"s4","batch_id":"b2","vendor_id":"v2","label":"b","features":[1e38,-1e38,0]}"#,
    r#"{"type":"batch_end","batch_id":"b2","vendor_id":"v","count":1000000000000}"#,
];

/// Odd JSON values to splice in place of a field's value.
const ODD: [&str; 14] =
    ["null", "[]", "{}", "\"\"", "1e309", "-0", "NaN", "\"\\u0000\"", "\"\\ud800\"", "[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]", "18446744073709551616", "true", "\"\u{202e}\u{0}\n\"", "-1"];

fn mutate(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    if rng.random_range(0..8) == 0 {
        let n = rng.random_range(0..64);
        return (0..n).map(|_| rng.random()).collect();
    }
    let mut s = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes().to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..5) {
            0 if !s.is_empty() => {
                let i = rng.random_range(0..s.len());
                s[i] = rng.random();
            }
            1 if !s.is_empty() => s.truncate(rng.random_range(0..s.len())),
            2 => {
                // Replace the value after a random colon with an odd one.
                let colons: Vec<usize> = s.iter().enumerate().filter(|(_, &b)| b == b':').map(|(i, _)| i).collect();
                if let Some(&c) = colons.get(rng.random_range(0..colons.len().max(1))) {
                    let end = s[c + 1..].iter().position(|&b| b == b',' || b == b'}').map_or(s.len(), |p| c + 1 + p);
                    let odd = ODD[rng.random_range(0..ODD.len())].as_bytes();
                    s.splice(c + 1..end, odd.iter().copied());
                }
            }
            3 if !s.is_empty() => {
                let i = rng.random_range(0..s.len());
                let extra = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes();
                s.splice(i..i, extra[..rng.random_range(0..extra.len())].iter().copied());
            }
            _ => s.extend(std::iter::repeat_n(b' ', rng.random_range(0..4))),
        }
    }
    s
}

#[test]
fn arbitrary_bytes_never_panic_the_parser_or_the_gate() {
    let inputs: u64 = std::env::var("LABELGATE_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let mut gate_config = Config::defaults().gate;
    gate_config.classes = vec!["a".into(), "b".into()];
    gate_config.feature_dim = 3;
    gate_config.max_id_length = 16;
    gate_config.max_buffered_records = usize::MAX / 2;
    let mut gate = Gate::new(gate_config, 4096, "fuzz".into(), "fuzz".into());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20_261_129);
    let now = Instant::now();
    let (mut buffered, mut rejected, mut skipped) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for offset in 0..inputs {
        let payload = mutate(&mut rng);
        let key = (rng.random_range(0..4) == 0).then(|| b"b1".to_vec());
        let msg = InputMessage { key, payload, headers: Vec::new(), pos: SourcePos { partition: (offset % 3) as i32, offset: offset as i64 } };
        let parsed = gate.schema().parse(&msg.payload);
        match gate.ingest_parsed(msg, parsed, now) {
            Ingested::Buffered | Ingested::DeliveryClosed => buffered += 1,
            Ingested::Rejected(_) => rejected += 1,
            Ingested::Skipped => skipped += 1,
        }
        if offset % 10_000 == 9_999 {
            // Dead letters leave the gate as a commit, as on the real edge.
            let _ = gate.flush_dead_letters();
        }
    }
    eprintln!("{inputs} inputs in {:.1} s: {buffered} buffered or closing a delivery, {rejected} dead-lettered, {skipped} skipped", started.elapsed().as_secs_f64());
    assert_eq!(buffered + rejected + skipped, inputs, "every input ends in one place");
    assert!(buffered > 0 && rejected > inputs / 2, "the mutations reach both outcomes: {buffered} / {rejected}");
}
