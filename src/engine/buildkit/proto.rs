//! The protobuf messages habitus exchanges with BuildKit, as generated
//! from BuildKit's own `.proto` files by the `bollard-buildkit-proto`
//! crate (prost): the session's `GetSecret`, `Credentials`, SSH agent and
//! health check messages, and the solve status the daemon streams back
//! during a build. (The FileSync packets are in [`super::filesync`].)
//!
//! Everything read here comes from the daemon; prost decodes it with
//! bounds checks: a truncated or malformed message is an error, never a
//! panic, and unknown fields are skipped. The solve status is turned into
//! the few fields [`super::progress`] shows.

use std::fmt;

use bollard_buildkit_proto::google::protobuf::Timestamp;
use bollard_buildkit_proto::health::{health_check_response::ServingStatus, HealthCheckResponse};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::GetSecretRequest;
use bollard_buildkit_proto::moby::buildkit::v1 as control;
use bollard_buildkit_proto::moby::filesync::v1::{CredentialsRequest, CredentialsResponse};
use bollard_buildkit_proto::moby::sshforward::v1::{BytesMessage, CheckAgentRequest};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

/// A malformed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed protobuf message: {}", self.0)
    }
}

impl std::error::Error for ProtoError {}

impl From<prost::DecodeError> for ProtoError {
    fn from(err: prost::DecodeError) -> Self {
        ProtoError(err.to_string())
    }
}

/// The id of a `GetSecret` request.
pub fn secret_id(buf: &[u8]) -> Result<String, ProtoError> {
    Ok(GetSecretRequest::decode(buf)?.id)
}

/// The registry host of a `Credentials` request.
pub fn credentials_host(buf: &[u8]) -> Result<String, ProtoError> {
    Ok(CredentialsRequest::decode(buf)?.host)
}

/// The agent id of a `CheckAgent` request (empty: the default agent).
pub fn agent_id(buf: &[u8]) -> Result<String, ProtoError> {
    Ok(CheckAgentRequest::decode(buf)?.id)
}

/// The bytes of a `ForwardAgent` stream message.
pub fn agent_bytes(buf: &[u8]) -> Result<Vec<u8>, ProtoError> {
    Ok(BytesMessage::decode(buf)?.data)
}

/// A `ForwardAgent` stream message carrying `data`.
pub fn agent_message(data: &[u8]) -> Vec<u8> {
    BytesMessage {
        data: data.to_vec(),
    }
    .encode_to_vec()
}

/// `HealthCheckResponse { status: SERVING }`.
pub fn health_serving() -> Vec<u8> {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
    .encode_to_vec()
}

/// A `Credentials` answer (both empty: anonymous).
pub fn credentials(username: &str, secret: &str) -> Vec<u8> {
    CredentialsResponse {
        username: username.to_string(),
        secret: secret.to_string(),
    }
    .encode_to_vec()
}

/// The start of a `GetSecretResponse` whose `data` (field 1) is `len`
/// bytes the caller sends next: the secret is then sent from its own
/// zeroized buffer instead of being copied into a message that would not
/// be zeroized (which `GetSecretResponse::encode` would do).
pub fn secret_response_header(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(len as u64, &mut out);
    out
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

fn nanos(t: Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

/// Decodes a `StatusResponse`.
pub fn status_response(buf: &[u8]) -> Result<StatusResponse, ProtoError> {
    let status = control::StatusResponse::decode(buf)?;
    Ok(StatusResponse {
        vertexes: status
            .vertexes
            .into_iter()
            .map(|v| Vertex {
                digest: v.digest,
                name: v.name,
                cached: v.cached,
                started: v.started.map(nanos),
                completed: v.completed.map(nanos),
                error: v.error,
            })
            .collect(),
        statuses: status
            .statuses
            .into_iter()
            .map(|s| VertexStatus {
                id: s.id,
                vertex: s.vertex,
                current: s.current,
                total: s.total,
                completed: s.completed.is_some(),
            })
            .collect(),
        logs: status
            .logs
            .into_iter()
            .map(|l| VertexLog {
                vertex: l.vertex,
                stream: l.stream,
                msg: l.msg,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    #[test]
    fn a_status_response_decodes_and_unknown_fields_are_skipped() {
        let msg = control::StatusResponse {
            vertexes: vec![control::Vertex {
                digest: "sha256:abc".into(),
                inputs: vec!["sha256:input".into()],
                name: "[2/3] RUN make".into(),
                cached: true,
                started: ts(10, 5),
                completed: ts(11, 0),
                ..Default::default()
            }],
            statuses: vec![control::VertexStatus {
                id: "pulling".into(),
                vertex: "sha256:abc".into(),
                current: 5,
                total: 10,
                ..Default::default()
            }],
            logs: vec![control::VertexLog {
                vertex: "sha256:abc".into(),
                stream: 2,
                msg: b"hello\n".to_vec(),
                ..Default::default()
            }],
            warnings: vec![control::VertexWarning {
                vertex: "sha256:abc".into(),
                short: b"warning".to_vec(),
                ..Default::default()
            }],
        };
        let mut bytes = msg.encode_to_vec();
        // A field a newer BuildKit might add: skipped.
        bytes.extend_from_slice(&[0xa2, 0x06, 0x01, b'x']);
        let decoded = status_response(&bytes).unwrap();
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
        assert!(!decoded.statuses[0].completed);
        assert_eq!(decoded.logs[0].msg, b"hello\n");
        assert_eq!(decoded.logs[0].stream, 2);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &[0x0a, 0x05, b'a'][..],                   // length beyond the end
            &[0x0a][..],                               // truncated length
            &[0x80; 11][..],                           // endless varint
            &[0x0b][..],                               // wire type 3
            &[0x00, 0x00][..],                         // field 0
            &[0x0a, 0x04, 0x1a, 0x02, 0xff, 0xfe][..], // vertex name not UTF-8
        ] {
            assert!(status_response(bad).is_err(), "{bad:?}");
        }
        assert!(secret_id(&[0x0a, 0x02, 0xff, 0xfe]).is_err());
    }

    #[test]
    fn session_requests_and_answers_use_buildkits_messages() {
        let req = GetSecretRequest {
            id: "id_rsa".into(),
            annotations: [("k".to_string(), "v".to_string())].into(),
        };
        assert_eq!(secret_id(&req.encode_to_vec()).unwrap(), "id_rsa");
        assert_eq!(secret_id(&[]).unwrap(), "");
        let host = CredentialsRequest {
            host: "ghcr.io".into(),
        };
        assert_eq!(credentials_host(&host.encode_to_vec()).unwrap(), "ghcr.io");
        assert_eq!(
            agent_bytes(&agent_message(b"\x00\x01")).unwrap(),
            b"\x00\x01"
        );
        assert_eq!(
            HealthCheckResponse::decode(health_serving().as_slice())
                .unwrap()
                .status,
            ServingStatus::Serving as i32
        );
        // The hand-made header plus the bytes is the message prost makes.
        let secret = b"s3cr3t".repeat(40);
        let mut answer = secret_response_header(secret.len());
        answer.extend_from_slice(&secret);
        let expected = bollard_buildkit_proto::moby::buildkit::secrets::v1::GetSecretResponse {
            data: secret.clone(),
        };
        assert_eq!(answer, expected.encode_to_vec());
    }
}
