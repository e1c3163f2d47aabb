//! The HTTP/1.1 API of a shard core: a connection loop over monoio's
//! io_uring sockets ([`server`]), body decoding ([`body`]), auth ([`auth`])
//! and the endpoints ([`handlers`]; InfluxDB 1.x `/ping` and `/query` in
//! [`influx`]).

pub mod auth;
pub mod body;
pub mod handlers;
pub mod influx;
pub mod server;

/// A parsed request with its whole body.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (lower case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The first query parameter named `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn no_content() -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: serde_json::to_vec(value).expect("JSON values serialize"),
        }
    }

    /// A write error: `{"error": ..., "message": ..., "code": ...}`, which
    /// InfluxDB 1.x, InfluxDB 2.x and Arc clients all read.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let message = message.into();
        let code = match status {
            400 => "invalid",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not found",
            405 => "method not allowed",
            413 => "request too large",
            415 => "unsupported media type",
            502 => "bad gateway",
            503 => "unavailable",
            508 => "loop detected",
            504 => "timeout",
            _ => "internal error",
        };
        let mut r = Response::json(
            status,
            &serde_json::json!({"error": message, "message": message, "code": code}),
        );
        if status == 503 {
            r.headers.push(("Retry-After", "1".into()));
        }
        r
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}
