//! Seeded randomness. One `--seed` drives every random choice; each use draws from its own
//! ChaCha stream, so adding randomness to one stage never shifts another's numbers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The independent uses of randomness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    WeightInit = 1,
    Shuffle = 2,
    XoTrain = 3,
    XoValidation = 4,
    XoTest = 5,
    ValidationSplit = 6,
    Augment = 7,
    Dropout = 8,
    XoDrawn = 9,
}

pub fn seeded(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}
