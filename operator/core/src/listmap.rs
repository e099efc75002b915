//! Keyed lists: lists the API server treats as maps, one entry per key (a container's
//! `env` by name, `volumeMounts` by `mountPath`, a pod's `volumes` by name).
//!
//! Server-side apply refuses an object that holds a key twice in one of them, so a list
//! built from the operator's entries and a user's goes through [`last_wins`]: the user's
//! entries come last and replace ours of the same key.

/// One entry per key: the last one given, at its own position. Putting the user's
/// entries after ours lets them override ours, keeps them in the user's order, and
/// keeps a variable that refers to another (`$(NAME)`) after the one it refers to.
/// It is also how the kubelet reads a list with a repeated name.
pub fn last_wins<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let items: Vec<T> = items.into_iter().collect();
    let keys: Vec<K> = items.iter().map(&key).collect();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !keys[i + 1..].contains(&keys[*i]))
        .map(|(_, item)| item)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_entry_replaces_an_earlier_one_of_the_same_key() {
        let merged = last_wins(
            [("A", 1), ("DATABASE_URL", 2), ("B", 3), ("DATABASE_URL", 4)],
            |(k, _)| *k,
        );
        assert_eq!(merged, [("A", 1), ("B", 3), ("DATABASE_URL", 4)]);
    }

    #[test]
    fn distinct_keys_keep_their_order() {
        let items = [("C", 1), ("A", 2), ("B", 3)];
        assert_eq!(last_wins(items, |(k, _)| *k), items);
    }

    #[test]
    fn an_empty_list_stays_empty() {
        assert!(last_wins(Vec::<(&str, i32)>::new(), |(k, _)| *k).is_empty());
    }
}
