//! Class names as people read them. Datasets name classes after their folders
//! (`n02085620-Chihuahua`, `n02113799-standard_poodle`); reports, the API and the
//! classifier's answers show `Chihuahua` and `standard poodle`.

/// The readable breed name of a class folder: `n02085620-Chihuahua` → `Chihuahua`.
///
/// Only a WordNet-id prefix (`n` + digits + `-`) is stripped, so ImageFolder class names
/// that merely contain a dash are kept as they are.
pub fn display_name(folder: &str) -> String {
    let stripped = folder.strip_prefix('n').and_then(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest[digits..].strip_prefix('-').filter(|_| digits > 0)
    });
    match stripped {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => folder.to_string(),
    }
}

/// A class folder name as users read and type it in the API: [`display_name`] with
/// underscores as spaces (`n02085782-Japanese_spaniel` → `Japanese spaniel`).
pub fn breed_name(folder: &str) -> String {
    display_name(folder).replace('_', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordnet_prefixes_are_stripped_and_nothing_else() {
        assert_eq!(display_name("n02085620-Chihuahua"), "Chihuahua");
        assert_eq!(display_name("n02113799-standard_poodle"), "standard_poodle");
        assert_eq!(display_name("golden-retriever"), "golden-retriever");
        assert_eq!(display_name("n-foo"), "n-foo");
        assert_eq!(display_name("n123"), "n123");
        assert_eq!(display_name("n12-"), "n12-");
        assert_eq!(breed_name("n02085782-Japanese_spaniel"), "Japanese spaniel");
        assert_eq!(breed_name("class_1"), "class 1");
    }
}
