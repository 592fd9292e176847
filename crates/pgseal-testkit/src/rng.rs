//! A small seeded generator (splitmix64) for faults at random moments: the same seed draws
//! the same moments, so a failing run can be replayed from the seed it printed.

use std::time::Duration;

/// splitmix64: not for secrets, only for reproducible draws.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator that draws from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The seed named by the environment variable `var`, or one from the clock; either
    /// way printed to stderr, so that the run can be repeated with `var` set to it.
    pub fn from_env_or_clock(var: &str) -> (Self, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("random moments drawn from seed {seed} (set {var}={seed} to repeat them)");
        (Self(seed), seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `[0, upto)`, to the millisecond.
    pub fn within(&mut self, upto: Duration) -> Duration {
        let ms = upto.as_millis().max(1) as u64;
        Duration::from_millis(self.next_u64() % ms)
    }

    /// A number drawn uniformly from `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_draws_the_same_moments_within_bounds() {
        let draw = |seed| {
            let mut r = SeededRng::new(seed);
            (0..100)
                .map(|_| r.within(Duration::from_millis(250)))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|d| *d < Duration::from_millis(250)));
        assert!(a.iter().any(|d| *d >= Duration::from_millis(125)));
        let mut r = SeededRng::new(3);
        assert!((0..100).all(|_| r.below(5) < 5));
    }
}
