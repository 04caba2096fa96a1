//! Closed vocabularies for text-valued facts and the world's fixed constants.

/// Occupations of people.
pub const OCCUPATIONS: &[&str] = &[
    "engineer",
    "painter",
    "teacher",
    "physician",
    "architect",
    "journalist",
    "chemist",
    "violinist",
    "carpenter",
    "lawyer",
    "pilot",
    "botanist",
    "chef",
    "economist",
    "poet",
    "astronomer",
    "nurse",
    "sculptor",
    "geologist",
    "translator",
];
/// Industries of organisations.
pub const INDUSTRIES: &[&str] = &[
    "shipbuilding",
    "software",
    "textiles",
    "publishing",
    "mining",
    "banking",
    "aviation",
    "brewing",
    "pharmaceuticals",
    "robotics",
    "farming",
    "shipping",
    "glassmaking",
    "telecommunications",
    "furniture",
];
/// Categories of products.
pub const CATEGORIES: &[&str] = &[
    "bicycle",
    "tea kettle",
    "camera",
    "violin",
    "tractor",
    "wristwatch",
    "telescope",
    "sewing machine",
    "radio",
    "lamp",
    "typewriter",
    "kayak",
    "drone",
    "heater",
    "loom",
];
/// Continents.
pub const CONTINENTS: &[&str] = &["Aldoria", "Vesmere", "Korunda", "Thalassa", "Ombria"];
/// Suffixes turning a country's stem into its language's name.
pub const LANGUAGE_SUFFIXES: &[&str] = &["ish", "ic", "ese", "an"];
/// The world's present year: every fact holds as of this year.
pub const PRESENT_YEAR: i64 = 2025;
