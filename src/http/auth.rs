//! API tokens: `Authorization: Bearer <t>`, `Authorization: Token <t>`,
//! `Authorization: Basic` (the password is the token, for InfluxDB 1.x
//! clients), `x-api-key: <t>`, or the `p` query parameter (InfluxDB 1.x).

use super::{Request, Response};

/// The token a request carries, if any.
pub fn token(req: &Request) -> Option<String> {
    if let Some(v) = req.header("authorization") {
        let (scheme, rest) = v.split_once(' ').unwrap_or(("", v));
        let rest = rest.trim();
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" | "token" => return Some(rest.to_string()),
            "basic" => {
                let decoded = base64_decode(rest)?;
                let text = String::from_utf8(decoded).ok()?;
                return text.split_once(':').map(|(_, p)| p.to_string());
            }
            _ => return Some(v.to_string()),
        }
    }
    if let Some(v) = req.header("x-api-key") {
        return Some(v.to_string());
    }
    req.query_param("p")
}

/// `None` if the request may go on, else the 401 response.
pub fn check(req: &Request, tokens: &[String]) -> Option<Response> {
    let unauthorized = |msg: &str| {
        Response::json(401, &serde_json::json!({"success": false, "error": msg}))
            .with_header("WWW-Authenticate", "Bearer")
    };
    match token(req) {
        None => Some(unauthorized("missing API token (Authorization: Bearer <token>, Authorization: Token <token> or x-api-key)")),
        Some(t) if tokens.iter().any(|k| constant_time_eq(k.as_bytes(), t.as_bytes())) => None,
        Some(_) => Some(unauthorized("invalid API token")),
    }
}

/// Compares a token in time independent of where it differs.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], query: &str) -> Request {
        Request {
            method: "POST".into(),
            path: "/write".into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn every_token_form() {
        let tokens = vec!["s3cret".to_string()];
        for r in [
            req(&[("authorization", "Bearer s3cret")], ""),
            req(&[("authorization", "Token s3cret")], ""),
            req(&[("authorization", "Basic dXNlcjpzM2NyZXQ=")], ""), // user:s3cret
            req(&[("x-api-key", "s3cret")], ""),
            req(&[], "db=x&p=s3cret"),
        ] {
            assert_eq!(check(&r, &tokens), None, "{r:?}");
        }
        assert_eq!(check(&req(&[], ""), &tokens).unwrap().status, 401);
        assert_eq!(
            check(&req(&[("x-api-key", "wrong")], ""), &tokens)
                .unwrap()
                .status,
            401
        );
    }
}
