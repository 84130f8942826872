//! Time bearer-token verification per request, for RS256, ES256 and EdDSA, with and without
//! the verified-token cache:
//!
//! ```sh
//! cargo run --release -p enforcer --example jwt_bench    # one JSON object on stdout
//! ```
//!
//! For each algorithm: `uncached` verifies the same token again and again with no cache (the
//! cost of every request: base64, JSON, signature, claims); `cached_hit` does the same with the
//! cache (a SHA-256 of the token, a lookup, the time checks); `cached_miss` presents a new token
//! each time to a cached verifier (a full verification plus the insert, the first request of
//! every token). Each figure is the mean over whole passes, and the p50/p99 of calls timed
//! alone (clock overhead subtracted).
//!
//! The RSA key is RFC 7520's (§3.4, 2048 bits, a published test key: `ring` cannot generate
//! RSA keys); the EC and Ed25519 keys are generated each run.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use enforcer::credentials::{
    Algorithm, AlgorithmSet, JwtConfig, JwtVerifier, KeySet, Keys, UnixTime,
};
use ring::{
    rand::SystemRandom,
    rsa,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
};
use serde_json::{Value, json};

/// Calls per measurement.
const CALLS: usize = 20_000;

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
        public: json!({"kty": "RSA", "kid": "k", "n": jwk["n"], "e": jwk["e"]}),
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
    /// A typical access token: registered claims, scopes, a few custom claims (~600 bytes).
    fn token(&self, now: i64, jti: usize) -> String {
        let header = json!({"alg": self.alg.name(), "kid": "k", "typ": "at+jwt"});
        let claims = json!({
            "iss": "https://sso.example.com/realms/corp",
            "aud": ["payments-api", "ledger-api"],
            "sub": "svc-billing-worker@corp.example.com",
            "iat": now, "nbf": now, "exp": now + 3600,
            "jti": format!("{jti:032x}"),
            "scope": "invoices:read invoices:write reports:read",
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

    fn verifier(&self, cache: usize) -> JwtVerifier {
        let keys = KeySet::from_jwks(json!({"keys": [self.public]}).to_string().as_bytes())
            .expect("a valid JWKS");
        let mut config = JwtConfig::new(
            "https://sso.example.com/realms/corp",
            "payments-api",
            AlgorithmSet::empty().with(self.alg),
        );
        config.max_lifetime = Some(24 * 3600);
        JwtVerifier::with_cache(config, Keys::Static(Arc::new(keys)), cache)
    }
}

struct Timing {
    mean: f64,
    p50: u64,
    p99: u64,
}

/// Time `f(i)` for i in 0..CALLS: mean over the pass, and percentiles of calls timed alone.
fn time(clock: u64, mut f: impl FnMut(usize)) -> Timing {
    let start = Instant::now();
    for i in 0..CALLS {
        f(i);
    }
    let mean = start.elapsed().as_nanos() as f64 / CALLS as f64;
    let mut samples: Vec<u64> = (0..CALLS)
        .map(|i| {
            let t = Instant::now();
            f(CALLS + i);
            (t.elapsed().as_nanos() as u64).saturating_sub(clock)
        })
        .collect();
    samples.sort_unstable();
    Timing {
        mean,
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
    }
}

fn clock_overhead() -> u64 {
    let mut best = Duration::MAX;
    for _ in 0..1000 {
        let t = Instant::now();
        best = best.min(t.elapsed());
    }
    best.as_nanos() as u64
}

fn json_of(t: &Timing) -> Value {
    json!({"mean_ns": t.mean.round(), "p50_ns": t.p50, "p99_ns": t.p99})
}

fn main() {
    let clock = clock_overhead();
    let now = UnixTime::now();
    let mut results = serde_json::Map::new();
    for signer in [rsa(), es256(), ed25519()] {
        let token = signer.token(now.as_secs(), 0);
        let uncached = signer.verifier(0);
        let cached = signer.verifier(2 * CALLS + 16);
        uncached.verify(&token, now).expect("the token verifies");
        cached.verify(&token, now).expect("the token verifies");
        let t_uncached = time(clock, |_| {
            black_box(uncached.verify(black_box(&token), now).is_ok());
        });
        let t_hit = time(clock, |_| {
            black_box(cached.verify(black_box(&token), now).is_ok());
        });
        let fresh: Vec<String> = (1..=2 * CALLS)
            .map(|i| signer.token(now.as_secs(), i))
            .collect();
        let t_miss = time(clock, |i| {
            black_box(cached.verify(black_box(&fresh[i]), now).is_ok());
        });
        results.insert(
            signer.alg.name().to_owned(),
            json!({
                "token_bytes": token.len(),
                "uncached": json_of(&t_uncached),
                "cached_hit": json_of(&t_hit),
                "cached_miss": json_of(&t_miss),
                "speedup_hit_vs_uncached": (t_uncached.mean / t_hit.mean * 10.0).round() / 10.0,
            }),
        );
    }
    let out = json!({
        "calls_per_measurement": CALLS,
        "clock_overhead_ns": clock,
        "algorithms": results,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
}
