//! Network policy types and their validation (owned by netctl work).
