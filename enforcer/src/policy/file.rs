//! The policy file as written: serde types that keep the location of every value a semantic
//! check may complain about. `check.rs` turns them into the compiled [`Policy`](super::Policy).

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_saphyr::Spanned;

use super::{AuditFormat, FailMode, Mode, Protocol};

/// The document. Field names are camelCase, as in Kubernetes and most YAML configs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub version: Spanned<u32>,
    #[serde(default)]
    pub settings: Option<SettingsFile>,
    /// `None` when absent or empty (every entry commented out).
    #[serde(default)]
    pub identities: Option<Entries<IdentityFile>>,
    /// `None` when absent or empty.
    #[serde(default)]
    pub credentials: Option<Entries<CredentialFile>>,
    pub services: Spanned<Option<Entries<ServiceFile>>>,
    #[serde(default)]
    pub rules: Option<Vec<RuleFile>>,
}

/// Read before the whole file, without `deny_unknown_fields`: a file written for another
/// version is reported as such, not as a list of unknown fields.
#[derive(Deserialize)]
pub(super) struct VersionProbe {
    pub version: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsFile {
    pub mode: Option<Mode>,
    pub limits: Option<LimitsFile>,
    pub audit: Option<AuditFile>,
    pub anomalies: Option<AnomaliesFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LimitsFile {
    pub max_request_line: Option<Spanned<u64>>,
    pub max_head_bytes: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub head_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
    pub max_connections_per_identity: Option<Spanned<u64>>,
    pub rate_per_identity: Option<Spanned<String>>,
    pub burst_per_identity: Option<Spanned<u64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub hash_timeout: Option<Spanned<String>>,
}

/// A rule's `limits`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RuleLimitsFile {
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<u64>>,
    pub max_body_bytes: Option<Spanned<u64>>,
}

/// `settings.anomalies`: a detector left out keeps its defaults; `enabled: false` turns it off.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AnomaliesFile {
    pub request_burst: Option<BurstFile>,
    pub auth_failure_burst: Option<BurstFile>,
    pub deny_spike: Option<BurstFile>,
    pub new_endpoint: Option<NewEndpointFile>,
    pub token_reuse: Option<SwitchFile>,
    pub binary_changed: Option<SwitchFile>,
    pub evasion_attempt: Option<SwitchFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct BurstFile {
    pub enabled: Option<bool>,
    pub window: Option<Spanned<String>>,
    pub factor: Option<Spanned<f64>>,
    pub min_count: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEndpointFile {
    pub enabled: Option<bool>,
    pub learning: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SwitchFile {
    pub enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AuditFile {
    pub file: Option<Spanned<String>>,
    pub format: Option<AuditFormat>,
    pub max_bytes: Option<Spanned<u64>>,
    pub keep: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct IdentityFile {
    pub exe: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub systemd_unit: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub container: Option<Spanned<String>>,
    pub traced: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceFile {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default, rename = "failMode")]
    pub fail_mode: Option<Spanned<FailMode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    pub id: Spanned<String>,
    pub from: Spanned<Vec<Spanned<String>>>,
    pub to: Spanned<String>,
    pub methods: Spanned<Vec<Spanned<String>>>,
    pub paths: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub headers: Option<Entries<Spanned<String>>>,
    #[serde(default)]
    pub query: Option<Entries<Spanned<String>>>,
    #[serde(default)]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub overrides: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub websocket: Option<Spanned<bool>>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub require: Option<Spanned<RequireFile>>,
    #[serde(default)]
    pub inject: Option<Spanned<InjectFile>>,
    #[serde(default)]
    pub limits: Option<RuleLimitsFile>,
}

/// A rule's `inject`: replace a header of allowed requests with a value read from a file or
/// obtained from an OAuth2 token endpoint (exactly one of `file` and `oauth2`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InjectFile {
    pub header: Spanned<String>,
    #[serde(default)]
    pub file: Option<Spanned<String>>,
    #[serde(default)]
    pub oauth2: Option<Spanned<OAuth2File>>,
}

/// `inject.oauth2`: the client-credentials grant (RFC 6749 §4.4).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct OAuth2File {
    pub token_url: Spanned<String>,
    pub client_id: Spanned<String>,
    pub client_secret_file: Spanned<String>,
    #[serde(default)]
    pub scope: Option<Spanned<String>>,
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
}

/// A credential: one struct for both kinds, so that a field given for the wrong kind is
/// reported by name and place (`check.rs`) rather than as an unknown field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CredentialFile {
    pub kind: Spanned<CredentialKindFile>,
    // jwt
    pub issuer: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_file: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub max_lifetime: Option<Spanned<String>>,
    pub max_token_bytes: Option<Spanned<u64>>,
    pub bound_subjects: Option<Entries<Spanned<String>>>,
    // apiKey
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub keys: Option<Spanned<Vec<ApiKeyFile>>>,
    pub keys_file: Option<Spanned<String>>,
    // both
    pub bound_to: Option<Spanned<String>>,
    pub bind_on_first_use: Option<Spanned<crate::credentials::BindOnFirstUse>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) enum CredentialKindFile {
    Jwt,
    ApiKey,
}

/// One API key: its digest, never the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ApiKeyFile {
    pub name: Spanned<String>,
    pub sha256: Spanned<String>,
    pub not_before: Option<Spanned<String>>,
    pub not_after: Option<Spanned<String>>,
    pub bound_to: Option<Spanned<String>>,
}

/// A `keysFile`: API keys kept apart from the policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysFile {
    pub keys: Vec<ApiKeyFile>,
}

/// A rule's `require`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequireFile {
    pub credential: Spanned<String>,
    #[serde(default)]
    pub scopes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub claims: Option<Entries<Spanned<ClaimValueFile>>>,
}

/// A claim value a rule requires: a string, a number or a boolean.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ClaimValueFile {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

/// A mapping in file order, keys with their locations. Duplicate keys are refused by the
/// parser (`DuplicateKeyPolicy::Error`).
pub(super) struct Entries<V>(pub Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }

        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}
