//! A buffered record's original bytes, kept compressed until the record is routed: the accepted
//! topic gets them byte for byte, and meanwhile they cost a fraction of their size. A feature
//! record's JSON is about twice its features' f32 bytes, and the gate already holds those.

/// Bytes compressed with LZ4 (block format, length in front), restored exactly by [`Self::bytes`].
pub struct StoredPayload(Vec<u8>);

impl StoredPayload {
    pub fn keep(bytes: &[u8]) -> Self {
        let mut compressed = lz4_flex::block::compress_prepend_size(bytes);
        compressed.shrink_to_fit();
        Self(compressed)
    }

    /// The original bytes.
    pub fn bytes(&self) -> Vec<u8> {
        lz4_flex::block::decompress_size_prepended(&self.0).expect("the gate compressed these bytes itself")
    }

    /// Bytes held in memory.
    pub fn held_bytes(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_the_bytes_exactly_and_holds_less_for_json_features() {
        let json =
            format!("{{\"sample_id\":\"s1\",\"features\":[{}]}}", (0..784).map(|i| if i % 7 == 0 { format!("{:.5}", i as f32 / 784.0) } else { "-0.42421".into() }).collect::<Vec<_>>().join(","));
        let kept = StoredPayload::keep(json.as_bytes());
        assert_eq!(kept.bytes(), json.as_bytes());
        assert!(kept.held_bytes() * 3 < json.len(), "{} of {}", kept.held_bytes(), json.len());
        for odd in [&b""[..], &[0xff, 0x00, 0xfe][..]] {
            assert_eq!(StoredPayload::keep(odd).bytes(), odd);
        }
    }
}
