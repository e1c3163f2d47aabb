//! Request body decoding: gzip and zstd, chosen by `Content-Encoding` or, as
//! Arc does, by the body's magic bytes; the decompressed size is capped.

use std::io::Read;

use super::Response;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The decompressed body, or the response that refuses it (400 corrupt,
/// 413 too large, 415 unknown encoding).
pub fn decode(
    body: Vec<u8>,
    content_encoding: Option<&str>,
    limit: u64,
) -> Result<Vec<u8>, Response> {
    let encoding = match content_encoding.map(|e| e.to_ascii_lowercase()) {
        Some(e) if e == "gzip" || e == "x-gzip" => "gzip",
        Some(e) if e == "zstd" => "zstd",
        Some(e) if e.is_empty() || e == "identity" => sniff(&body),
        None => sniff(&body),
        Some(other) => {
            return Err(Response::error(
                415,
                format!("unsupported Content-Encoding {other:?} (expected gzip, zstd or identity)"),
            ))
        }
    };
    let read = |r: &mut dyn Read| -> Result<Vec<u8>, Response> {
        let mut out = Vec::new();
        r.take(limit + 1).read_to_end(&mut out).map_err(|e| {
            Response::error(400, format!("request body is not valid {encoding}: {e}"))
        })?;
        if out.len() as u64 > limit {
            return Err(Response::error(
                413,
                format!("decompressed request body is larger than the limit of {limit} bytes"),
            ));
        }
        Ok(out)
    };
    match encoding {
        "gzip" => read(&mut flate2::read::MultiGzDecoder::new(&body[..])),
        "zstd" => {
            let mut d = zstd::stream::read::Decoder::with_buffer(&body[..]).map_err(|e| {
                Response::error(400, format!("request body is not valid zstd: {e}"))
            })?;
            read(&mut d)
        }
        _ => Ok(body),
    }
}

fn sniff(body: &[u8]) -> &'static str {
    if body.starts_with(&GZIP_MAGIC) {
        "gzip"
    } else if body.starts_with(&ZSTD_MAGIC) {
        "zstd"
    } else {
        "identity"
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn gzip_zstd_by_header_and_magic_and_limits() {
        let data = b"cpu v=1\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(decode(gz.clone(), Some("gzip"), 1 << 20).unwrap(), data);
        assert_eq!(decode(gz.clone(), None, 1 << 20).unwrap(), data);
        assert_eq!(decode(zs.clone(), Some("zstd"), 1 << 20).unwrap(), data);
        assert_eq!(decode(zs, None, 1 << 20).unwrap(), data);
        assert_eq!(decode(data.clone(), None, 1 << 20).unwrap(), data);
        assert_eq!(decode(gz.clone(), None, 100).unwrap_err().status, 413);
        assert_eq!(
            decode(b"nope".to_vec(), Some("gzip"), 100)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            decode(gz[..gz.len() / 2].to_vec(), None, 1 << 20)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(decode(data, Some("br"), 100).unwrap_err().status, 415);
    }
}
