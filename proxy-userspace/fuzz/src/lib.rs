//! Fuzz targets for vipr's pure layers (see `fuzz_targets/`): the model's
//! conversion of arbitrary objects, and the manifests parser.
pub mod manifests;
pub mod model;
pub mod objects;
