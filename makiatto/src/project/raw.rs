//! The file as serde sees it: every value keeps its place (`Spanned`) for diagnostics, and
//! unknown keys are errors.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    #[serde(default)]
    pub(crate) domain: Vec<RawDomain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomain {
    pub(crate) name: Spanned<String>,
    pub(crate) path: Spanned<String>,
    pub(crate) aliases: Option<Vec<Spanned<String>>>,
    pub(crate) records: Option<Vec<Spanned<RawRecord>>>,
    pub(crate) functions: Option<Vec<RawFunction>>,
    pub(crate) transforms: Option<Vec<RawTransform>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecord {
    #[serde(rename = "type")]
    pub(crate) rtype: Spanned<String>,
    pub(crate) name: Spanned<String>,
    pub(crate) value: Spanned<String>,
    pub(crate) ttl: Option<Spanned<i64>>,
    pub(crate) priority: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFunction {
    pub(crate) path: Spanned<String>,
    pub(crate) methods: Option<Vec<Spanned<String>>>,
    pub(crate) env: Option<BTreeMap<String, String>>,
    pub(crate) env_file: Option<Spanned<String>>,
    pub(crate) timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_memory_mb: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransform {
    pub(crate) path: Spanned<String>,
    pub(crate) files: Spanned<String>,
    pub(crate) env: Option<BTreeMap<String, String>>,
    pub(crate) env_file: Option<Spanned<String>>,
    pub(crate) timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_memory_mb: Option<Spanned<i64>>,
    pub(crate) max_file_size_kb: Option<Spanned<i64>>,
}
