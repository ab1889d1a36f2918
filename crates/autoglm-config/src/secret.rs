//! A string that never shows itself in `Debug`, logs or `print-config`.
//!
//! In the YAML a secret is written one of three ways, and resolved when the config is loaded:
//!
//! ```yaml
//! password: hunter2                          # the value itself (tests, local stacks)
//! password: { env: AUTOGLM_KAFKA_PASSWORD }  # an environment variable
//! password: { file: /run/secrets/kafka }     # a file (Kubernetes/systemd credentials); one
//!                                            # trailing newline is dropped
//! ```
//!
//! A missing variable or an unreadable file is a config error naming the key and the variable or
//! file, never the value.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (password, client secret). `Debug` and `Serialize` print `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("****")
    }
}

/// Where a secret's value is, as written in the YAML.
#[derive(Deserialize)]
#[serde(untagged)]
enum Source {
    Value(String),
    Env { env: String },
    File { file: PathBuf },
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        use serde::de::Error;
        let source = Source::deserialize(deserializer).map_err(|_| {
            D::Error::custom("expected a secret: a string, `{ env: VARIABLE }` or `{ file: PATH }`")
        })?;
        match source {
            Source::Value(value) => Ok(Secret(value)),
            Source::Env { env } => match std::env::var(&env) {
                Ok(value) if !value.is_empty() => Ok(Secret(value)),
                Ok(_) => Err(D::Error::custom(format!(
                    "environment variable {env} is empty"
                ))),
                Err(_) => Err(D::Error::custom(format!(
                    "environment variable {env} is not set"
                ))),
            },
            Source::File { file } => match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let value = text
                        .strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text);
                    if value.is_empty() {
                        Err(D::Error::custom(format!("{} is empty", file.display())))
                    } else {
                        Ok(Secret(value.to_owned()))
                    }
                }
                Err(e) => Err(D::Error::custom(format!(
                    "cannot read {}: {e}",
                    file.display()
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Secret, String> {
        serde_yaml::from_str::<Secret>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn a_secret_comes_from_the_value_a_variable_or_a_file() {
        assert_eq!(parse("hunter2").expect("value").expose(), "hunter2");

        // A variable every test process has (setting one is unsafe in edition 2024).
        let path_var = std::env::var("PATH").expect("PATH");
        assert_eq!(parse("{ env: PATH }").expect("env").expose(), path_var);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-a-file\n").expect("write");
        assert_eq!(
            parse(&format!("{{ file: {} }}", path.display()))
                .expect("file")
                .expose(),
            "from-a-file"
        );
    }

    #[test]
    fn a_missing_source_is_named_and_the_value_never_is() {
        let missing = parse("{ env: AUTOGLM_TEST_NO_SUCH_VARIABLE }").expect_err("unset");
        assert!(
            missing.contains("AUTOGLM_TEST_NO_SUCH_VARIABLE is not set"),
            "{missing}"
        );
        let unreadable = parse("{ file: /nonexistent/autoglm-secret }").expect_err("no file");
        assert!(
            unreadable.contains("cannot read /nonexistent/autoglm-secret"),
            "{unreadable}"
        );
        let wrong = parse("{ vault: x }").expect_err("unknown source");
        assert!(wrong.contains("expected a secret"), "{wrong}");
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "****");
    }
}
