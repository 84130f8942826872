//! The `credentials` section and rules' `require`: every diagnostic, and how requirements
//! decide (401, 403, 503, fall-through to later rules, grants).

use std::{fs, os::unix::fs::PermissionsExt as _};

use serde_json::json;

use super::*;
use crate::credentials::{
    self as c, BindingKey, CredentialCheck, CredentialError, CredentialKind, Fingerprinter,
    JwtError, Rejection, UnixTime,
    tests::{
        AUDIENCE, ISSUER, NOW, TestKey,
        cache::{Scratch, scratch, write_jwks},
        good_claims,
    },
};

/// Files a policy names: a JWKS of `sso`'s key, a secret file for `hs`.
struct Files {
    dir: Scratch,
    sso: TestKey,
    hs: TestKey,
}

fn files() -> Files {
    let dir = scratch("policy");
    let sso = TestKey::es256("sso-1");
    write_jwks(&dir.0.join("sso.json"), &[&sso]);
    let hs = TestKey::hmac("hs-1", &[9; 32]);
    let secret = dir.0.join("hs.json");
    fs::write(&secret, json!({"keys": [hs.public]}).to_string()).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    Files { dir, sso, hs }
}

/// SHA-256 of `ops-key-2024` and `ops-key-2025`.
fn digest(key: &str) -> String {
    c::api_key_digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decide_policy(f: &Files) -> Policy {
    let dir = f.dir.0.display();
    policy(&format!(
        "version: 1
identities:
  billing: {{exe: /usr/bin/billing}}
  deploy: {{exe: /usr/bin/deploy}}
credentials:
  sso:
    kind: jwt
    issuer: {ISSUER}
    audience: {AUDIENCE}
    algorithms: [ES256]
    jwksFile: {dir}/sso.json
    maxLifetime: 1h
    boundSubjects: {{deploy@svc: deploy}}
    bindOnFirstUse: subject
  hs:
    kind: jwt
    issuer: {ISSUER}
    audience: {AUDIENCE}
    algorithms: [HS256]
    secretFile: {dir}/hs.json
    bindOnFirstUse: token
  later:
    kind: jwt
    issuer: {ISSUER}
    audience: {AUDIENCE}
    algorithms: [ES256]
    jwksFile: {dir}/not-yet.json
  ops:
    kind: apiKey
    header: x-api-key
    keys:
      - {{name: ops-2024, sha256: {old}, notAfter: \"2025-02-01T00:00:00Z\"}}
      - {{name: ops-2025, sha256: {new}, notBefore: \"2025-01-15T00:00:00Z\", boundTo: deploy}}
services:
  payments: {{endpoints: [\"10.20.0.5:8080\"]}}
rules:
  - id: write-invoices
    from: [billing, deploy]
    to: payments
    methods: [POST]
    paths: [/v1/invoices]
    require: {{credential: sso, scopes: [invoices:write], claims: {{tenant: acme, level: 3}}}}
  - id: admin
    from: [billing]
    to: payments
    methods: [GET]
    paths: [\"/v1/**\"]
    require: {{credential: sso, scopes: [admin]}}
  - id: reports
    from: [billing]
    to: payments
    methods: [GET]
    paths: [/v1/reports]
  - id: hs-exports
    from: [billing]
    to: payments
    methods: [GET]
    paths: [/v1/exports]
    require: {{credential: hs}}
  - id: ops-or-later
    from: [billing, deploy]
    to: payments
    methods: [DELETE]
    paths: [\"/v1/**\"]
    require: {{credential: ops}}
  - id: later
    from: [billing]
    to: payments
    methods: [DELETE]
    paths: [/v1/cache]
    require: {{credential: later}}
  - id: dry-run
    from: [deploy]
    to: payments
    methods: [PUT]
    paths: [/v1/config]
    require: {{credential: sso}}
    mode: audit
",
        old = digest("ops-key-2024"),
        new = digest("ops-key-2025"),
    ))
}

struct Asked<'a> {
    p: &'a Policy,
    fp: &'a Fingerprinter,
}

impl Asked<'_> {
    /// Decide as of `now`; the verdict, rule, reason, and the check.
    fn at(
        &self,
        caller: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        now: UnixTime,
    ) -> (Verdict, Option<String>, Reason, CredentialCheck<'_>) {
        let who = who().exe(caller);
        let ids = self.p.classify(&who.0);
        let mut check = CredentialCheck::new(now, self.fp);
        let d = self
            .p
            .decide_with(&ids, "payments", method, path, headers, None, &mut check);
        let rule = d.rule_id().map(str::to_owned);
        (d.verdict, rule, d.reason, check)
    }

    fn ask(
        &self,
        caller: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Verdict, Option<String>, Reason, CredentialCheck<'_>) {
        self.at(caller, method, path, headers, NOW)
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const BILLING: &str = "/usr/bin/billing";
const DEPLOY: &str = "/usr/bin/deploy";

#[test]
fn a_required_token_must_verify_and_grant_what_the_rule_asks() {
    let f = files();
    let p = decide_policy(&f);
    let fp = Fingerprinter::from_key(&[1; 32]);
    let a = Asked { p: &p, fp: &fp };
    let token = f.sso.token("ES256", &good_claims());
    let auth = bearer(&token);

    // Allowed: the grant says who, with a fingerprint and the binding key.
    let (v, rule, reason, check) =
        a.ask(BILLING, "POST", "/v1/invoices", &[("authorization", &auth)]);
    assert_eq!(
        (v, rule.as_deref(), reason),
        (Verdict::Allow, Some("write-invoices"), Reason::Rule)
    );
    let grant = check.grant().unwrap();
    assert_eq!(
        (
            &*grant.credential,
            grant.kind,
            grant.subject.as_deref(),
            grant.fingerprint,
            grant.expires,
            &grant.bind_on_first_use
        ),
        (
            "sso",
            CredentialKind::Jwt,
            Some("billing@svc"),
            fp.fingerprint(token.as_bytes()),
            Some(UnixTime::from_secs(NOW.as_secs() + 590)),
            &Some(BindingKey::Subject("billing@svc".into()))
        )
    );
    assert_eq!(check.failure(), None);

    // No token: 401 with a bare challenge.
    let (v, _, reason, check) = a.ask(BILLING, "POST", "/v1/invoices", &[]);
    assert_eq!(
        (v, reason),
        (Verdict::Deny, Reason::Credential(Rejection::Missing))
    );
    let failure = check.failure().unwrap();
    assert_eq!(
        (
            failure.status(),
            failure.www_authenticate().as_deref(),
            &*failure.rule
        ),
        (401, Some("Bearer realm=\"sso\""), "write-invoices")
    );
    assert_eq!(check.grant(), None);

    // Expired: 401 invalid_token, with the facts.
    let mut claims = good_claims();
    claims["exp"] = json!(NOW.as_secs() - 100);
    let expired = bearer(&f.sso.token("ES256", &claims));
    let (_, _, reason, check) = a.ask(
        BILLING,
        "POST",
        "/v1/invoices",
        &[("authorization", &expired)],
    );
    assert_eq!(reason, Reason::Credential(Rejection::Invalid));
    let failure = check.failure().unwrap();
    assert_eq!(
        failure.error,
        CredentialError::Jwt(JwtError::Expired {
            exp: UnixTime::from_secs(NOW.as_secs() - 100),
            now: NOW,
            leeway: 60
        })
    );
    assert_eq!(
        failure.www_authenticate().as_deref(),
        Some(
            "Bearer realm=\"sso\", error=\"invalid_token\", error_description=\"the token expired\""
        )
    );
    assert_eq!(
        failure.to_string(),
        "rule `write-invoices`: credential `sso`: expired at 2023-11-14T22:11:40Z (now \
         2023-11-14T22:13:20Z, leeway 60s)"
    );

    // Valid, but the scope is missing: 403 insufficient_scope.
    let mut claims = good_claims();
    claims["scope"] = json!("invoices:read");
    let reader = bearer(&f.sso.token("ES256", &claims));
    let (_, _, reason, check) = a.ask(
        BILLING,
        "POST",
        "/v1/invoices",
        &[("authorization", &reader)],
    );
    assert_eq!(reason, Reason::Credential(Rejection::InsufficientScope));
    let failure = check.failure().unwrap();
    assert_eq!(
        (failure.status(), failure.www_authenticate().as_deref()),
        (
            403,
            Some("Bearer realm=\"sso\", error=\"insufficient_scope\", scope=\"invoices:write\"")
        )
    );

    // Valid, but a claim differs: 403.
    let mut claims = good_claims();
    claims["tenant"] = json!("globex");
    let other = bearer(&f.sso.token("ES256", &claims));
    let (_, _, reason, check) = a.ask(
        BILLING,
        "POST",
        "/v1/invoices",
        &[("authorization", &other)],
    );
    assert_eq!(reason, Reason::Credential(Rejection::ClaimMismatch));
    assert_eq!(
        check.failure().unwrap().error,
        CredentialError::ClaimMismatch {
            claim: "tenant".into()
        }
    );
    assert_eq!(check.failure().unwrap().www_authenticate(), None);

    // A subject bound to another identity: 403.
    let mut claims = good_claims();
    claims["sub"] = json!("deploy@svc");
    let deploys = bearer(&f.sso.token("ES256", &claims));
    let (_, _, reason, check) = a.ask(
        BILLING,
        "POST",
        "/v1/invoices",
        &[("authorization", &deploys)],
    );
    assert_eq!(reason, Reason::Credential(Rejection::NotBound));
    assert_eq!(
        check.failure().unwrap().error,
        CredentialError::NotBound {
            identity: "deploy".into()
        }
    );
    let (v, ..) = a.ask(
        DEPLOY,
        "POST",
        "/v1/invoices",
        &[("authorization", &deploys)],
    );
    assert_eq!(v, Verdict::Allow);

    // Two Authorization headers: 401 invalid_request.
    let (_, _, reason, check) = a.ask(
        BILLING,
        "POST",
        "/v1/invoices",
        &[("authorization", &auth), ("authorization", &auth)],
    );
    assert_eq!(reason, Reason::Credential(Rejection::Invalid));
    assert_eq!(
        check.failure().unwrap().www_authenticate().as_deref(),
        Some("Bearer realm=\"sso\", error=\"invalid_request\"")
    );
}

#[test]
fn a_failed_requirement_falls_through_to_later_rules() {
    let f = files();
    let p = decide_policy(&f);
    let fp = Fingerprinter::from_key(&[1; 32]);
    let a = Asked { p: &p, fp: &fp };
    let auth = bearer(&f.sso.token("ES256", &good_claims()));
    // `admin` (scope admin) fails, `reports` needs nothing: allowed by `reports`, and the
    // failure that did not decide is not reported.
    for headers in [&[("authorization", auth.as_str())][..], &[]] {
        let (v, rule, reason, check) = a.ask(BILLING, "GET", "/v1/reports", headers);
        assert_eq!(
            (v, rule.as_deref(), reason),
            (Verdict::Allow, Some("reports"), Reason::Rule)
        );
        assert_eq!((check.grant(), check.failure()), (None, None));
    }
    // Without `reports`, the scope failure decides.
    let (v, _, reason, _) = a.ask(BILLING, "GET", "/v1/other", &[("authorization", &auth)]);
    assert_eq!(
        (v, reason),
        (
            Verdict::Deny,
            Reason::Credential(Rejection::InsufficientScope)
        )
    );
    // Another caller: no rule names it; its presented token changes nothing.
    let (v, _, reason, _) = a.ask(
        "/usr/bin/other",
        "POST",
        "/v1/invoices",
        &[("authorization", &auth)],
    );
    assert_eq!((v, reason), (Verdict::Deny, Reason::NoMatchingRule));
}

#[test]
fn the_most_significant_failure_decides() {
    let f = files();
    let p = decide_policy(&f);
    let fp = Fingerprinter::from_key(&[1; 32]);
    let a = Asked { p: &p, fp: &fp };
    let day = |s: &str| c::parse_rfc3339(s).unwrap();
    // DELETE /v1/cache: `ops-or-later` (API key) and `later` (JWKS not there). No key and
    // no token: 401, as no keys are needed to see that nothing was presented.
    let t = day("2025-01-20T00:00:00Z");
    let (_, _, reason, check) = a.at(BILLING, "DELETE", "/v1/cache", &[], t);
    assert_eq!(reason, Reason::Credential(Rejection::Missing));
    assert_eq!(&*check.failure().unwrap().rule, "ops-or-later");
    // A token for `later`, whose keys are unavailable: 503 over 401, whatever the token.
    let token = bearer("e30.e30.sig");
    let (_, _, reason, check) = a.at(
        BILLING,
        "DELETE",
        "/v1/cache",
        &[("authorization", &token)],
        t,
    );
    assert_eq!(reason, Reason::Credential(Rejection::Unavailable));
    let failure = check.failure().unwrap();
    assert_eq!(
        (failure.status(), &*failure.rule, failure.www_authenticate()),
        (503, "later", None)
    );
    assert!(matches!(
        &failure.error,
        CredentialError::Jwt(JwtError::KeysUnavailable { why }) if why.starts_with("cannot read ")
    ));
    // DELETE elsewhere: only the API key rule. The 2025 key is bound to `deploy`.
    let old = [("x-api-key", "ops-key-2024")];
    let new = [("x-api-key", "ops-key-2025")];
    let (v, rule, _, check) = a.at(BILLING, "DELETE", "/v1/x", &old, t);
    assert_eq!((v, rule.as_deref()), (Verdict::Allow, Some("ops-or-later")));
    let grant = check.grant().unwrap();
    assert_eq!(
        (
            grant.kind,
            grant.subject.as_deref(),
            grant.fingerprint,
            grant.expires
        ),
        (
            CredentialKind::ApiKey,
            Some("ops-2024"),
            fp.fingerprint(b"ops-key-2024"),
            Some(day("2025-02-01T00:00:00Z"))
        )
    );
    let (_, _, reason, _) = a.at(BILLING, "DELETE", "/v1/x", &new, t);
    assert_eq!(reason, Reason::Credential(Rejection::NotBound));
    let (v, ..) = a.at(DEPLOY, "DELETE", "/v1/x", &new, t);
    assert_eq!(v, Verdict::Allow);
    // After the old key's notAfter: 401, and the challenge names the credential.
    let (_, _, reason, check) = a.at(
        BILLING,
        "DELETE",
        "/v1/x",
        &old,
        day("2025-02-01T00:00:00Z"),
    );
    assert_eq!(reason, Reason::Credential(Rejection::Invalid));
    assert_eq!(
        check.failure().unwrap().www_authenticate().as_deref(),
        Some("ApiKey realm=\"ops\"")
    );
}

#[test]
fn hmac_credentials_bind_tokens_by_fingerprint() {
    let f = files();
    let p = decide_policy(&f);
    let fp = Fingerprinter::from_key(&[1; 32]);
    let a = Asked { p: &p, fp: &fp };
    let token = f.hs.token("HS256", &good_claims());
    let (v, _, _, check) = a.ask(
        BILLING,
        "GET",
        "/v1/exports",
        &[("authorization", &bearer(&token))],
    );
    assert_eq!(v, Verdict::Allow);
    assert_eq!(
        check.grant().unwrap().bind_on_first_use,
        Some(BindingKey::Token(fp.fingerprint(token.as_bytes())))
    );
    // GET /v1/exports is also under `admin` (sso, scope admin). An sso token: invalid for
    // `hs-exports` (ES256 is not allowed there, 401), valid but without the scope for `admin`
    // (403): the caller authenticated, so 403.
    let es = f.sso.token("ES256", &good_claims());
    let (_, _, reason, check) = a.ask(
        BILLING,
        "GET",
        "/v1/exports",
        &[("authorization", &bearer(&es))],
    );
    assert_eq!(reason, Reason::Credential(Rejection::InsufficientScope));
    assert_eq!(&*check.failure().unwrap().rule, "admin");
    // A token signed with another secret: invalid for both (401); the earlier rule's failure
    // is reported.
    let forged = TestKey::hmac("hs-1", &[8; 32]).token("HS256", &good_claims());
    let (_, _, reason, check) = a.ask(
        BILLING,
        "GET",
        "/v1/exports",
        &[("authorization", &bearer(&forged))],
    );
    assert_eq!(reason, Reason::Credential(Rejection::Invalid));
    let failure = check.failure().unwrap();
    assert_eq!(
        (&*failure.rule, &failure.error),
        (
            "admin",
            &CredentialError::Jwt(JwtError::AlgNotAllowed {
                alg: c::Algorithm::Hs256,
                allowed: c::AlgorithmSet::empty().with(c::Algorithm::Es256)
            })
        )
    );
}

#[test]
fn audit_rules_and_the_plain_decide() {
    let f = files();
    let p = decide_policy(&f);
    let fp = Fingerprinter::from_key(&[1; 32]);
    let a = Asked { p: &p, fp: &fp };
    // A requirement in audit mode: forwarded, recorded with the credential reason.
    let (v, rule, reason, _) = a.ask(DEPLOY, "PUT", "/v1/config", &[]);
    assert_eq!(
        (v, rule.as_deref(), reason),
        (
            Verdict::AuditDeny,
            Some("dry-run"),
            Reason::Credential(Rejection::Missing)
        )
    );
    // `decide` checks credentials too (system clock), without a grant.
    let ids = p.classify(&who().exe(BILLING).0);
    let mut claims = good_claims();
    let now = UnixTime::now().as_secs();
    claims["iat"] = json!(now);
    claims["nbf"] = json!(now);
    claims["exp"] = json!(now + 600);
    let auth = bearer(&f.sso.token("ES256", &claims));
    let d = p.decide(
        &ids,
        "payments",
        "POST",
        "/v1/invoices",
        &[("authorization", auth.as_str())][..],
        None,
    );
    assert_eq!(
        (d.verdict, d.rule_id()),
        (Verdict::Allow, Some("write-invoices"))
    );
    let d = p.decide(
        &ids,
        "payments",
        "POST",
        "/v1/invoices",
        &[][..] as &[(&str, &str)],
        None,
    );
    assert_eq!(
        (d.verdict, d.reason.as_str()),
        (Verdict::Deny, "credential missing")
    );
    // A check reused for the next request starts over.
    let mut check = CredentialCheck::new(NOW, &fp);
    let good = bearer(&f.sso.token("ES256", &good_claims()));
    let first = p.decide_with(
        &ids,
        "payments",
        "POST",
        "/v1/invoices",
        &[("authorization", good.as_str())][..],
        None,
        &mut check,
    );
    assert_eq!(first.verdict, Verdict::Allow);
    let second = p.decide_with(
        &ids,
        "payments",
        "POST",
        "/v1/invoices",
        &[][..] as &[(&str, &str)],
        None,
        &mut check,
    );
    assert_eq!(
        (second.verdict, second.reason, check.grant()),
        (Verdict::Deny, Reason::Credential(Rejection::Missing), None)
    );
}

#[test]
fn jwks_files_are_refreshed_through_the_policy() {
    let f = files();
    let p = decide_policy(&f);
    assert_eq!(
        p.credentials()
            .unavailable()
            .iter()
            .map(|(c, _)| c.to_string())
            .collect::<Vec<_>>(),
        ["later"]
    );
    let later = TestKey::es256("later-1");
    write_jwks(&f.dir.0.join("not-yet.json"), &[&later]);
    let outcomes: Vec<(String, bool)> = p
        .credentials()
        .refresh_if_changed()
        .into_iter()
        .map(|r| {
            (
                r.credential.to_string(),
                matches!(r.outcome, c::Refresh::Loaded { .. }),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("sso".to_owned(), false), ("later".to_owned(), true)]
    );
    assert!(p.credentials().unavailable().is_empty());
}

#[test]
fn explain_names_the_credential() {
    let f = files();
    let p = decide_policy(&f);
    let rule = p.rules().iter().find(|r| r.id() == "admin").unwrap();
    assert_eq!(
        rule.requirement().map(c::Requirement::credential),
        Some("sso")
    );
    assert_eq!(
        rule.unmet("GET", &[][..] as &[(&str, &str)], None)
            .as_deref(),
        Some("needs credential `sso`, which explain cannot present")
    );
}

// === check ===

const HEAD: &str = "version: 1
identities:
  billing: {exe: /usr/bin/billing}
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
";

#[test]
fn every_credential_error_with_its_place() {
    let f = files();
    let dir = f.dir.0.display();
    let open = f.dir.0.join("open.json");
    fs::write(&open, json!({"keys": [f.hs.public]}).to_string()).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    let short = f.dir.0.join("short.json");
    fs::write(&short, json!({"keys": [f.hs.public]}).to_string()).unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    let keys = f.dir.0.join("keys.yaml");
    fs::write(
        &keys,
        "keys:\n  - name: k1\n    sha256: nothex\n  - name: k2\n    sha256: \
         0000000000000000000000000000000000000000000000000000000000000000\n    notBefore: tomorrow\n",
    )
    .unwrap();
    let text = format!(
        "{HEAD}credentials:
  a:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [RS256, none, ES512, HS256]
    jwksFile: {dir}/a.json
  b:
    kind: jwt
    algorithms: [HS256]
  c:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [RS256]
    secretFile: {dir}/hs.json
    leeway: 1h
    maxLifetime: 0s
    header: x-key
  d:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [HS512]
    secretFile: {short}
  e:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [HS256]
    secretFile: {open}
    boundTo: nobody
  f:
    kind: apiKey
    header: x-api-key
    issuer: https://i
    keys:
      - {{name: k1, sha256: ABCD}}
      - {{name: k1, sha256: {zeros}, notBefore: \"2025-02-01T00:00:00Z\", notAfter: \"2025-01-01T00:00:00Z\"}}
      - {{name: k3, sha256: {zeros}, boundTo: nobody}}
  g:
    kind: apiKey
    keysFile: {keys}
  h:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [RS256]
    jwksFile: relative.json
    secretFile: {dir}/hs.json
rules:
  - id: r1
    from: [billing]
    to: api
    methods: [GET]
    paths: [/]
    require: {{credential: nope}}
  - id: r2
    from: [billing]
    to: api
    methods: [GET]
    paths: [/]
    require: {{credential: f, scopes: [read]}}
  - id: r3
    from: [billing]
    to: api
    methods: [GET]
    paths: [/]
    require: {{credential: a, scopes: [\"two words\"], claims: {{tenant: acme}}}}
",
        short = short.display(),
        open = open.display(),
        keys = keys.display(),
        zeros = "0".repeat(64),
    );
    let open = open.display();
    let short = short.display();
    let keys = keys.display();
    let want = [
        "test.yaml:11:25: credential `a`: `none` is never allowed: an unsigned token proves nothing".to_owned(),
        "test.yaml:11:31: credential `a`: algorithm `ES512` is not offered: ECDSA on P-521, which `ring` does not implement (supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)".to_owned(),
        "test.yaml:11:38: credential `a`: HS256 needs `secretFile`: HMAC keys never come from a JWKS".to_owned(),
        "test.yaml:13:3: credential `b`: `issuer` is required: tokens minted for another issuer must not be accepted".to_owned(),
        "test.yaml:13:3: credential `b`: `audience` is required: tokens minted for another service must not be accepted".to_owned(),
        "test.yaml:13:3: credential `b`: no keys: give `jwksFile` (public keys), or `secretFile` for HS256, HS384 and HS512".to_owned(),
        "test.yaml:20:18: credential `c`: RS256 verifies with public keys: give `jwksFile` (a `secretFile` holds HMAC secrets only)".to_owned(),
        "test.yaml:22:13: credential `c`: `leeway` `1h` is over 10m: clock skew that large is a broken clock".to_owned(),
        "test.yaml:23:18: credential `c`: bad `maxLifetime` `0s`: expected a positive whole number and a unit: `500ms`, `10s`, `2m`, `1h`".to_owned(),
        "test.yaml:24:13: credential `c`: `header` applies to apiKey credentials, not jwt".to_owned(),
        format!("test.yaml:30:17: credential `d`: secret file `{short}`: key `hs-1` is 32 bytes, too short for HS512 (at least 64)"),
        format!("test.yaml:36:17: credential `e`: secret file `{open}`: mode 0644 lets other users read or change it; make it 0600 (or 0400)"),
        "test.yaml:37:14: credential `e`: unknown identity `nobody`".to_owned(),
        "test.yaml:41:13: credential `f`: `issuer` applies to jwt credentials, not apiKey".to_owned(),
        "test.yaml:43:28: credential `f`: key `k1`: bad `sha256`: expected 64 lower-case hex digits (the SHA-256 of the key, never the key)".to_owned(),
        "test.yaml:44:16: credential `f`: duplicate key name `k1` (first at test.yaml:43:16)".to_owned(),
        "test.yaml:44:139: credential `f`: key `k1`: `notAfter` (2025-01-01T00:00:00Z) is not after `notBefore` (2025-02-01T00:00:00Z)".to_owned(),
        "test.yaml:45:28: credential `f`: key `k3` has the same digest as the key at test.yaml:44:16: one key, one name".to_owned(),
        "test.yaml:45:103: credential `f`: unknown identity `nobody`".to_owned(),
        "test.yaml:46:3: credential `g`: say where the key is: `header: NAME` or `query: NAME`".to_owned(),
        "test.yaml:55:17: credential `h`: give `jwksFile` or `secretFile`, not both: HMAC secrets and public keys are never mixed".to_owned(),
        "test.yaml:62:27: rule `r1`: unknown credential `nope`".to_owned(),
        "test.yaml:68:39: rule `r2`: credential `f` is an API key, which carries no scopes".to_owned(),
        "test.yaml:74:39: rule `r3`: bad scope `two words`: one scope token, printable ASCII without spaces, `\"` or `\\`".to_owned(),
        format!("{keys}:3:13: credential `g`: key `k1`: bad `sha256`: expected 64 lower-case hex digits (the SHA-256 of the key, never the key)"),
        format!("{keys}:6:16: credential `g`: key `k2`: bad `notBefore` `tomorrow`: expected an RFC 3339 date-time such as `2025-01-31T00:00:00Z`"),
    ];
    let got = diagnostics(&text);
    let got: Vec<&str> = got.lines().collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want);
}

#[test]
fn syntax_errors_in_the_credentials_section() {
    let cases = [
        (
            "unknown field",
            format!("{HEAD}credentials:\n  a:\n    kind: jwt\n    isuer: x\n"),
            "test.yaml:9:5: unknown field `isuer`, expected one of kind, issuer, audience, \
             algorithms, jwksFile, jwksUrl, caFile, secretFile, leeway, maxLifetime, maxTokenBytes, \
             boundSubjects, header, query, keys, keysFile, boundTo, bindOnFirstUse",
        ),
        (
            "unknown kind",
            format!("{HEAD}credentials:\n  a:\n    kind: saml\n"),
            "test.yaml:8:11: unknown variant `saml`, expected one of jwt, apiKey",
        ),
        (
            "unknown require field",
            format!(
                "{HEAD}rules:\n  - id: r\n    from: [billing]\n    to: api\n    methods: [GET]\n    \
                 paths: [/]\n    require: {{credential: a, scope: [x]}}\n"
            ),
            "test.yaml:12:30: unknown field `scope`, expected one of credential, scopes, claims",
        ),
        (
            "bad bindOnFirstUse",
            format!("{HEAD}credentials:\n  a:\n    kind: jwt\n    bindOnFirstUse: yes\n"),
            "test.yaml:9:21: unknown variant `yes`, expected one of subject, token",
        ),
    ];
    for (name, text, want) in cases {
        assert_eq!(diagnostics(&text), want, "{name}");
    }
}

#[test]
fn a_valid_credentials_section() {
    let f = files();
    let p = decide_policy(&f);
    let names: Vec<(&str, CredentialKind)> = p
        .credentials()
        .iter()
        .map(|c| (c.name(), c.kind()))
        .collect();
    assert_eq!(
        names,
        [
            ("sso", CredentialKind::Jwt),
            ("hs", CredentialKind::Jwt),
            ("later", CredentialKind::Jwt),
            ("ops", CredentialKind::ApiKey)
        ]
    );
    // Claim values keep their YAML type: a quoted number is a string.
    let text = format!(
        "{HEAD}credentials:
  c: {{kind: jwt, issuer: i, audience: a, algorithms: [ES256], jwksFile: /nonexistent.json}}
rules:
  - id: r
    from: [billing]
    to: api
    methods: [GET]
    paths: [/]
    require:
      credential: c
      claims: {{s: acme, q: \"3\", i: 3, f: 1.5, w: 2.0, b: true, qb: \"true\", y: yes}}
"
    );
    let p = policy(&text);
    let claims: Vec<(&str, &c::ClaimValue)> =
        p.rules()[0].requirement().unwrap().claims().collect();
    let s = |v: &str| c::ClaimValue::String(v.into());
    assert_eq!(
        claims,
        [
            ("s", &s("acme")),
            ("q", &s("3")),
            ("i", &c::ClaimValue::Integer(3)),
            ("f", &c::ClaimValue::Float(1.5)),
            ("w", &c::ClaimValue::Integer(2)),
            ("b", &c::ClaimValue::Bool(true)),
            ("qb", &s("true")),
            ("y", &s("yes")),
        ]
    );
    // A policy without credentials decides exactly as before.
    assert!(policy(decide_policy_text()).credentials().is_empty());
}

/// The example of `docs/policy.md`'s `credentials` section is a valid policy (its JWKS file
/// does not exist here: its keys are unavailable, which does not stop the policy loading).
#[test]
fn the_documented_example_checks() {
    const DOC: &str = include_str!("../../../../docs/policy.md");
    let section = &DOC[DOC.find("## `credentials`").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let text = format!(
        "version: 1
identities:
  billing-worker: {{exe: /usr/local/bin/billing-worker}}
  deploy-bot: {{systemdUnit: deploy-bot.service}}
services:
  payments: {{endpoints: [\"10.20.0.5:8080\"]}}
{example}"
    );
    let p = policy(&text);
    assert_eq!(
        p.credentials()
            .unavailable()
            .iter()
            .map(|(c, _)| c.to_string())
            .collect::<Vec<_>>(),
        ["corp-sso"]
    );
    let keys = [("x-api-key", "example-ops-key-2025")];
    let who = who().cgroup(
        "/system.slice/deploy-bot.service",
        Some("deploy-bot.service"),
        None,
    );
    let ids = p.classify(&who.0);
    let fp = Fingerprinter::from_key(&[1; 32]);
    let mut check = CredentialCheck::new(c::parse_rfc3339("2025-01-20T00:00:00Z").unwrap(), &fp);
    let d = p.decide_with(
        &ids,
        "payments",
        "POST",
        "/v1/releases/7",
        &keys[..],
        None,
        &mut check,
    );
    assert_eq!(d.rule_id(), Some("deploy-bot-releases"));
}

fn decide_policy_text() -> &'static str {
    decide_policy_str()
}

fn decide_policy_str() -> &'static str {
    super::decide_policy()
}

#[test]
fn oauth2_injection_errors_with_their_place() {
    let f = files();
    let dir = f.dir.0.display();
    let secret = f.dir.0.join("client-secret");
    fs::write(&secret, "s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let open = f.dir.0.join("open-secret");
    fs::write(&open, "s3cret\n").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    let rule = |id: &str, inject: &str| {
        format!(
            "  - id: {id}\n    from: [billing]\n    to: api\n    methods: [GET]\n    paths: [/]\n    \
             inject:\n      header: Authorization\n{inject}"
        )
    };
    let text = format!(
        "{HEAD}rules:\n{}{}{}{}{}{}",
        rule(
            "plain",
            &format!(
                "      oauth2:\n        tokenUrl: http://auth.internal/token\n        \
                 clientId: billing\n        clientSecretFile: {}\n",
                secret.display()
            )
        ),
        rule(
            "open",
            &format!(
                "      oauth2:\n        tokenUrl: https://auth.internal/token\n        \
                 clientId: billing\n        clientSecretFile: {}\n",
                open.display()
            )
        ),
        rule(
            "noca",
            &format!(
                "      oauth2:\n        tokenUrl: https://auth.internal/token\n        \
                 clientId: billing\n        clientSecretFile: {}\n        caFile: {dir}/none.pem\n",
                secret.display()
            )
        ),
        rule(
            "both",
            &format!(
                "      file: {}\n      oauth2:\n        tokenUrl: https://a/t\n        \
                 clientId: b\n        clientSecretFile: {}\n",
                secret.display(),
                secret.display()
            )
        ),
        rule("neither", ""),
        rule(
            "good",
            &format!(
                "      oauth2:\n        tokenUrl: https://auth.internal/token\n        \
                 clientId: billing\n        clientSecretFile: {}\n        scope: \"payments:write\"\n",
                secret.display()
            )
        ),
    );
    let open = open.display();
    let want = [
        "test.yaml:15:19: rule `plain`: URL must use https://".to_owned(),
        format!(
            "test.yaml:28:27: rule `open`: {open} is readable by group or others (mode 644): it must be 0600"
        ),
        format!(
            "test.yaml:40:17: rule `noca`: cannot read {dir}/none.pem: No such file or directory (os error 2)"
        ),
        "test.yaml:48:13: rule `both`: `inject` takes either `file` or `oauth2`, not both"
            .to_owned(),
        "test.yaml:59:15: rule `neither`: `inject` needs `file` or `oauth2` for its value"
            .to_owned(),
    ];
    let got = diagnostics(&text);
    let got: Vec<&str> = got.lines().collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want, "{text}");
}

#[test]
fn jwks_url_errors_with_their_place() {
    let f = files();
    let dir = f.dir.0.display();
    let text = format!(
        "{HEAD}credentials:
  plain:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [ES256]
    jwksUrl: http://sso.internal/jwks.json
  both:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [ES256]
    jwksFile: {dir}/sso.json
    jwksUrl: https://sso.internal/jwks.json
  noca:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [ES256]
    jwksUrl: https://sso.internal/jwks.json
    caFile: {dir}/none.pem
  stray:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [ES256]
    jwksFile: {dir}/sso.json
    caFile: {dir}/none.pem
  good:
    kind: jwt
    issuer: https://i
    audience: api
    algorithms: [ES256]
    jwksUrl: https://sso.internal/jwks.json
"
    );
    let want = [
        "test.yaml:12:14: credential `plain`: URL must use https://".to_owned(),
        "test.yaml:19:14: credential `both`: give `jwksFile` or `jwksUrl`, not both (file at 18:15)".to_owned(),
        format!(
            "test.yaml:26:13: credential `noca`: cannot read {dir}/none.pem: No such file or directory (os error 2)"
        ),
        "test.yaml:33:13: credential `stray`: `caFile` applies to `jwksUrl` only".to_owned(),
    ];
    let got = diagnostics(&text);
    let got: Vec<&str> = got.lines().collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want, "{text}");
}
