//! Ids and names share one space, so a label in a URL parses one way only
//! (SPEC 6): a name never equals another sandbox's id or name, and an id
//! never equals another sandbox's name. Every registry enforces the same
//! rule and answers a clash with the same 409 message.

use super::RegistryError;

/// Why a sandbox's id or name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameClash {
    #[error("id {id:?} is the name of sandbox {owner:?}")]
    IdIsName { id: String, owner: String },
    #[error("name {name:?} is the id of another sandbox")]
    NameIsId { name: String },
    #[error("name {name:?} is taken by sandbox {owner:?}")]
    NameTaken { name: String, owner: String },
}

impl From<NameClash> for RegistryError {
    fn from(clash: NameClash) -> Self {
        Self::Conflict(clash.to_string())
    }
}

/// Checks that sandbox `id` may be stored under `name`, given who owns each
/// name (`name_owner`) and which ids exist (`id_exists`).
pub fn check<'a>(
    id: &str,
    name: Option<&str>,
    name_owner: impl Fn(&str) -> Option<&'a str>,
    id_exists: impl Fn(&str) -> bool,
) -> Result<(), NameClash> {
    if let Some(owner) = name_owner(id) {
        if owner != id {
            return Err(NameClash::IdIsName {
                id: id.to_owned(),
                owner: owner.to_owned(),
            });
        }
    }
    if let Some(name) = name {
        if name != id && id_exists(name) {
            return Err(NameClash::NameIsId {
                name: name.to_owned(),
            });
        }
        if let Some(owner) = name_owner(name) {
            if owner != id {
                return Err(NameClash::NameTaken {
                    name: name.to_owned(),
                    owner: owner.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn one_space_for_ids_and_names() {
        let names: HashMap<&str, &str> = [("web", "sbx-1")].into();
        let ids = ["sbx-1", "sbx-2"];
        let owner = |n: &str| names.get(n).copied();
        let exists = |i: &str| ids.contains(&i);
        assert_eq!(check("sbx-1", Some("web"), owner, exists), Ok(()));
        assert_eq!(check("sbx-1", Some("sbx-1"), owner, exists), Ok(()));
        assert_eq!(check("sbx-3", None, owner, exists), Ok(()));
        assert!(matches!(
            check("web", None, owner, exists),
            Err(NameClash::IdIsName { .. })
        ));
        assert!(matches!(
            check("sbx-3", Some("sbx-2"), owner, exists),
            Err(NameClash::NameIsId { .. })
        ));
        let clash = check("sbx-2", Some("web"), owner, exists).unwrap_err();
        assert_eq!(
            clash.to_string(),
            "name \"web\" is taken by sandbox \"sbx-1\""
        );
    }
}
