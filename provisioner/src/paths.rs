//! Where the CLI keeps its per-deployment files on the user's machine:
//! `<config dir>/ai-sandbox/<kind>/<name>`, the config dir being `$XDG_CONFIG_HOME` or
//! `$HOME/.config`, and the name made one safe file name.

use std::path::PathBuf;

/// `<config dir>/ai-sandbox/<kind>/<name as a file name>`; `None` when neither
/// `$XDG_CONFIG_HOME` nor `$HOME` is set. Creates nothing.
pub fn per_deployment(kind: &str, name: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("ai-sandbox").join(kind).join(file_name(name)))
}

/// A deployment name as one safe file name (no separators, no leading dot).
pub(crate) fn file_name(name: &str) -> String {
    let s: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            '.' if i > 0 => c,
            _ => '_',
        })
        .collect();
    if s.is_empty() {
        "_".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(file_name("ai-sandbox"), "ai-sandbox");
        assert_eq!(file_name("a.b_c"), "a.b_c");
        assert_eq!(file_name("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(file_name(".hidden"), "_hidden");
        assert_eq!(file_name(""), "_");
    }
}
