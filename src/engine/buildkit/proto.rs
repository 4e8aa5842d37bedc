//! The handful of protobuf messages habitus exchanges with BuildKit, read
//! and written by hand: the session's `GetSecret`, `Credentials` and health
//! check, and the solve status the daemon streams back during a build.
//!
//! The wire format is the protobuf encoding (varints and length-delimited
//! fields). Everything read here comes from the daemon and is parsed with
//! bounds checks: a truncated or malformed message is an error, never a
//! panic, and unknown fields are skipped.

use std::fmt;

/// A malformed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(&'static str);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed protobuf message: {}", self.0)
    }
}

impl std::error::Error for ProtoError {}

/// One field's value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32- or 64-bit values: never used by the messages read here.
    Fixed,
}

/// Iterates over the fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or(ProtoError("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(n).map_err(|_| ProtoError("length out of range"))?;
        if n > self.buf.len() {
            return Err(ProtoError("field longer than its message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(ProtoError("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(ProtoError("unsupported wire type")),
        };
        Ok(Some((number, value)))
    }
}

fn text(bytes: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError("string is not UTF-8"))
}

/// The first string in field `number` of `buf` (empty if absent): the
/// request of `GetSecret` (`ID = 1`), `Credentials` (`Host = 1`) and the
/// health check (`service = 1`) all carry just that.
pub fn string_field(buf: &[u8], number: u64) -> Result<String, ProtoError> {
    let mut fields = Fields::new(buf);
    let mut out = String::new();
    while let Some((n, value)) = fields.next_field()? {
        if let (true, Value::Bytes(bytes)) = (n == number, value) {
            out = text(bytes)?;
        }
    }
    Ok(out)
}

/// The first bytes field `number` of `buf` (empty if absent): the data of
/// a `BytesMessage`.
pub fn bytes_field(buf: &[u8], number: u64) -> Result<&[u8], ProtoError> {
    let mut fields = Fields::new(buf);
    let mut out: &[u8] = &[];
    while let Some((n, value)) = fields.next_field()? {
        if let (true, Value::Bytes(bytes)) = (n == number, value) {
            out = bytes;
        }
    }
    Ok(out)
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the key and length of a length-delimited field whose `len`
/// bytes the caller sends next (so a secret need not be copied here).
pub fn put_bytes_header(out: &mut Vec<u8>, number: u64, len: usize) {
    put_varint(out, number << 3 | 2);
    put_varint(out, len as u64);
}

/// Appends a length-delimited field.
pub fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_bytes_header(out, number, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends a varint field.
pub fn put_varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    put_varint(out, number << 3);
    put_varint(out, value);
}

/// A step of BuildKit's solve graph (`moby.buildkit.v1.Vertex`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vertex {
    pub digest: String,
    /// `[2/3] RUN make`, `[internal] load build definition from …`.
    pub name: String,
    pub cached: bool,
    /// Start and end as nanoseconds since the epoch.
    pub started: Option<i128>,
    pub completed: Option<i128>,
    pub error: String,
}

/// A progress counter of a vertex (`moby.buildkit.v1.VertexStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VertexStatus {
    pub id: String,
    pub vertex: String,
    pub current: i64,
    pub total: i64,
    pub completed: bool,
}

/// Output of a vertex (`moby.buildkit.v1.VertexLog`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VertexLog {
    pub vertex: String,
    /// 1 stdout, 2 stderr.
    pub stream: i64,
    pub msg: Vec<u8>,
}

/// One solve status update (`moby.buildkit.v1.StatusResponse`), as the
/// daemon sends it in the `moby.buildkit.trace` messages of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusResponse {
    pub vertexes: Vec<Vertex>,
    pub statuses: Vec<VertexStatus>,
    pub logs: Vec<VertexLog>,
}

fn timestamp(buf: &[u8]) -> Result<i128, ProtoError> {
    let mut fields = Fields::new(buf);
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while let Some((n, value)) = fields.next_field()? {
        match (n, value) {
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = v as i64,
            _ => {}
        }
    }
    Ok(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
}

fn vertex(buf: &[u8]) -> Result<Vertex, ProtoError> {
    let mut fields = Fields::new(buf);
    let mut out = Vertex::default();
    while let Some((n, value)) = fields.next_field()? {
        match (n, value) {
            (1, Value::Bytes(b)) => out.digest = text(b)?,
            (3, Value::Bytes(b)) => out.name = text(b)?,
            (4, Value::Varint(v)) => out.cached = v != 0,
            (5, Value::Bytes(b)) => out.started = Some(timestamp(b)?),
            (6, Value::Bytes(b)) => out.completed = Some(timestamp(b)?),
            (7, Value::Bytes(b)) => out.error = text(b)?,
            _ => {}
        }
    }
    Ok(out)
}

fn vertex_status(buf: &[u8]) -> Result<VertexStatus, ProtoError> {
    let mut fields = Fields::new(buf);
    let mut out = VertexStatus::default();
    while let Some((n, value)) = fields.next_field()? {
        match (n, value) {
            (1, Value::Bytes(b)) => out.id = text(b)?,
            (2, Value::Bytes(b)) => out.vertex = text(b)?,
            (4, Value::Varint(v)) => out.current = v as i64,
            (5, Value::Varint(v)) => out.total = v as i64,
            (8, Value::Bytes(_)) => out.completed = true,
            _ => {}
        }
    }
    Ok(out)
}

fn vertex_log(buf: &[u8]) -> Result<VertexLog, ProtoError> {
    let mut fields = Fields::new(buf);
    let mut out = VertexLog::default();
    while let Some((n, value)) = fields.next_field()? {
        match (n, value) {
            (1, Value::Bytes(b)) => out.vertex = text(b)?,
            (3, Value::Varint(v)) => out.stream = v as i64,
            (4, Value::Bytes(b)) => out.msg = b.to_vec(),
            _ => {}
        }
    }
    Ok(out)
}

/// Decodes a `StatusResponse`.
pub fn status_response(buf: &[u8]) -> Result<StatusResponse, ProtoError> {
    let mut fields = Fields::new(buf);
    let mut out = StatusResponse::default();
    while let Some((n, value)) = fields.next_field()? {
        match (n, value) {
            (1, Value::Bytes(b)) => out.vertexes.push(vertex(b)?),
            (2, Value::Bytes(b)) => out.statuses.push(vertex_status(b)?),
            (3, Value::Bytes(b)) => out.logs.push(vertex_log(b)?),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: u64, nanos: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint_field(&mut out, 1, seconds);
        put_varint_field(&mut out, 2, nanos);
        out
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(Fields::new(&out).varint(), Ok(value));
        }
    }

    #[test]
    fn a_status_response_decodes_and_unknown_fields_are_skipped() {
        let mut v = Vec::new();
        put_bytes(&mut v, 1, b"sha256:abc");
        put_bytes(&mut v, 2, b"sha256:input");
        put_bytes(&mut v, 3, b"[2/3] RUN make");
        put_varint_field(&mut v, 4, 1);
        put_bytes(&mut v, 5, &ts(10, 5));
        put_bytes(&mut v, 6, &ts(11, 0));
        put_bytes(&mut v, 8, b"\x0a\x01x"); // progressGroup: skipped
        let mut log = Vec::new();
        put_bytes(&mut log, 1, b"sha256:abc");
        put_varint_field(&mut log, 3, 2);
        put_bytes(&mut log, 4, b"hello\n");
        let mut status = Vec::new();
        put_bytes(&mut status, 1, b"pulling");
        put_bytes(&mut status, 2, b"sha256:abc");
        put_varint_field(&mut status, 4, 5);
        put_varint_field(&mut status, 5, 10);
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, &v);
        put_bytes(&mut msg, 2, &status);
        put_bytes(&mut msg, 3, &log);
        put_bytes(&mut msg, 4, b"warning"); // warnings: skipped
        let decoded = status_response(&msg).unwrap();
        assert_eq!(
            decoded.vertexes,
            vec![Vertex {
                digest: "sha256:abc".into(),
                name: "[2/3] RUN make".into(),
                cached: true,
                started: Some(10_000_000_005),
                completed: Some(11_000_000_000),
                error: String::new(),
            }]
        );
        assert_eq!(decoded.statuses[0].current, 5);
        assert_eq!(decoded.statuses[0].total, 10);
        assert_eq!(decoded.logs[0].msg, b"hello\n");
        assert_eq!(decoded.logs[0].stream, 2);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &[0x0a, 0x05, b'a'][..],       // length beyond the end
            &[0x0a][..],                   // truncated length
            &[0x80; 11][..],               // endless varint
            &[0x0b][..],                   // wire type 3
            &[0x00, 0x00][..],             // field 0
            &[0x1a, 0x02, 0xff, 0xfe][..], // name not UTF-8 inside a vertex
        ] {
            let mut nested = Vec::new();
            put_bytes(&mut nested, 1, bad);
            assert!(status_response(bad).is_err() || status_response(&nested).is_err());
        }
        assert!(status_response(&[0x0a, 0x03, 0x1a, 0x05, b'x']).is_err());
    }

    #[test]
    fn string_fields_read_the_request_id() {
        let mut req = Vec::new();
        put_bytes(&mut req, 1, b"id_rsa");
        // annotations map entry: skipped
        put_bytes(&mut req, 2, b"\x0a\x01k\x12\x01v");
        assert_eq!(string_field(&req, 1).unwrap(), "id_rsa");
        assert_eq!(string_field(&[], 1).unwrap(), "");
    }
}
