//! Guest images as `scripts/build-image.sh` writes them:
//! `<images_dir>/<name>/{vmlinuz, initrd.img, manifest.json}`
//! (packaging/image/README.md).

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0:?}: use 1-63 characters from [a-z0-9._-], starting with a letter or digit")]
    BadName(String),
    #[error("image {name:?} not found in {dir} (build it with scripts/build-image.sh --name {name} --out {dir})")]
    NotFound { name: String, dir: String },
    #[error("image {name:?}: {file} missing")]
    Incomplete { name: String, file: &'static str },
}

pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadName(name.to_owned()))
    }
}

/// A complete image on disk.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn find(dir: &Path, name: &str) -> Result<Image, ImageError> {
    validate_name(name)?;
    let root = dir.join(name);
    if !root.is_dir() {
        return Err(ImageError::NotFound {
            name: name.to_owned(),
            dir: dir.display().to_string(),
        });
    }
    let file = |f: &'static str| {
        let p = root.join(f);
        if p.is_file() {
            Ok(p)
        } else {
            Err(ImageError::Incomplete {
                name: name.to_owned(),
                file: f,
            })
        }
    };
    Ok(Image {
        name: name.to_owned(),
        kernel: file("vmlinuz")?,
        initrd: file("initrd.img")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "py3.12", "a", "x-1_2"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "Default", "../x", ".hidden", "a/b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
