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

const KERNEL: &str = "vmlinuz";
const INITRD: &str = "initrd.img";

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
        kernel: file(KERNEL)?,
        initrd: file(INITRD)?,
    })
}

/// Gives a sandbox its own links to the image's kernel and initramfs, so a
/// rebuild of the image (which replaces its directory) never changes or
/// removes the files a suspended guest resumes with. A hard link costs
/// nothing; across file systems the files are copied.
pub fn pin(image: &Image, dir: &Path) -> std::io::Result<Image> {
    let kernel = dir.join(KERNEL);
    let initrd = dir.join(INITRD);
    for (from, to) in [(&image.kernel, &kernel), (&image.initrd, &initrd)] {
        let _ = std::fs::remove_file(to);
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to)?;
        }
    }
    Ok(Image {
        name: image.name.clone(),
        kernel,
        initrd,
    })
}

/// The files [`pin`] left in a sandbox's directory, if both are there.
pub fn pinned(name: &str, dir: &Path) -> Option<Image> {
    let (kernel, initrd) = (dir.join(KERNEL), dir.join(INITRD));
    (kernel.is_file() && initrd.is_file()).then(|| Image {
        name: name.to_owned(),
        kernel,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_image_survives_a_rebuild() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("images/default");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join(KERNEL), "k1").unwrap();
        std::fs::write(img.join(INITRD), "i1").unwrap();
        let sb = d.path().join("sb");
        std::fs::create_dir_all(&sb).unwrap();
        let found = find(&d.path().join("images"), "default").unwrap();
        let pinned_now = pin(&found, &sb).unwrap();
        // A rebuild replaces the directory.
        std::fs::remove_dir_all(&img).unwrap();
        assert_eq!(std::fs::read_to_string(&pinned_now.kernel).unwrap(), "k1");
        assert_eq!(pinned("default", &sb).unwrap().initrd, sb.join(INITRD));
    }

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
