//! `maki wasm fetch`: the WIT interfaces of Makiatto's WASM worlds, bundled in the binary
//! and written to `./wit`.
//!
//! The repository holds no WIT files yet, so [`FILES`] is empty and [`write()`] says so; the
//! writing logic is ready for when they land.

use std::path::{Path, PathBuf};

use miette::Diagnostic;

/// The bundled WIT files: (file name, contents).
pub const FILES: &[(&str, &str)] = &[];

/// Why the WIT files could not be written.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum WitError {
    /// This build bundles no WIT files.
    #[error("this build of maki bundles no WIT interfaces yet")]
    #[diagnostic(help(
        "the WebAssembly interfaces arrive with the WASM functions work (not yet filed); nothing was written"
    ))]
    NotBundled,
    /// A file exists and `force` was not given.
    #[error("{} already exists", path.display())]
    #[diagnostic(help("pass --force to overwrite it"))]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("cannot write {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the bundled files into `dir`, refusing to overwrite without `force`; returns the
/// paths written.
pub fn write(dir: &Path, force: bool) -> Result<Vec<PathBuf>, WitError> {
    write_files(dir, FILES, force)
}

/// [`write()`], then one line per file written, for `maki wasm fetch`.
pub fn fetch(dir: &Path, force: bool) -> Result<String, WitError> {
    let mut out = String::new();
    for path in write(dir, force)? {
        out.push_str("wrote ");
        out.push_str(&path.display().to_string());
        out.push('\n');
    }
    Ok(out)
}

fn write_files(dir: &Path, files: &[(&str, &str)], force: bool) -> Result<Vec<PathBuf>, WitError> {
    if files.is_empty() {
        return Err(WitError::NotBundled);
    }
    let paths: Vec<PathBuf> = files.iter().map(|(name, _)| dir.join(name)).collect();
    if let Some(path) = paths.iter().find(|p| !force && p.exists()) {
        return Err(WitError::Exists { path: path.clone() });
    }
    std::fs::create_dir_all(dir).map_err(|source| WitError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for (path, (_, text)) in paths.iter().zip(files) {
        std::fs::write(path, text).map_err(|source| WitError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_bundled_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write(&dir.path().join("wit"), false),
            Err(WitError::NotBundled)
        ));
        assert!(!dir.path().join("wit").exists());
    }

    #[test]
    fn files_are_written_and_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let wit = dir.path().join("wit");
        let files = [("http.wit", "package makiatto:http;\n")];
        assert_eq!(
            write_files(&wit, &files, false).unwrap(),
            [wit.join("http.wit")]
        );
        std::fs::write(wit.join("http.wit"), "edited").unwrap();
        assert!(matches!(
            write_files(&wit, &files, false),
            Err(WitError::Exists { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(wit.join("http.wit")).unwrap(),
            "edited"
        );
        write_files(&wit, &files, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(wit.join("http.wit")).unwrap(),
            files[0].1
        );
    }
}
