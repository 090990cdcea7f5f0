//! Typed access to connector options with errors that name the option.

use std::path::PathBuf;
use std::str::FromStr;

use sluice_plan::ConnectorSpec;
use sluice_types::{Result, SluiceError};

/// Reads options of one connector.
pub struct OptionReader<'a> {
    connector: &'a str,
    spec: &'a ConnectorSpec,
}

impl<'a> OptionReader<'a> {
    /// Options of `spec`, for error messages naming `connector`.
    pub fn new(connector: &'a str, spec: &'a ConnectorSpec) -> Self {
        Self { connector, spec }
    }

    /// A raw string option.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.spec.options.get(key).map(String::as_str)
    }

    /// A required string option.
    pub fn required(&self, key: &str) -> Result<&'a str> {
        self.str(key).ok_or_else(|| {
            SluiceError::user(format!(
                "connector `{}` needs the option `{key}`",
                self.connector
            ))
        })
    }

    /// A parsed option.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<T>().map(Some).map_err(|e| {
                SluiceError::user(format!(
                    "option `{key}` of connector `{}` is `{v}`: {e}",
                    self.connector
                ))
            }),
        }
    }

    /// A parsed option with a default.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// A boolean option (`true`/`false`).
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        self.parse_or(key, default)
    }

    /// One of a fixed set of values.
    pub fn choice(&self, key: &str, choices: &[&str], default: Option<&str>) -> Result<String> {
        match self.str(key).or(default) {
            None => Err(SluiceError::user(format!(
                "connector `{}` needs the option `{key}` (one of: {})",
                self.connector,
                choices.join(", ")
            ))),
            Some(v) if choices.contains(&v) => Ok(v.to_string()),
            Some(v) => Err(SluiceError::user(format!(
                "option `{key}` of connector `{}` is `{v}`; expected one of: {}",
                self.connector,
                choices.join(", ")
            ))),
        }
    }

    /// A local path option: a path, or a `file://` URL.
    pub fn path(&self, key: &str) -> Result<PathBuf> {
        match sluice_runtime::Location::parse(self.required(key)?) {
            sluice_runtime::Location::Local(p) => Ok(p),
            sluice_runtime::Location::Remote(url) => Err(SluiceError::user(format!(
                "option `{key}` of connector `{}` is `{url}`, but it reads and writes local files only (a path or a file:// URL)",
                self.connector
            ))),
        }
    }
}
