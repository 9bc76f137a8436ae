//! Data prep.
