//! lang-js
