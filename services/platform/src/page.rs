//! Keyset pages, as every list endpoint answers them: at most a page of rows, oldest or
//! newest first by a key, and the key of the last one as the cursor of the next page.
//! A query asks for one row more than the page ([`fetch`]): that row says whether a
//! next page exists, without a count.

/// The page size a `limit` query parameter asks for: `default` when absent, else
/// clamped to `1..=max` (a size of 0 or beyond the bound is not an error).
pub fn size(asked: Option<u16>, default: u16, max: u16) -> i64 {
    i64::from(asked.unwrap_or(default).clamp(1, max))
}

/// The rows a query fetches for a page of `size`: one more.
pub fn fetch(size: i64) -> i64 {
    size.saturating_add(1)
}

/// The rows fetched for a page of `size` split into the page and the cursor of the
/// next one (`cursor` of the page's last row), absent when no row was left over.
pub fn split<T, C>(mut rows: Vec<T>, size: i64, cursor: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if rows.len() <= size {
        return (rows, None);
    }
    rows.truncate(size);
    let next = rows.last().map(cursor);
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_is_the_default_when_absent_and_clamped_when_out_of_bounds() {
        assert_eq!(size(None, 50, 200), 50);
        assert_eq!(size(Some(0), 50, 200), 1);
        assert_eq!(size(Some(7), 50, 200), 7);
        assert_eq!(size(Some(u16::MAX), 50, 200), 200);
    }

    #[test]
    fn a_row_left_over_makes_the_last_row_of_the_page_the_next_cursor() {
        let size = 2;
        assert_eq!(fetch(size), 3);
        assert_eq!(
            split(vec![1, 2, 3], size, |r| *r * 10),
            (vec![1, 2], Some(20))
        );
        assert_eq!(split(vec![1, 2], size, |r| *r * 10), (vec![1, 2], None));
        assert_eq!(split(Vec::<i32>::new(), size, |r| *r), (vec![], None));
    }
}
