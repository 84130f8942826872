//! The policy file as written: serde types that keep the location of every value a semantic
//! check may complain about. `check.rs` turns them into the compiled [`Policy`](super::Policy).

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_saphyr::Spanned;

use super::{Mode, Protocol};

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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LimitsFile {
    pub max_request_line: Option<Spanned<u64>>,
    pub max_head_bytes: Option<Spanned<u64>>,
    pub max_headers: Option<Spanned<u64>>,
    pub head_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AuditFile {
    pub file: Spanned<String>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceFile {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
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
    pub websocket: Option<Spanned<bool>>,
    #[serde(default)]
    pub mode: Option<Mode>,
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
