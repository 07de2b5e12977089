//! The efficiency benchmark's workload (`hayloft bench efficiency`, and
//! `loadgen --mix` for the same BLOB set against a peer), after the f4 paper's measurements of
//! a photo store: BLOB sizes from a mix of classes, and request and delete
//! rates that fall with a BLOB's age.
//!
//! Both rates follow one curve, `(1 + age/τ)^-p` of their rate at upload,
//! with τ and p solved from two drops (by default 10× within a week and
//! 100× within 60 days). Deletes are a hazard on that curve scaled so that
//! a given share of BLOBs is deleted within a year; reads are Poisson with
//! a given mean on a BLOB's first day. Everything is drawn from one seeded
//! generator, and a BLOB's bytes from its own seed, so a run can be
//! repeated and every byte checked.

use anyhow::{Context, bail, ensure};
use rand::Rng;
use serde::Serialize;

use crate::parse_size;

/// One class of BLOB sizes: log-uniform between two sizes.
#[derive(Debug, Clone, Serialize)]
pub struct SizeClass {
    /// Its name (`thumb`, `photo`, `video`).
    pub name: String,
    /// Smallest size, bytes.
    pub min_bytes: u64,
    /// Largest size, bytes.
    pub max_bytes: u64,
    /// Relative weight among the classes.
    pub weight: f64,
    /// The `Content-Type` its BLOBs are uploaded with.
    pub content_type: &'static str,
}

/// The BLOB size mix.
#[derive(Debug, Clone, Serialize)]
pub struct SizeMix {
    /// The classes, in the order given.
    pub classes: Vec<SizeClass>,
}

impl SizeMix {
    /// Parses `NAME=MIN-MAX:WEIGHT,...` (e.g. `thumb=2KiB-16KiB:55`).
    pub fn parse(text: &str) -> anyhow::Result<SizeMix> {
        let mut classes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, rest) = part
                .split_once('=')
                .with_context(|| format!("size class {part:?}: expected NAME=MIN-MAX:WEIGHT"))?;
            let (range, weight) = rest
                .split_once(':')
                .with_context(|| format!("size class {part:?}: no :WEIGHT"))?;
            let (min, max) = range
                .split_once('-')
                .with_context(|| format!("size class {part:?}: expected MIN-MAX"))?;
            let min_bytes = parse_size(min).map_err(anyhow::Error::msg)? as u64;
            let max_bytes = parse_size(max).map_err(anyhow::Error::msg)? as u64;
            let weight: f64 = weight
                .trim()
                .parse()
                .with_context(|| format!("size class {part:?}: weight"))?;
            ensure!(
                0 < min_bytes && min_bytes <= max_bytes,
                "size class {part:?}: sizes must be positive, MIN at most MAX"
            );
            ensure!(
                weight.is_finite() && weight > 0.0,
                "size class {part:?}: weight must be positive"
            );
            let content_type = if name.contains("video") {
                "video/mp4"
            } else {
                "image/jpeg"
            };
            classes.push(SizeClass {
                name: name.trim().to_owned(),
                min_bytes,
                max_bytes,
                weight,
                content_type,
            });
        }
        ensure!(!classes.is_empty(), "the size mix has no class");
        Ok(SizeMix { classes })
    }

    /// The largest size any class draws.
    pub fn max_bytes(&self) -> u64 {
        self.classes.iter().map(|c| c.max_bytes).max().unwrap_or(0)
    }

    /// Draws a class (its index) and a size.
    pub fn draw(&self, rng: &mut impl Rng) -> (usize, u64) {
        let total: f64 = self.classes.iter().map(|c| c.weight).sum();
        let mut pick = rng.random::<f64>() * total;
        let mut index = self.classes.len() - 1;
        for (i, class) in self.classes.iter().enumerate() {
            if pick < class.weight {
                index = i;
                break;
            }
            pick -= class.weight;
        }
        let class = &self.classes[index];
        let (lo, hi) = ((class.min_bytes as f64).ln(), (class.max_bytes as f64).ln());
        let size = (lo + rng.random::<f64>() * (hi - lo)).exp().round() as u64;
        (index, size.clamp(class.min_bytes, class.max_bytes))
    }
}

/// How a rate falls with age: `(1 + age/τ)^-p` of its value at upload.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Decay {
    /// τ, in days.
    pub tau_days: f64,
    /// p.
    pub power: f64,
}

impl Decay {
    /// The curve that has fallen `week`× at 7 days and `sixty`× at 60 days.
    pub fn from_drops(week: f64, sixty: f64) -> anyhow::Result<Decay> {
        let ratio = sixty.ln() / week.ln();
        // ln(1 + 60/τ) = ratio · ln(1 + 7/τ) has one root in τ when
        // 1 < ratio < 60/7; beyond, no curve of this shape fits.
        if !(week > 1.0 && sixty > week && ratio < 60.0 / 7.0) {
            bail!(
                "the drops {week}× in a week and {sixty}× in 60 days fit no (1 + age/τ)^-p curve \
                 (need 1 < week < 60 days and ln(60 days)/ln(week) < 60/7)"
            );
        }
        let gap = |tau: f64| (1.0 + 60.0 / tau).ln() - ratio * (1.0 + 7.0 / tau).ln();
        // Negative for small τ, positive for large: bisect on a log scale.
        let (mut lo, mut hi) = (1e-9_f64, 1e9_f64);
        for _ in 0..200 {
            let mid = (lo * hi).sqrt();
            if gap(mid) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let tau_days = (lo * hi).sqrt();
        let power = week.ln() / (1.0 + 7.0 / tau_days).ln();
        Ok(Decay { tau_days, power })
    }

    /// The rate at `age_days`, relative to age 0.
    #[cfg(test)]
    pub fn factor(&self, age_days: f64) -> f64 {
        (1.0 + age_days / self.tau_days).powf(-self.power)
    }

    /// ∫ factor over `[from, to]` days.
    pub fn integral(&self, from: f64, to: f64) -> f64 {
        let tau = self.tau_days;
        if (self.power - 1.0).abs() < 1e-9 {
            return tau * ((1.0 + to / tau) / (1.0 + from / tau)).ln();
        }
        let e = 1.0 - self.power;
        tau / e * ((1.0 + to / tau).powf(e) - (1.0 + from / tau).powf(e))
    }
}

/// Deletes and reads as rates over a BLOB's age.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rates {
    /// The curve both follow.
    pub decay: Decay,
    /// The delete hazard at age 0, per day.
    pub delete_hazard_per_day: f64,
    /// Mean reads of a BLOB on its first day.
    pub reads_first_day: f64,
}

impl Rates {
    /// Rates on `decay` with `deleted_first_year` of BLOBs deleted within
    /// 365 days.
    pub fn new(
        decay: Decay,
        deleted_first_year: f64,
        reads_first_day: f64,
    ) -> anyhow::Result<Rates> {
        ensure!(
            (0.0..1.0).contains(&deleted_first_year),
            "the share deleted within a year must be in [0, 1)"
        );
        ensure!(
            (0.0..=POISSON_MEAN_MAX).contains(&reads_first_day),
            "reads on the first day must be between 0 and {POISSON_MEAN_MAX}"
        );
        // 1 - exp(-h0 ∫ factor) = share.
        let delete_hazard_per_day = -(1.0 - deleted_first_year).ln() / decay.integral(0.0, 365.0);
        Ok(Rates {
            decay,
            delete_hazard_per_day,
            reads_first_day,
        })
    }

    /// The chance a BLOB alive at `age_days` is deleted within one day.
    pub fn delete_chance(&self, age_days: f64) -> f64 {
        let hazard = self.delete_hazard_per_day * self.decay.integral(age_days, age_days + 1.0);
        1.0 - (-hazard).exp()
    }

    /// Mean reads of a BLOB over the day from `age_days`.
    pub fn reads_mean(&self, age_days: f64) -> f64 {
        let first_day = self.decay.integral(0.0, 1.0);
        self.reads_first_day * self.decay.integral(age_days, age_days + 1.0) / first_day
    }
}

/// The largest mean [`poisson`] draws from exactly.
pub const POISSON_MEAN_MAX: f64 = 50.0;

/// A Poisson draw of mean `mean`, at most [`POISSON_MEAN_MAX`] (Knuth's
/// method: the means here are small).
pub fn poisson(rng: &mut impl Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    let limit = (-mean.min(POISSON_MEAN_MAX)).exp();
    let mut product = rng.random::<f64>();
    let mut count = 0;
    while product > limit {
        count += 1;
        product *= rng.random::<f64>();
    }
    count
}

/// The bytes of the BLOB with `seed`, `size` long: a splitmix64 stream, so
/// any BLOB can be rebuilt to check a read without keeping it.
pub fn blob_bytes(seed: u64, size: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(size as usize + 8);
    while (bytes.len() as u64) < size {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(size as usize);
    bytes
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn decay_falls_by_the_asked_drops() {
        let decay = Decay::from_drops(10.0, 100.0).unwrap();
        assert!((1.0 / decay.factor(7.0) - 10.0).abs() < 1e-6, "{decay:?}");
        assert!((1.0 / decay.factor(60.0) - 100.0).abs() < 1e-6, "{decay:?}");
        assert!(Decay::from_drops(10.0, 5.0).is_err());
        assert!(Decay::from_drops(0.5, 100.0).is_err());
        assert!(Decay::from_drops(2.0, 1e9).is_err());
    }

    #[test]
    fn the_asked_share_is_deleted_within_a_year() {
        let rates = Rates::new(Decay::from_drops(10.0, 100.0).unwrap(), 0.25, 1.0).unwrap();
        let survive: f64 = (0..365)
            .map(|day| 1.0 - rates.delete_chance(f64::from(day)))
            .product();
        assert!((1.0 - survive - 0.25).abs() < 1e-9, "{}", 1.0 - survive);
        assert!((rates.reads_mean(0.0) - 1.0).abs() < 1e-12);
        assert!(rates.reads_mean(60.0) < rates.reads_mean(6.0) / 5.0);
    }

    #[test]
    fn integral_matches_a_sum() {
        let decay = Decay::from_drops(10.0, 100.0).unwrap();
        let steps = 100_000;
        let sum: f64 = (0..steps)
            .map(|i| decay.factor(3.0 + 5.0 * (f64::from(i) + 0.5) / f64::from(steps)))
            .sum::<f64>()
            * 5.0
            / f64::from(steps);
        assert!((decay.integral(3.0, 8.0) - sum).abs() < 1e-6);
    }

    #[test]
    fn mix_draws_within_its_classes_by_weight() {
        let mix = SizeMix::parse("thumb=2KiB-16KiB:3, video=1MiB-2MiB:1").unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            let (class, size) = mix.draw(&mut rng);
            let c = &mix.classes[class];
            assert!((c.min_bytes..=c.max_bytes).contains(&size));
            counts[class] += 1;
        }
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
        assert_eq!(mix.classes[1].content_type, "video/mp4");
        for bad in [
            "",
            "thumb=2KiB:1",
            "thumb=16KiB-2KiB:1",
            "t=1-2:0",
            "t=1-2:x",
        ] {
            assert!(SizeMix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn poisson_has_its_mean_and_blob_bytes_repeat() {
        let mut rng = StdRng::seed_from_u64(1);
        let draws: u32 = (0..20_000).map(|_| poisson(&mut rng, 1.5)).sum();
        assert!((f64::from(draws) / 20_000.0 - 1.5).abs() < 0.05);
        assert_eq!(poisson(&mut rng, 0.0), 0);
        assert_eq!(blob_bytes(9, 1000), blob_bytes(9, 1000));
        assert_ne!(blob_bytes(9, 1000), blob_bytes(10, 1000));
        assert_eq!(blob_bytes(9, 13).len(), 13);
    }
}
