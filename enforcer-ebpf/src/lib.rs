//! Present so cargo tracks this crate as a build dependency of the agent; the programs are
//! in main.rs.
#![no_std]
