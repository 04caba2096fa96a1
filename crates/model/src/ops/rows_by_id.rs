//! Rows of a batch grouped by token id, as the GPU embedding's backward sums them
//! (`gpu::embedding`): a counting sort on the host, so each table row's sum runs in one
//! fixed order.

use candle_core::Result;

/// The row indices `0..ids.len()` grouped by id (each id's rows in order), where each id present
/// starts among them (and the end), and those ids ascending, one after another in one vector;
/// and how many ids are present. A counting sort over `vocab` buckets.
pub(crate) fn group_by_id(ids: &[u32], vocab: usize) -> Result<(Vec<u32>, usize)> {
    let mut counts = vec![0u32; vocab];
    for &id in ids {
        match counts.get_mut(id as usize) {
            Some(c) => *c += 1,
            None => candle_core::bail!("gpu-embedding: token id {id} is outside the table of {vocab} rows"),
        }
    }
    let present: Vec<u32> = (0..vocab as u32).filter(|&id| counts[id as usize] > 0).collect();
    // Where each id's rows begin in the order, as a running sum over the vocabulary.
    let mut next = vec![0u32; vocab];
    let mut at = 0u32;
    let mut starts = Vec::with_capacity(present.len() + 1);
    for &id in &present {
        next[id as usize] = at;
        starts.push(at);
        at += counts[id as usize];
    }
    starts.push(at);
    let mut order = vec![0u32; ids.len()];
    for (row, &id) in ids.iter().enumerate() {
        order[next[id as usize] as usize] = row as u32;
        next[id as usize] += 1;
    }
    let u = present.len();
    order.extend(starts);
    order.extend(present);
    Ok((order, u))
}

#[cfg(test)]
mod tests {
    use super::group_by_id;

    #[test]
    fn rows_are_grouped_by_id_in_batch_order() {
        let (g, u) = group_by_id(&[3, 1, 3, 0, 3, 1], 5).unwrap();
        assert_eq!(u, 3);
        // The rows of ids 0, 1 and 3; where each id starts, and the end; the ids.
        assert_eq!(g, [3, 1, 5, 0, 2, 4, 0, 1, 3, 6, 0, 1, 3]);
        let err = group_by_id(&[5], 5).unwrap_err().to_string();
        assert!(err.contains("token id 5 is outside the table of 5 rows"), "{err}");
    }
}
