//! The JWT half of `cargo xtask bench` (part `jwt`), in a release build (xtask itself runs in
//! the debug profile and does not link the agent):
//!
//! ```sh
//! cargo run --release -p enforcer --example jwt_bench                 # one JSON object
//! cargo run --release -p enforcer --example jwt_bench -- --mint DIR ISSUER AUDIENCE SCOPE
//! ```
//!
//! Without arguments: the per-request cost of bearer-token verification (`JwtVerifier::verify`:
//! base64, JSON, signature, claims) for RS256, ES256 and EdDSA, in three modes:
//! - `uncached`: a verifier without cache verifies the same token again and again, what every
//!   request costs without the cache;
//! - `cached`: the same with the agent's cache of verified tokens: a SHA-256 of the token, a
//!   lookup, the time checks (every request after a token's first);
//! - `first_use`: a cached verifier, each call a token it has not seen: a full verification
//!   plus the insert (a token's first request).
//!
//! Each round times every (algorithm, mode) once, in an order that rotates between rounds, as
//! a batch of calls lasting [`BATCH`]; the figures are medians of the rounds' ns per call.
//!
//! With `--mint`: write `DIR/jwks.json` (an RS256 public key) and `DIR/token` (a token for
//! `ISSUER`, `AUDIENCE` and `SCOPE`, valid for an hour), for the end-to-end part of the bench.
//!
//! The RSA key is RFC 7520's (§3.4, 2048 bits, a published test key: `ring` cannot generate
//! RSA keys); the EC and Ed25519 keys are generated each run.

use std::{
    fs,
    hint::black_box,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use enforcer::credentials::{
    Algorithm, AlgorithmSet, DEFAULT_CACHE_ENTRIES, JwtConfig, JwtVerifier, KeySet, Keys, UnixTime,
};
use ring::{
    rand::SystemRandom,
    rsa,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
};
use serde_json::{Value, json};

/// Rounds; each times every (algorithm, mode) once.
const ROUNDS: usize = 15;
/// How long one batch of calls lasts, at least.
const BATCH: Duration = Duration::from_millis(20);
/// Calls between two reads of the clock in a batch: the clock's cost disappears in them.
const CHUNK: usize = 16;
/// Distinct tokens per algorithm for `first_use`; more than a batch can use.
const FRESH_TOKENS: usize = 1_500;

const ISSUER: &str = "https://sso.example.com/realms/corp";
const AUDIENCE: &str = "payments-api";

/// RFC 7520 §3.4, Figure 4.
const RSA_JWK: &str = r#"{"n": "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw", "e": "AQAB", "d": "bWUC9B-EFRIo8kpGfh0ZuyGPvMNKvYWNtB_ikiH9k20eT-O1q_I78eiZkpXxXQ0UTEs2LsNRS-8uJbvQ-A1irkwMSMkK1J3XTGgdrhCku9gRldY7sNA_AKZGh-Q661_42rINLRCe8W-nZ34ui_qOfkLnK9QWDDqpaIsA-bMwWWSDFu2MUBYwkHTMEzLYGqOe04noqeq1hExBTHBOBdkMXiuFhUq1BU6l-DqEiWxqg82sXt2h-LMnT3046AOYJoRioz75tSUQfGCshWTBnP5uDjd18kKhyv07lhfSJdrPdM5Plyl21hsFf4L_mHCuoFau7gdsPfHPxxjVOcOpBrQzwQ", "p": "3Slxg_DwTXJcb6095RoXygQCAZ5RnAvZlno1yhHtnUex_fp7AZ_9nRaO7HX_-SFfGQeutao2TDjDAWU4Vupk8rw9JR0AzZ0N2fvuIAmr_WCsmGpeNqQnev1T7IyEsnh8UMt-n5CafhkikzhEsrmndH6LxOrvRJlsPp6Zv8bUq0k", "q": "uKE2dh-cTf6ERF4k4e_jy78GfPYUIaUyoSSJuBzp3Cubk3OCqs6grT8bR_cu0Dm1MZwWmtdqDyI95HrUeq3MP15vMMON8lHTeZu2lmKvwqW7anV5UzhM1iZ7z4yMkuUwFWoBvyY898EXvRD-hdqRxHlSqAZ192zB3pVFJ0s7pFc", "dp": "B8PVvXkvJrj2L-GYQ7v3y9r6Kw5g9SahXBwsWUzp19TVlgI-YV85q1NIb1rxQtD-IsXXR3-TanevuRPRt5OBOdiMGQp8pbt26gljYfKU_E9xn-RULHz0-ed9E9gXLKD4VGngpz-PfQ_q29pk5xWHoJp009Qf1HvChixRX59ehik", "dq": "CLDmDGduhylc9o7r84rEUVn7pzQ6PF83Y-iBZx5NT-TpnOZKF1pErAMVeKzFEl41DlHHqqBLSM0W1sOFbwTxYWZDm6sI6og5iTbwQGIC3gnJKbi_7k_vJgGHwHxgPaX2PnvP-zyEkDERuf-ry4c_Z11Cq9AqC2yeL6kdKT1cYF8", "qi": "3PiqvXQN0zwMeE-sBvZgi289XP9XCQF3VWqPzMKnIgQp7_Tugo6-NZBKCQsMf3HaEGBjTVJs_jcK8-TRXvaKe-7ZMaQj8VfBdYkssbu0NKDDhjJ-GtiseaDVWt7dcH0cfwxgFUHpQh7FoCrjFJ6h6ZEpMF6xmujs4qMpPz8aaI4"}"#;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Signs a JWS signing input.
type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// A signer and its public JWK.
struct Signer {
    alg: Algorithm,
    sign: SignFn,
    public: Value,
}

fn rsa() -> Signer {
    let jwk: Value = serde_json::from_str(RSA_JWK).expect("valid JSON");
    let part = |m: &str| {
        B64.decode(jwk[m].as_str().expect("string"))
            .expect("base64url")
    };
    let pair = RsaKeyPair::from_components(&rsa::KeyPairComponents {
        public_key: rsa::PublicKeyComponents {
            n: part("n"),
            e: part("e"),
        },
        d: part("d"),
        p: part("p"),
        q: part("q"),
        dP: part("dp"),
        dQ: part("dq"),
        qInv: part("qi"),
    })
    .expect("RFC 7520's key is valid");
    Signer {
        alg: Algorithm::Rs256,
        public: json!({"kty": "RSA", "kid": "k", "use": "sig", "alg": "RS256",
            "n": jwk["n"], "e": jwk["e"]}),
        sign: Box::new(move |m| {
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                m,
                &mut sig,
            )
            .expect("signing works");
            sig
        }),
    }
}

fn es256() -> Signer {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key generation works");
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a fresh key is valid");
    let point = pair.public_key().as_ref().to_vec();
    Signer {
        alg: Algorithm::Es256,
        public: json!({"kty": "EC", "crv": "P-256", "kid": "k",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}),
        sign: Box::new(move |m| {
            pair.sign(&SystemRandom::new(), m)
                .expect("signing works")
                .as_ref()
                .to_vec()
        }),
    }
}

fn ed25519() -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key generation");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a fresh key is valid");
    Signer {
        alg: Algorithm::EdDsa,
        public: json!({"kty": "OKP", "crv": "Ed25519", "kid": "k",
            "x": B64.encode(pair.public_key().as_ref())}),
        sign: Box::new(move |m| pair.sign(m).as_ref().to_vec()),
    }
}

impl Signer {
    /// A typical access token (about 700 bytes): registered claims, scopes, a few custom
    /// claims, valid for an hour from `now`.
    fn token(&self, issuer: &str, audience: &str, scope: &str, now: i64, jti: usize) -> String {
        let header = json!({"alg": self.alg.name(), "kid": "k", "typ": "at+jwt"});
        let claims = json!({
            "iss": issuer,
            "aud": [audience, "ledger-api"],
            "sub": "svc-billing-worker@corp.example.com",
            "iat": now, "nbf": now, "exp": now + 3600,
            "jti": format!("{jti:032x}"),
            "scope": scope,
            "tenant": "acme", "azp": "billing-worker",
            "groups": ["finance", "billing", "oncall"],
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = (self.sign)(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    fn jwks(&self) -> String {
        json!({"keys": [self.public]}).to_string()
    }

    /// A verifier as the policy builds one, with the agent's cache size or none.
    fn verifier(&self, cache: usize) -> JwtVerifier {
        let keys = KeySet::from_jwks(self.jwks().as_bytes()).expect("a valid JWKS");
        let config = JwtConfig::new(ISSUER, AUDIENCE, AlgorithmSet::empty().with(self.alg));
        JwtVerifier::with_cache(config, Keys::Static(Arc::new(keys)), cache)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Uncached,
    Cached,
    FirstUse,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Uncached, Mode::Cached, Mode::FirstUse];

    fn name(self) -> &'static str {
        match self {
            Mode::Uncached => "uncached",
            Mode::Cached => "cached",
            Mode::FirstUse => "first_use",
        }
    }
}

/// One algorithm's fixtures.
struct Subject {
    signer: Signer,
    token: String,
    uncached: JwtVerifier,
    cached: JwtVerifier,
    fresh: Vec<String>,
}

/// Call `f(i)` for i = 0, 1, … in chunks until [`BATCH`] has passed or `limit` calls are made;
/// ns per call.
fn batch(limit: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut calls = 0;
    while calls < limit && start.elapsed() < BATCH {
        for _ in 0..CHUNK.min(limit - calls) {
            f(calls);
            calls += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn time(s: &Subject, mode: Mode, now: UnixTime) -> f64 {
    match mode {
        Mode::Uncached => batch(usize::MAX, |_| {
            black_box(s.uncached.verify(black_box(&s.token), now).is_ok());
        }),
        Mode::Cached => batch(usize::MAX, |_| {
            black_box(s.cached.verify(black_box(&s.token), now).is_ok());
        }),
        Mode::FirstUse => {
            // A new verifier each batch: every token is then a first use.
            let v = s.signer.verifier(DEFAULT_CACHE_ENTRIES);
            batch(s.fresh.len(), |i| {
                black_box(v.verify(black_box(&s.fresh[i]), now).is_ok());
            })
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn measure() -> Value {
    let now = UnixTime::now();
    let secs = now.as_secs();
    let scope = "invoices:read invoices:write reports:read";
    let subjects: Vec<Subject> = [rsa(), es256(), ed25519()]
        .into_iter()
        .map(|signer| {
            let token = signer.token(ISSUER, AUDIENCE, scope, secs, 0);
            let fresh = (1..=FRESH_TOKENS)
                .map(|i| signer.token(ISSUER, AUDIENCE, scope, secs, i))
                .collect();
            let uncached = signer.verifier(0);
            let cached = signer.verifier(DEFAULT_CACHE_ENTRIES);
            for v in [&uncached, &cached] {
                v.verify(&token, now).expect("the token verifies");
            }
            Subject {
                signer,
                token,
                uncached,
                cached,
                fresh,
            }
        })
        .collect();
    // rounds[subject][mode]: ns per call of each round.
    let mut rounds = vec![[Vec::new(), Vec::new(), Vec::new()]; subjects.len()];
    let cells = subjects.len() * Mode::ALL.len();
    for round in 0..ROUNDS {
        for k in 0..cells {
            let cell = (k + round) % cells;
            let (s, m) = (cell / Mode::ALL.len(), cell % Mode::ALL.len());
            rounds[s][m].push(time(&subjects[s], Mode::ALL[m], now));
        }
    }
    let mut algorithms = serde_json::Map::new();
    for (s, subject) in subjects.iter().enumerate() {
        let mut entry = serde_json::Map::new();
        entry.insert("token_bytes".into(), subject.token.len().into());
        for (m, mode) in Mode::ALL.into_iter().enumerate() {
            let r = &rounds[s][m];
            entry.insert(
                mode.name().into(),
                json!({
                    "median_ns": median(r),
                    "min_ns": r.iter().copied().fold(f64::INFINITY, f64::min),
                    "max_ns": r.iter().copied().fold(0.0, f64::max),
                    "rounds_ns": r,
                }),
            );
        }
        entry.insert(
            "uncached/cached".into(),
            (median(&rounds[s][0]) / median(&rounds[s][1])).into(),
        );
        algorithms.insert(subject.signer.alg.name().into(), entry.into());
    }
    json!({
        "rounds": ROUNDS,
        "batch_ms": BATCH.as_millis() as u64,
        "algorithms": algorithms,
    })
}

/// Write the key set and a token for the end-to-end bench.
fn mint(dir: &Path, issuer: &str, audience: &str, scope: &str) -> std::io::Result<()> {
    let signer = rsa();
    fs::write(dir.join("jwks.json"), signer.jwks())?;
    let token = signer.token(issuer, audience, scope, UnixTime::now().as_secs(), 0);
    fs::write(dir.join("token"), token)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => println!(
            "{}",
            serde_json::to_string_pretty(&measure()).expect("JSON")
        ),
        [flag, dir, issuer, audience, scope] if flag == "--mint" => {
            if let Err(e) = mint(Path::new(dir), issuer, audience, scope) {
                eprintln!("jwt_bench: writing to {dir}: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: jwt_bench [--mint DIR ISSUER AUDIENCE SCOPE]");
            std::process::exit(2);
        }
    }
}
