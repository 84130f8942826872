//! Credentials through the real redirect: a bearer JWT verified against a JWKS file, bound to
//! the process it belongs to, refused from another; 401, 403 and their challenges; key
//! rotation; and no token anywhere in the logs or the audit trail.

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, metric_value, privileged, probe_binary,
    send_raw_with, wait_for,
};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair as _},
};
use serde_json::{Value, json};

const ISSUER: &str = "https://sso.test";
const AUDIENCE: &str = "invoices-api";

/// A signing key and its public JWK.
struct SigningKey {
    kid: &'static str,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    fn new(kid: &'static str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self {
            kid,
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": self.kid, "x": B64.encode(self.pair.public_key().as_ref()),
        })
    }

    /// A signed token for `sub` with `scope`, valid from `iat` for `lifetime` seconds.
    fn token(&self, sub: &str, scope: &str, iat: i64, lifetime: i64) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
            "iat": iat, "exp": iat + lifetime,
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(signature.as_ref()))
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn write_jwks(path: &Path, keys: &[&SigningKey]) {
    let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    fs::write(path, set.to_string()).unwrap();
}

/// Reads of invoices need a token with scope `invoices:read`; the subject `svc-billing` may be
/// used only by the probe running as root.
fn policy(upstream: SocketAddr, jwks: &Path, audit: &Path) -> String {
    let probe = fs::canonicalize(probe_binary()).unwrap();
    format!(
        r#"version: 1
settings:
  audit: {{file: {audit}}}
identities:
  billing-worker: {{exe: {probe}, user: root}}
credentials:
  sso:
    kind: jwt
    issuer: {ISSUER}
    audience: {AUDIENCE}
    algorithms: [EdDSA]
    jwksFile: {jwks}
    maxLifetime: 1h
    boundSubjects: {{svc-billing: billing-worker}}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: read-invoices
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/v1/invoices/*"]
    require: {{credential: sso, scopes: ["invoices:read"]}}
"#,
        audit = audit.display(),
        jwks = jwks.display(),
        probe = probe.display(),
    )
}

fn get(token: Option<&str>) -> Vec<u8> {
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET /v1/invoices/1 HTTP/1.1\r\nhost: api\r\n{auth}\r\n").into_bytes()
}

/// Status line and `www-authenticate` of the response to `request` from a probe in `cgroup`.
fn ask(cgroup: &Cgroup, user: Option<(u32, u32)>, to: SocketAddr, request: &[u8]) -> String {
    let report = send_raw_with(cgroup, user, to, request, false);
    let text = report["response"].as_str().unwrap_or("").to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    match text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
    {
        Some(challenge) => format!("{status} | {challenge}"),
        None => status,
    }
}

#[test]
fn a_bearer_token_works_only_for_its_process_scope_and_lifetime() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let jwks = cgroup_scoped_temp(&cgroup, "jwks.json");
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let k1 = SigningKey::new("k1");
    write_jwks(&jwks, &[&k1]);
    let mut agent = Agent::start(&cgroup, &policy(upstream.addr(), &jwks, &audit));
    let u = upstream.addr();
    let t = now();
    let good = k1.token("svc-billing", "invoices:read", t, 300);
    const NOBODY: Option<(u32, u32)> = Some((65534, 65534));

    // (case, run as, request, status line | challenge)
    type Case<'a> = (&'a str, Option<(u32, u32)>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            get(None),
            "HTTP/1.1 401 Unauthorized | www-authenticate: Bearer realm=\"sso\"",
        ),
        ("bound process", None, get(Some(&good)), "HTTP/1.1 200 OK"),
        (
            // Same token, same binary, another user: not the identity it is bound to.
            "another user",
            NOBODY,
            get(Some(&good)),
            "HTTP/1.1 403 Forbidden",
        ),
        (
            "expired",
            None,
            get(Some(&k1.token(
                "svc-billing",
                "invoices:read",
                t - 1000,
                300,
            ))),
            "HTTP/1.1 401 Unauthorized | www-authenticate: Bearer realm=\"sso\", error=\"invalid_token\", error_description=\"the token expired\"",
        ),
        (
            "lifetime over maxLifetime",
            None,
            get(Some(&k1.token("svc-billing", "invoices:read", t, 86_400))),
            "HTTP/1.1 401 Unauthorized | www-authenticate: Bearer realm=\"sso\", error=\"invalid_token\"",
        ),
        (
            "missing scope",
            None,
            get(Some(&k1.token("svc-billing", "invoices:write", t, 300))),
            "HTTP/1.1 403 Forbidden | www-authenticate: Bearer realm=\"sso\", error=\"insufficient_scope\", scope=\"invoices:read\"",
        ),
        (
            "signed by an unknown key",
            None,
            get(Some(&SigningKey::new("k1").token(
                "svc-billing",
                "invoices:read",
                t,
                300,
            ))),
            "HTTP/1.1 401 Unauthorized | www-authenticate: Bearer realm=\"sso\", error=\"invalid_token\"",
        ),
    ];
    for (name, user, request, want) in &cases {
        assert_eq!(ask(&cgroup, *user, u, request), *want, "{name}");
    }
    // Same token, another executable (curl) in the same cgroup, as root.
    let out = cgroup
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .arg("-H")
        .arg(format!("Authorization: Bearer {good}"))
        .arg(format!("http://{u}/v1/invoices/1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "another executable"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the bound process got through"
    );
    // The upstream received the credential it was sent: the application still checks it.
    assert_eq!(
        upstream.requests()[0].header("authorization"),
        Some(&*format!("Bearer {good}"))
    );

    // Rotation with overlap: k2 is added beside k1, then k1 is retired.
    let k2 = SigningKey::new("k2");
    let from_k2 = k2.token("svc-billing", "invoices:read", t, 300);
    write_jwks(&jwks, &[&k1, &k2]);
    agent.wait_event("k2 loaded", |e| {
        e["event"] == "keys_loaded" && e["keys"] == 2
    });
    assert_eq!(
        ask(&cgroup, None, u, &get(Some(&from_k2))),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(ask(&cgroup, None, u, &get(Some(&good))), "HTTP/1.1 200 OK");
    write_jwks(&jwks, &[&k2]);
    agent.wait_event("k1 retired", |e| {
        e["event"] == "keys_loaded" && e["keys"] == 1
    });
    wait_for("a token from the retired key to be refused", || {
        ask(&cgroup, None, u, &get(Some(&good)))
            .starts_with("HTTP/1.1 401")
            .then_some(())
    });
    assert_eq!(
        ask(&cgroup, None, u, &get(Some(&from_k2))),
        "HTTP/1.1 200 OK"
    );

    agent.stop();
    let records: Vec<Value> = fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allowed = records
        .iter()
        .find(|r| r["decision"] == "allow")
        .expect("an allowed record");
    assert_eq!(allowed["credential"]["name"], "sso");
    assert_eq!(allowed["credential"]["subject"], "svc-billing");
    assert_eq!(
        allowed["credential"]["fingerprint"].as_str().map(str::len),
        Some(16)
    );
    let unbound = &records[2];
    assert_eq!(unbound["status"], 403);
    assert_eq!(unbound["reason"], "credential not bound to caller");
    // No token, nor any part of one, in the audit trail or the agent's log.
    let audit_text = fs::read_to_string(&audit).unwrap();
    let log = agent.log_text();
    for token in [&good, &from_k2] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!audit_text.contains(signature), "token in the audit trail");
        assert!(!log.contains(signature), "token in the agent's log");
    }
    let _ = fs::remove_file(audit);
    let _ = fs::remove_file(jwks);
}

#[test]
fn bind_on_first_use_survives_an_agent_restart() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let jwks = cgroup_scoped_temp(&cgroup, "jwks.json");
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let k1 = SigningKey::new("k1");
    write_jwks(&jwks, &[&k1]);
    // The subject is bound to whichever process uses it first.
    let policy = policy(upstream.addr(), &jwks, &audit).replace(
        "    boundSubjects: {svc-billing: billing-worker}\n",
        "    bindOnFirstUse: subject\n",
    );
    assert!(policy.contains("bindOnFirstUse"));
    let token = k1.token("svc-reports", "invoices:read", now(), 300);
    let u = upstream.addr();
    const NOBODY: Option<(u32, u32)> = Some((65534, 65534));

    let agent = Agent::start(&cgroup, &policy);
    // First use binds the subject to the probe running as nobody...
    assert_eq!(
        ask(&cgroup, NOBODY, u, &get(Some(&token))),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        ask(&cgroup, NOBODY, u, &get(Some(&token))),
        "HTTP/1.1 200 OK"
    );
    // ...so as root, the same binary is another caller.
    assert_eq!(
        ask(&cgroup, None, u, &get(Some(&token))),
        "HTTP/1.1 403 Forbidden"
    );
    // Another token for the same subject is bound too.
    let second = k1.token("svc-reports", "invoices:read", now(), 200);
    assert_eq!(
        ask(&cgroup, None, u, &get(Some(&second))),
        "HTTP/1.1 403 Forbidden"
    );
    drop(agent);

    // A new agent on the same state directory keeps the binding.
    let _agent = Agent::start(&cgroup, &policy);
    assert_eq!(
        ask(&cgroup, None, u, &get(Some(&token))),
        "HTTP/1.1 403 Forbidden"
    );
    assert_eq!(
        ask(&cgroup, NOBODY, u, &get(Some(&token))),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(upstream.requests().len(), 3);
}

#[test]
fn an_injected_credential_replaces_the_clients_and_rotates_without_restart() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let secret = cgroup_scoped_temp(&cgroup, "payments-token");
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    fs::write(&secret, "Bearer s3cret-one\n").unwrap();
    let policy = format!(
        r#"version: 1
settings:
  audit: {{file: {audit}}}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: read-invoices
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/v1/invoices/*"]
    inject: {{header: Authorization, file: {secret}}}
"#,
        audit = audit.display(),
        upstream = upstream.addr(),
        secret = secret.display(),
    );
    let mut agent = Agent::start(&cgroup, &policy);
    let u = upstream.addr();
    let authorization = |n: usize| {
        upstream.requests()[n]
            .header("authorization")
            .map(str::to_owned)
    };

    // The application sends its own credential, or none: the upstream sees the injected one.
    assert_eq!(
        ask(&cgroup, None, u, &get(Some("client-own"))),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(ask(&cgroup, None, u, &get(None)), "HTTP/1.1 200 OK");
    assert_eq!(authorization(0).as_deref(), Some("Bearer s3cret-one"));
    assert_eq!(authorization(1).as_deref(), Some("Bearer s3cret-one"));
    let headers = upstream.requests()[0].headers.len();
    assert_eq!(
        upstream.requests()[0]
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .count(),
        1,
        "one authorization field of {headers}"
    );

    // Rotation: a new value in the file applies to the next request.
    fs::write(&secret, "Bearer s3cret-two\n").unwrap();
    agent.wait_event("the rotated secret", |e| e["event"] == "secret_loaded");
    assert_eq!(ask(&cgroup, None, u, &get(None)), "HTTP/1.1 200 OK");
    assert_eq!(authorization(2).as_deref(), Some("Bearer s3cret-two"));
    // A broken file keeps the last good value.
    fs::write(&secret, "Bearer bad\nvalue\n").unwrap();
    agent.wait_event("the refused secret", |e| e["event"] == "secret_rejected");
    assert_eq!(ask(&cgroup, None, u, &get(None)), "HTTP/1.1 200 OK");
    assert_eq!(authorization(3).as_deref(), Some("Bearer s3cret-two"));

    agent.stop();
    let audit_text = fs::read_to_string(&audit).unwrap();
    let first: Value = serde_json::from_str(audit_text.lines().next().unwrap()).unwrap();
    assert_eq!(first["injected"], "authorization");
    let log = agent.log_text();
    for secret in ["s3cret-one", "s3cret-two", "client-own"] {
        assert!(!audit_text.contains(secret), "{secret} in the audit trail");
        assert!(!log.contains(secret), "{secret} in the agent's log");
    }
}

// === OAuth2 client-credentials injection ===

/// A local HTTPS token endpoint (RFC 6749 §4.4) and JWKS endpoint (any GET) with a certificate
/// from a CA made here. POSTs get 503 until `issue` is called, then the token given, with a 2 s
/// `expires_in` so the agent refreshes about every second; GETs get 503 until `publish` is
/// called, then the JWK set. Records every request it receives.
struct TokenServer {
    addr: SocketAddr,
    ca_pem: String,
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    jwks: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TokenServer {
    fn start() -> Self {
        use std::sync::{Arc, Mutex};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let token: Arc<Mutex<Option<String>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let jwks: Arc<Mutex<Option<String>>> = Arc::default();
        let (t, j, r) = (token.clone(), jwks.clone(), requests.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let _ = serve_token(&mut tls, &t, &j, &r);
            }
        });
        Self {
            addr,
            ca_pem: ca.pem(),
            token,
            jwks,
            requests,
        }
    }

    fn issue(&self, token: &str) {
        *self.token.lock().unwrap() = Some(token.to_owned());
    }

    fn publish(&self, jwks: &str) {
        *self.jwks.lock().unwrap() = Some(jwks.to_owned());
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_token(
    tls: &mut (impl std::io::Read + std::io::Write),
    token: &std::sync::Mutex<Option<String>>,
    jwks: &std::sync::Mutex<Option<String>>,
    requests: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Head, then as much body as content-length says.
    loop {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                break;
            }
        }
    }
    requests
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&buf).to_string());
    let body = if buf.starts_with(b"GET ") {
        jwks.lock().unwrap().clone()
    } else {
        token.lock().unwrap().clone().map(|t| {
            json!({"access_token": t, "token_type": "Bearer", "expires_in": 2}).to_string()
        })
    };
    let (status, body) = match body {
        Some(body) => ("200 OK", body),
        None => (
            "503 Service Unavailable",
            r#"{"error":"temporarily_unavailable"}"#.to_string(),
        ),
    };
    write!(
        tls,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.flush()
}

#[test]
fn an_oauth2_token_is_injected_and_refreshed() {
    use std::{io::Write as _, os::unix::fs::PermissionsExt as _};
    if !privileged() {
        return;
    }
    let server = TokenServer::start();
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let ca = cgroup_scoped_temp(&cgroup, "ca.pem");
    fs::write(&ca, &server.ca_pem).unwrap();
    let secret = cgroup_scoped_temp(&cgroup, "client-secret");
    fs::File::create(&secret)
        .unwrap()
        .write_all(b"client-s3cret\n")
        .unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let policy = format!(
        r#"version: 1
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: pay
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/v1/*"]
    inject:
      header: Authorization
      oauth2:
        tokenUrl: https://{token}/oauth2/token
        clientId: billing
        clientSecretFile: {secret}
        scope: "payments:write"
        caFile: {ca}
"#,
        upstream = upstream.addr(),
        token = server.addr,
        secret = secret.display(),
        ca = ca.display(),
    );
    let mut agent = Agent::start(&cgroup, &policy);
    let u = upstream.addr();
    let request = b"GET /v1/pay HTTP/1.1\r\nhost: api\r\nauthorization: Bearer client-own\r\n\r\n";
    let send = || {
        send_raw_with(&cgroup, None, u, request, false)["response"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    // No token yet (the endpoint answers 503): the request is refused, not forwarded bare.
    wait_for("a refused token request", || {
        (!server.requests().is_empty()).then_some(())
    });
    let refused = send();
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert!(
        refused.contains("injected credential unavailable"),
        "{refused}"
    );
    assert!(upstream.requests().is_empty());
    // The failing endpoint shows in the source metrics, by reason.
    wait_for("the failure counted", || {
        let text = agent.scrape();
        let failures = metric_value(
            &text,
            r#"enforcer_credential_source_failures_total{kind="oauth2",name="pay",reason="http_status"}"#,
        );
        let last = metric_value(
            &text,
            r#"enforcer_credential_source_last_attempt_successful{kind="oauth2",name="pay"}"#,
        );
        (failures.is_some_and(|n| n >= 1.0) && last == Some(0.0)).then_some(())
    });

    // The first token is injected in place of the client's header.
    server.issue("first-token");
    wait_for("the first token upstream", || {
        send().starts_with("HTTP/1.1 200 ").then_some(())
    });
    let seen = upstream.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer first-token"));
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") != Some("Bearer client-own"))
    );

    let text = wait_for("the source healthy", || {
        let text = agent.scrape();
        (metric_value(
            &text,
            r#"enforcer_credential_source_last_attempt_successful{kind="oauth2",name="pay"}"#,
        ) == Some(1.0))
        .then_some(text)
    });
    assert!(
        metric_value(
            &text,
            r#"enforcer_credential_source_last_success_timestamp_seconds{kind="oauth2",name="pay"}"#
        )
        .is_some_and(|t| t >= now() as f64 - 600.0),
        "{text}"
    );

    // A new token replaces it after a refresh.
    server.issue("second-token");
    wait_for("the second token upstream", || {
        send();
        let seen = upstream.requests();
        (seen.last().unwrap().header("authorization") == Some("Bearer second-token")).then_some(())
    });

    // The token request: Basic client authentication and the form (RFC 6749 §4.4.2).
    let asked = server.requests();
    let first = &asked[0];
    let basic = base64::engine::general_purpose::STANDARD.encode("billing:client-s3cret");
    assert!(
        first.starts_with("POST /oauth2/token HTTP/1.1\r\n"),
        "{first}"
    );
    assert!(
        first.contains(&format!("authorization: Basic {basic}\r\n")),
        "{first}"
    );
    assert!(
        first.contains("content-type: application/x-www-form-urlencoded\r\n"),
        "{first}"
    );
    assert!(
        first.ends_with("\r\n\r\ngrant_type=client_credentials&scope=payments%3Awrite"),
        "{first}"
    );

    // Neither the tokens nor the secret appear in the log.
    agent.stop();
    let log = agent.log_text();
    for secret in ["first-token", "second-token", "client-s3cret", &basic] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert!(log.contains("token_obtained"), "{log}");
}

#[test]
fn jwks_from_a_url_are_fetched_before_tokens_verify() {
    if !privileged() {
        return;
    }
    let server = TokenServer::start();
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let ca = cgroup_scoped_temp(&cgroup, "ca.pem");
    fs::write(&ca, &server.ca_pem).unwrap();
    let policy = format!(
        r#"version: 1
credentials:
  sso:
    kind: jwt
    issuer: {ISSUER}
    audience: {AUDIENCE}
    algorithms: [EdDSA]
    jwksUrl: https://{jwks}/.well-known/jwks.json
    caFile: {ca}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: read-invoices
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/v1/invoices/*"]
    require: {{credential: sso, scopes: ["invoices:read"]}}
"#,
        upstream = upstream.addr(),
        jwks = server.addr,
        ca = ca.display(),
    );
    let mut agent = Agent::start(&cgroup, &policy);
    let u = upstream.addr();
    let k1 = SigningKey::new("k1");
    let good = k1.token("svc-billing", "invoices:read", now(), 300);

    // The endpoint answers 503: no keys yet, so a good token cannot verify.
    wait_for("a JWKS request", || {
        (!server.requests().is_empty()).then_some(())
    });
    assert_eq!(
        ask(&cgroup, None, u, &get(Some(&good))),
        "HTTP/1.1 503 Service Unavailable"
    );
    wait_for("the failure counted", || {
        metric_value(
            &agent.scrape(),
            r#"enforcer_credential_source_failures_total{kind="jwks_url",name="sso",reason="http_status"}"#,
        )
        .is_some_and(|n| n >= 1.0)
        .then_some(())
    });

    server.publish(&json!({"keys": [k1.jwk()]}).to_string());
    wait_for("the JWKS fetched", || {
        (ask(&cgroup, None, u, &get(Some(&good))) == "HTTP/1.1 200 OK").then_some(())
    });
    wait_for("the source healthy", || {
        (metric_value(
            &agent.scrape(),
            r#"enforcer_credential_source_last_attempt_successful{kind="jwks_url",name="sso"}"#,
        ) == Some(1.0))
        .then_some(())
    });
    let asked = server.requests();
    assert!(
        asked[0].starts_with("GET /.well-known/jwks.json HTTP/1.1\r\n"),
        "{}",
        asked[0]
    );
    agent.stop();
    assert!(agent.log_text().contains("JWKS fetched"));
}

/// Sets proxy variables for the agent about to start; restores them when dropped.
struct ProxyEnv(Vec<(&'static str, Option<std::ffi::OsString>)>);

impl ProxyEnv {
    fn set(https_proxy: &str) -> Self {
        let names = [
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ];
        let saved = names.iter().map(|&n| (n, std::env::var_os(n))).collect();
        // SAFETY: end-to-end tests run one at a time (`--test-threads=1`) and no other
        // thread of this test reads the environment meanwhile.
        unsafe {
            for n in names {
                std::env::remove_var(n);
            }
            std::env::set_var("HTTPS_PROXY", https_proxy);
        }
        Self(saved)
    }
}

impl Drop for ProxyEnv {
    fn drop(&mut self) {
        for (name, value) in &self.0 {
            // SAFETY: as in `set`.
            unsafe {
                match value {
                    Some(v) => std::env::set_var(name, v),
                    None => std::env::remove_var(name),
                }
            }
        }
    }
}

/// A `CONNECT` proxy on loopback that tunnels to `upstream` and records each request line.
fn connect_proxy(
    upstream: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = lines.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(line);
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = std::thread::spawn(move || std::io::copy(&mut c2, &mut s2));
                let (mut client, mut server) = (client, server);
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = up.join();
            });
        }
    });
    (addr, lines)
}

/// With `HTTPS_PROXY` set, the agent reaches the token endpoint through the proxy's `CONNECT`
/// tunnel (TLS end to end) and the token is injected.
#[test]
fn the_token_endpoint_is_reached_through_https_proxy() {
    use std::{io::Write as _, os::unix::fs::PermissionsExt as _};
    if !privileged() {
        return;
    }
    let server = TokenServer::start();
    server.issue("proxied-token");
    let (proxy, lines) = connect_proxy(server.addr);
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let ca = cgroup_scoped_temp(&cgroup, "ca.pem");
    fs::write(&ca, &server.ca_pem).unwrap();
    let secret = cgroup_scoped_temp(&cgroup, "client-secret");
    fs::File::create(&secret)
        .unwrap()
        .write_all(b"client-s3cret\n")
        .unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let policy = format!(
        r#"version: 1
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: pay
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/v1/*"]
    inject:
      header: Authorization
      oauth2:
        tokenUrl: https://{token}/oauth2/token
        clientId: billing
        clientSecretFile: {secret}
        caFile: {ca}
"#,
        upstream = upstream.addr(),
        token = server.addr,
        secret = secret.display(),
        ca = ca.display(),
    );
    let agent = {
        let _env = ProxyEnv::set(&format!("http://{proxy}"));
        Agent::start(&cgroup, &policy)
    };
    let request = b"GET /v1/pay HTTP/1.1\r\nhost: api\r\n\r\n";
    wait_for("the proxied token upstream", || {
        let answer = send_raw_with(&cgroup, None, upstream.addr(), request, false);
        answer["response"]
            .as_str()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200 "))
            .then_some(())
    });
    let last = upstream.requests().last().cloned().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer proxied-token"));
    let lines = lines.lock().unwrap().clone();
    assert!(!lines.is_empty());
    for line in &lines {
        assert_eq!(line, &format!("CONNECT {} HTTP/1.1", server.addr));
    }
    drop(agent);
}
