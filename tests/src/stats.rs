//! Summary statistics for benchmark samples.

use serde::Serialize;

/// The usual figures of a set of samples, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`, or `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            samples: sorted.len(),
            min: *sorted.first()?,
            median: percentile(&sorted, 50.0)?,
            p90: percentile(&sorted, 90.0)?,
            max: *sorted.last()?,
        })
    }
}

/// The `p`th percentile (0–100) of ascending `sorted` samples, interpolating linearly between the
/// two nearest ranks (NumPy's default), so the 50th is the usual median for even counts too.
/// `None` when there are no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    // `rank` lies in [0, last], so both indices are in bounds.
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let weight = rank - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&sorted, 50.0), Some(2.5));
        assert_eq!(percentile(&sorted, 100.0), Some(4.0));
        assert!((percentile(&sorted, 90.0).unwrap_or(f64::NAN) - 3.7).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_its_samples() {
        let summary = Summary::of(&[5.0, 1.0, 3.0]).expect("three samples");
        assert_eq!(
            summary,
            Summary {
                samples: 3,
                min: 1.0,
                median: 3.0,
                p90: 4.6,
                max: 5.0
            }
        );
        assert_eq!(Summary::of(&[]), None);
    }
}
