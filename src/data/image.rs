//! Encoded images (PNG, JPEG) to the pixels the engine reads: decoded within bounds, converted to
//! the configured channels and resized to the configured size. Pure computation on bytes.

use std::io::Cursor;

use image::{imageops::FilterType, io::Limits, ImageFormat};

/// The encodings a record's `image.format` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Png,
    Jpeg,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "png" => Some(Encoding::Png),
            "jpeg" | "jpg" => Some(Encoding::Jpeg),
            _ => None,
        }
    }

    /// The encoding a file's first bytes show (its signature), if PNG or JPEG.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        match image::guess_format(bytes).ok()? {
            ImageFormat::Png => Some(Encoding::Png),
            ImageFormat::Jpeg => Some(Encoding::Jpeg),
            _ => None,
        }
    }

    fn format(self) -> ImageFormat {
        match self {
            Encoding::Png => ImageFormat::Png,
            Encoding::Jpeg => ImageFormat::Jpeg,
        }
    }
}

/// An image larger than this on either side is refused before its pixels are allocated: a small
/// file may declare a huge image (a decompression bomb).
pub const MAX_SIDE: u32 = 8192;

/// Decodes `bytes` into u8 pixels `[height, width, channels]` (row-major, channels last): the
/// image's own size when `size` is `None`, else resized to `size` = (height, width).
/// `channels` is 1 (grey), 3 (RGB) or 4 (RGBA); `None` keeps the image's own (grey with alpha
/// becomes grey).
pub fn decode(encoding: Encoding, bytes: &[u8], channels: Option<usize>, size: Option<(u32, u32)>) -> Result<(Vec<u8>, [usize; 3]), String> {
    let mut reader = image::io::Reader::with_format(Cursor::new(bytes), encoding.format());
    let mut limits = Limits::default();
    (limits.max_image_width, limits.max_image_height) = (Some(MAX_SIDE), Some(MAX_SIDE));
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let mut img = reader.decode().map_err(|e| format!("not a {encoding:?} image: {e}"))?;
    if let Some((h, w)) = size.filter(|&(h, w)| (h, w) != (img.height(), img.width())) {
        // Triangle (bilinear) sampling, as most training pipelines resize.
        img = img.resize_exact(w, h, FilterType::Triangle);
    }
    let (h, w) = (img.height() as usize, img.width() as usize);
    let channels = channels.unwrap_or(match img.color().channel_count() {
        2 => 1,
        n => n as usize,
    });
    let pixels = match channels {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        4 => img.to_rgba8().into_raw(),
        c => return Err(format!("{c} channels: use 1, 3 or 4")),
    };
    Ok((pixels, [h, w, channels]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(pixels: &[u8], w: u32, h: u32, colour: png::ColorType) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(colour);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(pixels).unwrap();
        out
    }

    #[test]
    fn a_png_decodes_to_its_own_pixels() {
        let grey: Vec<u8> = (0..12).map(|i| i * 20).collect();
        let (pixels, shape) = decode(Encoding::Png, &png(&grey, 4, 3, png::ColorType::Grayscale), None, None).unwrap();
        assert_eq!((pixels, shape), (grey, [3, 4, 1]));
    }

    #[test]
    fn channels_are_converted_and_sizes_resized() {
        let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        let encoded = png(&rgb, 2, 2, png::ColorType::Rgb);
        let (grey, shape) = decode(Encoding::Png, &encoded, Some(1), None).unwrap();
        assert_eq!(shape, [2, 2, 1]);
        assert_eq!(grey[3], 255, "white stays white");
        assert!(grey[0] < grey[1], "red is darker than green in luma");
        let (small, shape) = decode(Encoding::Png, &encoded, None, Some((1, 1))).unwrap();
        assert_eq!((small.len(), shape), (3, [1, 1, 3]));
    }

    #[test]
    fn what_is_not_an_image_is_refused_with_why() {
        let e = decode(Encoding::Jpeg, b"not a jpeg", None, None).unwrap_err();
        assert!(e.contains("not a Jpeg image"), "{e}");
        // A PNG whose header declares 100,000 × 100,000 pixels is refused.
        let mut bomb = png(&[0], 1, 1, png::ColorType::Grayscale);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(decode(Encoding::Png, &bomb, None, None).is_err());
    }
}
