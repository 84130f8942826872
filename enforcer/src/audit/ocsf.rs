//! A record as an OCSF API Activity event (class 6003, category 6 "Application Activity"), for
//! SIEMs that ingest the Open Cybersecurity Schema Framework.
//!
//! The mapping, field by field, is in `docs/policy.md`. What OCSF has no place for (the
//! decision's own name, the cgroup, byte counts) goes under `unmapped`, so nothing the JSON
//! record says is lost. Like the record, the event holds no header value, query or body.

use std::net::SocketAddr;

use serde::Serialize;

use super::{Record, Verdict};

/// The OCSF schema version the events follow.
pub const SCHEMA_VERSION: &str = "1.3.0";
const CLASS_UID: u32 = 6003;
const CATEGORY_UID: u32 = 6;

#[derive(Serialize)]
pub struct ApiActivity<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    type_name: &'static str,
    /// Milliseconds since the Unix epoch (OCSF `timestamp_t`).
    time: u64,
    severity_id: u32,
    severity: &'static str,
    status_id: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<String>,
    status_detail: &'a str,
    action_id: u32,
    action: &'static str,
    disposition_id: u32,
    disposition: &'static str,
    message: String,
    metadata: Metadata<'a>,
    actor: Actor<'a>,
    api: Api<'a>,
    src_endpoint: Endpoint<'a>,
    dst_endpoint: Endpoint<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_response: Option<HttpResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<Policy<'a>>,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product,
    /// The record's request id: the same id the client got in a refusal's body.
    uid: &'a str,
    log_name: &'static str,
}

impl<'a> Metadata<'a> {
    /// This agent's metadata for an event about request `uid`.
    fn new(uid: &'a str) -> Self {
        Self {
            version: SCHEMA_VERSION,
            product: Product {
                name: "enforcer",
                vendor_name: "enforcer",
                version: env!("CARGO_PKG_VERSION"),
            },
            uid,
            log_name: "audit",
        }
    }
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Actor<'a> {
    process: Process<'a>,
    user: User<'a>,
}

#[derive(Serialize)]
struct Process<'a> {
    /// The thread group id: what `ps` shows as the process id.
    pid: u32,
    /// The thread that connected.
    tid: u32,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    user: User<'a>,
}

#[derive(Serialize)]
struct File<'a> {
    name: &'a str,
    path: &'a str,
    /// 1: regular file.
    type_id: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<Fingerprint<'a>>,
}

#[derive(Serialize)]
struct Fingerprint<'a> {
    /// 3: SHA-256.
    algorithm_id: u32,
    algorithm: &'static str,
    value: &'a str,
}

#[derive(Serialize, Clone, Copy)]
struct User<'a> {
    uid: Uid,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// OCSF user ids are strings.
#[derive(Clone, Copy)]
struct Uid(u32);

impl Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[derive(Serialize)]
struct Api<'a> {
    /// The method, or `unknown` for a request refused before one was read.
    operation: &'a str,
    service: Service<'a>,
    request: ApiRequest<'a>,
}

#[derive(Serialize)]
struct Service<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct ApiRequest<'a> {
    uid: &'a str,
}

/// An address as OCSF splits it; an unparsable one (never written by the agent) is kept whole
/// as the endpoint's name.
#[derive(Serialize)]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    svc_name: Option<&'a str>,
}

impl<'a> Endpoint<'a> {
    fn new(address: &'a str, svc_name: Option<&'a str>) -> Self {
        match address.parse::<SocketAddr>() {
            Ok(a) => Self {
                ip: Some(a.ip().to_string()),
                port: Some(a.port()),
                name: None,
                svc_name,
            },
            Err(_) => Self {
                ip: None,
                port: None,
                name: Some(address),
                svc_name,
            },
        }
    }
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    http_method: &'a str,
    url: Url<'a>,
}

#[derive(Serialize)]
struct Url<'a> {
    /// Normalised, without the query (which may carry secrets).
    path: &'a str,
}

#[derive(Serialize)]
struct HttpResponse {
    code: u16,
}

#[derive(Serialize)]
struct Policy<'a> {
    uid: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    decision: Verdict,
    mode: &'static str,
    identities: &'a [std::sync::Arc<str>],
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a super::CredentialUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    injected: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retried: bool,
    request_bytes: u64,
    response_bytes: u64,
    added_latency_us: u64,
}

/// OCSF's CRUD activity of a method: safe methods read, the rest by their usual meaning.
fn activity(method: Option<&str>) -> (u32, &'static str, &'static str) {
    match method {
        Some("GET" | "HEAD") => (2, "Read", "API Activity: Read"),
        Some("POST") => (1, "Create", "API Activity: Create"),
        Some("PUT" | "PATCH") => (3, "Update", "API Activity: Update"),
        Some("DELETE") => (4, "Delete", "API Activity: Delete"),
        _ => (99, "Other", "API Activity: Other"),
    }
}

impl<'a> From<&'a Record> for ApiActivity<'a> {
    fn from(r: &'a Record) -> Self {
        let (activity_id, activity_name, type_name) = activity(r.method.as_deref());
        let forwarded = matches!(r.decision, Verdict::Allow | Verdict::WouldDeny);
        let (severity_id, severity) = match r.decision {
            Verdict::Allow => (1, "Informational"),
            Verdict::WouldDeny => (2, "Low"),
            // A refused request is a policy violation or a malformed (possibly hostile) one.
            Verdict::Deny | Verdict::Reject => (3, "Medium"),
        };
        let succeeded = forwarded && r.status.is_some_and(|s| s < 400);
        let (status_id, status) = if succeeded {
            (1, "Success")
        } else {
            (2, "Failure")
        };
        let (action_id, action, disposition_id, disposition) = if forwarded {
            (1, "Allowed", 1, "Allowed")
        } else {
            (2, "Denied", 2, "Blocked")
        };
        let c = &*r.caller;
        let user = User {
            uid: Uid(c.uid),
            name: c.user.as_deref(),
        };
        let file = c.exe.as_deref().map(|path| File {
            name: path.rsplit('/').next().unwrap_or(path),
            path,
            type_id: 1,
            hashes: c
                .sha256
                .as_deref()
                .map(|value| Fingerprint {
                    algorithm_id: 3,
                    algorithm: "SHA-256",
                    value,
                })
                .into_iter()
                .collect(),
        });
        let decision = match r.decision {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would deny",
            Verdict::Reject => "reject",
        };
        let message = match (&r.method, &r.path) {
            (Some(m), Some(p)) => format!("{decision} {m} {p} to {}: {}", r.service, r.reason),
            _ => format!("{decision} request to {}: {}", r.service, r.reason),
        };
        Self {
            class_uid: CLASS_UID,
            class_name: "API Activity",
            category_uid: CATEGORY_UID,
            category_name: "Application Activity",
            activity_id,
            activity_name,
            type_uid: CLASS_UID * 100 + activity_id,
            type_name,
            time: (r.time * 1000.0) as u64,
            severity_id,
            severity,
            status_id,
            status,
            status_code: r.status.map(|s| s.to_string()),
            status_detail: r.detail.as_deref().unwrap_or(r.reason),
            action_id,
            action,
            disposition_id,
            disposition,
            message,
            metadata: Metadata::new(&r.request_id),
            actor: Actor {
                process: Process {
                    pid: c.tgid,
                    tid: c.pid,
                    name: &c.comm,
                    file,
                    user,
                },
                user,
            },
            api: Api {
                operation: r.method.as_deref().unwrap_or("unknown"),
                service: Service { name: &r.service },
                request: ApiRequest { uid: &r.request_id },
            },
            src_endpoint: Endpoint::new(&r.client, None),
            dst_endpoint: Endpoint::new(&r.destination, Some(&r.service)),
            http_request: r.method.as_deref().map(|method| HttpRequest {
                http_method: method,
                url: Url {
                    path: r.path.as_deref().unwrap_or(""),
                },
            }),
            http_response: r.status.map(|code| HttpResponse { code }),
            policy: r.rule.as_deref().map(|rule| Policy {
                uid: rule,
                name: rule,
            }),
            unmapped: Unmapped {
                decision: r.decision,
                mode: r.mode,
                identities: &r.identities,
                gid: c.gid,
                group: c.group.as_deref(),
                cgroup_id: c.cgroup_id,
                cgroup: c.cgroup.as_deref(),
                unit: c.unit.as_deref(),
                container: c.container.as_deref(),
                credential: r.credential.as_ref(),
                injected: r.injected.as_deref(),
                retried: r.retried,
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
                added_latency_us: r.added_latency_us,
            },
        }
    }
}

/// An anomaly record as an OCSF Detection Finding (class 2004, category 2 "Findings"): the
/// detector is the analytic, the identity and measures go under `unmapped`.
#[derive(Serialize)]
pub struct DetectionFinding<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    /// 1: Create (a new finding).
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    type_name: &'static str,
    time: u64,
    /// 3: Medium — worth a look, not proof of compromise.
    severity_id: u32,
    severity: &'static str,
    message: &'a str,
    metadata: Metadata<'a>,
    finding_info: FindingInfo<'a>,
    unmapped: &'a super::AnomalyRecord,
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    /// Unique per finding: the kind, identity and time.
    uid: String,
    title: String,
    desc: &'a str,
    types: [&'a str; 1],
    analytic: Analytic<'a>,
}

#[derive(Serialize)]
struct Analytic<'a> {
    name: &'a str,
    /// 2: Behavioral.
    type_id: u32,
    #[serde(rename = "type")]
    type_name: &'static str,
}

const FINDING_CLASS_UID: u32 = 2004;

impl<'a> From<&'a super::AnomalyRecord> for DetectionFinding<'a> {
    fn from(a: &'a super::AnomalyRecord) -> Self {
        let time = (a.time * 1000.0) as u64;
        Self {
            class_uid: FINDING_CLASS_UID,
            class_name: "Detection Finding",
            category_uid: 2,
            category_name: "Findings",
            activity_id: 1,
            activity_name: "Create",
            type_uid: FINDING_CLASS_UID * 100 + 1,
            type_name: "Detection Finding: Create",
            time,
            severity_id: 3,
            severity: "Medium",
            message: &a.explanation,
            metadata: Metadata::new(a.request_id.as_deref().unwrap_or("")),
            finding_info: FindingInfo {
                uid: format!("{}:{}:{time}", a.kind, a.identity),
                title: format!("{} anomaly for identity {}", a.kind, a.identity),
                desc: &a.explanation,
                types: [a.kind],
                analytic: Analytic {
                    name: a.kind,
                    type_id: 2,
                    type_name: "Behavioral",
                },
            },
            unmapped: a,
        }
    }
}
