//! Restores (DESIGN §8): plan, clone the chosen snapshot, deliver it.

pub mod plan;
